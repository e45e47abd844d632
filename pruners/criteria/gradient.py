"""Data-driven criteria: ``gradient``, ``taylor`` and ``sensitivity``.

All three run the model over a few calibration batches (cross-entropy loss, eval mode so
BatchNorm statistics are not touched) and keep per-entry gradient statistics for every
Conv / Linear / norm weight. Gradients are taken with ``torch.autograd.grad`` with respect
to the *effective* weight (for a masked layer, the tensor ``weight_orig * weight_mask`` the
forward used), so masked weights still get a dense gradient, which lets a dynamic schedule
regrow them; the training ``.grad`` buffers are never touched.

Under ``torch.distributed`` the statistics are all-reduced (averaged over ranks) before
scoring, so every rank computes the same scores and removes the same units.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pruners._devices import device_of, move_to
from pruners._dist import all_reduce_mean_
from pruners.criteria.base import Batch, Criterion, eval_mode
from pruners.criteria.registry import register

_SCORED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def gradient_statistics(
    model: nn.Module, calibration: Iterable[Batch], criterion_name: str
) -> tuple[dict[nn.Module, torch.Tensor], dict[nn.Module, torch.Tensor]]:
    """Per-module ``mean_b |g_b|`` and ``mean_b g_b`` of the weight over calibration batches.

    Under ``torch.distributed`` the means run over the batches of every rank, so all ranks
    get the same statistics even when they saw different numbers of batches.

    Returns:
        (mean absolute gradient, mean gradient), keyed by module.
    """
    modules = [m for m in model.modules() if isinstance(m, _SCORED) and getattr(m, "weight", None) is not None]
    # float32 like the weights: float64 copies of a VGG would cost gigabytes.
    abs_sum = {m: torch.zeros(m.weight.shape, dtype=torch.float32) for m in modules}
    sum_ = {m: torch.zeros(m.weight.shape, dtype=torch.float32) for m in modules}
    used: dict[nn.Module, torch.Tensor] = {}

    def capture(module, inputs, output):
        # The tensor this forward actually used (recomputed by torch's prune pre-hook).
        used[module] = module.weight

    hooks = [m.register_forward_hook(capture) for m in modules]
    device = device_of(model)
    batches = 0
    try:
        # Eval mode: BatchNorm statistics untouched, no dropout noise in the scores.
        with eval_mode(model):
            for batch in calibration:
                if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                    raise ValueError(f"criterion {criterion_name!r}: calibration must yield (inputs, targets) batches")
                x, y = move_to(batch[0], device), move_to(batch[1], device)
                used.clear()
                with torch.enable_grad():
                    out = model(x)
                    loss = F.cross_entropy(out, y)
                    active = [m for m in modules if m in used and used[m].requires_grad]
                    grads = torch.autograd.grad(loss, [used[m] for m in active], allow_unused=True)
                for m, g in zip(active, grads):
                    if g is None:
                        continue
                    g = g.detach().to("cpu", torch.float32)
                    abs_sum[m] += g.abs()
                    sum_[m] += g
                batches += 1
    finally:
        for h in hooks:
            h.remove()
    # Ranks may see different numbers of batches: reduce the count with the sums so every
    # rank divides by the same number (the mean over all ranks' batches), and only raise
    # after the collective, when no rank has a batch, so no rank is left waiting.
    count = torch.tensor([float(batches)])
    all_reduce_mean_([abs_sum[m] for m in modules] + [sum_[m] for m in modules] + [count])
    if float(count) == 0:
        raise ValueError(f"criterion {criterion_name!r}: calibration yielded no batch")
    n = float(count)
    return {m: abs_sum[m] / n for m in modules}, {m: sum_[m] / n for m in modules}


class _GradientCriterion(Criterion):
    """Shared calibration plumbing; subclasses turn the statistics into scores."""

    needs_calibration = True
    param_defaults = {"normalizer": "mean"}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self._abs: dict[nn.Module, torch.Tensor] = {}
        self._mean: dict[nn.Module, torch.Tensor] = {}

    def prepare(self, model: nn.Module, calibration: Iterable[Batch] | None) -> None:
        if calibration is None:
            if self._abs and self._fresh(model):
                return  # statistics of this very model are still valid (e.g. unstructured)
            raise ValueError(f"criterion {self.name!r} needs calibration batches (calibration=...)")
        self._abs, self._mean = gradient_statistics(model, calibration, self.name)

    def _fresh(self, model: nn.Module) -> bool:
        return all(
            m in self._abs and self._abs[m].shape == m.weight.shape
            for m in model.modules()
            if isinstance(m, _SCORED) and getattr(m, "weight", None) is not None
        )

    def _stat(self, module: nn.Module, stats: dict[nn.Module, torch.Tensor]) -> torch.Tensor | None:
        s = stats.get(module)
        if s is None:
            return None
        if s.shape != module.weight.shape:
            raise ValueError(f"criterion {self.name!r}: statistics are stale (the model changed since prepare)")
        return s


@register
class GradientCriterion(_GradientCriterion):
    """Mean absolute gradient ``mean_b |dL_b/dw|`` over calibration batches.

    The first-order importance of Mozer & Smolensky ("Skeletonization", 1989) style gradient
    scores; a channel sums its weights' scores.

    Params:
        normalizer: ``mean`` (default) or ``none`` for channel scores.
    """

    name = "gradient"

    def elementwise(self, module: nn.Module, name: str) -> torch.Tensor | None:
        return self._stat(module, self._abs) if name == "weight" else None


@register
class TaylorCriterion(_GradientCriterion):
    """First-order Taylor estimate of the loss change ``mean_b |w * dL_b/dw|``.

    Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019 (and
    "Pruning Convolutional Neural Networks for Resource Efficient Inference", ICLR 2017).
    For re-derived masks the dense weight is used, so a masked weight scores what it would
    cost to keep it removed.

    Params:
        normalizer: ``mean`` (default) or ``none`` for channel scores.
    """

    name = "taylor"

    def elementwise(self, module: nn.Module, name: str) -> torch.Tensor | None:
        if name != "weight":
            return None
        g = self._stat(module, self._abs)
        return None if g is None else g * module.weight.detach().to("cpu", torch.float32).abs()

    def _elementwise_for(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor | None:
        g = self._stat(module, self._abs)
        return None if g is None else g * weight.detach().to("cpu", torch.float32).abs()


@register
class SensitivityCriterion(_GradientCriterion):
    """Normalised sensitivity ``S_i = |dL/dw_i| / sum_j |dL/dw_j|`` (network-wide sum).

    ``dL/dw`` is the gradient of the mean calibration loss; the sum runs over every Conv /
    Linear weight not masked yet, so scores are comparable across layers and those of the
    surviving weights sum to one (Karnin, "A simple procedure for pruning back-propagation
    trained neural networks", IEEE TNN 1990). Pair it with the ``sensitivity`` threshold
    rule (remove a cumulative mass) or ``absolute`` (remove while ``S_i < theta``). The
    prune -> evaluate -> re-score loop until an accuracy target is ``finetune`` with an
    ``iterative`` schedule and ``accuracy_target`` (scores are recomputed at every round).
    """

    name = "sensitivity"
    param_defaults = {"normalizer": "none"}

    def prepare(self, model: nn.Module, calibration: Iterable[Batch] | None) -> None:
        super().prepare(model, calibration)
        # The sum runs over the weights the network still has: a masked weight is gone
        # (as a removed channel is in structured pruning), so it takes no share of S.
        total = 0.0
        for m, g in self._mean.items():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                mask = getattr(m, "weight_mask", None)
                g = g.abs() if mask is None else g.abs() * mask.detach().to("cpu", g.dtype)
                total += float(g.sum(dtype=torch.float64))
        self._total = total if total > 0 else 1.0

    def elementwise(self, module: nn.Module, name: str) -> torch.Tensor | None:
        if name != "weight":
            return None
        g = self._stat(module, self._mean)
        return None if g is None else g.abs() / self._total
