"""Data-driven criteria: ``gradient`` and ``sensitivity`` (``taylor`` lives in ``taylor.py``).

All of them run the model over a few calibration batches (cross-entropy loss, eval mode so
BatchNorm statistics are not touched) and keep per-entry gradient statistics for every
Conv / Linear / norm weight. Gradients are taken with ``torch.autograd.grad`` with respect
to the *effective* weight (for a masked layer, the tensor ``weight_orig * weight_mask`` the
forward used), so masked weights still get a dense gradient, which lets a dynamic schedule
regrow them; the training ``.grad`` buffers are never touched.

Under ``torch.distributed`` the statistics are all-reduced (averaged over ranks) before
scoring, so every rank computes the same scores and removes the same units.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from pruners._devices import device_of, move_to
from pruners._dist import all_reduce_mean_
from pruners.criteria.base import Batch, Criterion, eval_mode
from pruners.criteria.registry import register

_SCORED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def batch_gradients(
    model: nn.Module, calibration: Iterable[Batch], criterion_name: str, modules: list[nn.Module] | None = None
) -> Iterator[dict[nn.Module, dict[str, torch.Tensor]]]:
    """For each calibration batch, ``{module: {"weight": dL/dw, "bias": dL/db}}`` (float32, CPU).

    The loss is the batch's mean cross-entropy in eval mode (BatchNorm statistics untouched,
    no dropout noise); the weight gradient is taken with respect to the tensor the forward
    actually used (the masked weight, recomputed by torch's prune pre-hook), so masked
    weights get a dense gradient. Training ``.grad`` buffers are never touched.
    """
    if modules is None:
        modules = [m for m in model.modules() if isinstance(m, _SCORED) and getattr(m, "weight", None) is not None]
    used: dict[nn.Module, torch.Tensor] = {}

    def capture(module, inputs, output):
        used[module] = module.weight

    hooks = [m.register_forward_hook(capture) for m in modules]
    device = device_of(model)
    try:
        with eval_mode(model):
            for batch in calibration:
                if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                    raise ValueError(f"criterion {criterion_name!r}: calibration must yield (inputs, targets) batches")
                x, y = move_to(batch[0], device), move_to(batch[1], device)
                used.clear()
                with torch.enable_grad():
                    out = model(x)
                    loss = F.cross_entropy(out, y)
                    wrt: list[tuple[nn.Module, str, torch.Tensor]] = []
                    for m in modules:
                        if m in used and used[m].requires_grad:
                            wrt.append((m, "weight", used[m]))
                            bias = getattr(m, "bias", None)
                            if isinstance(bias, torch.Tensor) and bias.requires_grad:
                                wrt.append((m, "bias", bias))
                    grads = torch.autograd.grad(loss, [t for _, _, t in wrt], allow_unused=True)
                out_grads: dict[nn.Module, dict[str, torch.Tensor]] = {}
                for (m, name, _), g in zip(wrt, grads):
                    if g is not None:
                        out_grads.setdefault(m, {})[name] = g.detach().to("cpu", torch.float32)
                yield out_grads
    finally:
        for h in hooks:
            h.remove()


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
    batches = 0
    for grads in batch_gradients(model, calibration, criterion_name, modules):
        for m, g in grads.items():
            abs_sum[m] += g["weight"].abs()
            sum_[m] += g["weight"]
        batches += 1
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
