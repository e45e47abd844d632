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
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pruners.criteria.base import Batch, Criterion
from pruners.criteria.registry import register

_SCORED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _move(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_move(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _move(v, device) for k, v in x.items()}
    return x


def all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` in place over all ranks (no-op without torch.distributed).

    One flat all-reduce for all of them; NCCL needs the buffer on the GPU.
    """
    if not tensors or not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    flat = torch.cat([t.flatten() for t in tensors]).to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat.div_(world).cpu()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def gradient_statistics(
    model: nn.Module, calibration: Iterable[Batch], criterion_name: str
) -> tuple[dict[nn.Module, torch.Tensor], dict[nn.Module, torch.Tensor], int]:
    """Per-module ``mean_b |g_b|`` and ``mean_b g_b`` of the weight over calibration batches.

    Returns:
        (mean absolute gradient, mean gradient, number of batches), the first two keyed by
        module, all-reduced over ranks.
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
    device = _device(model)
    was_training = model.training
    batches = 0
    try:
        model.eval()
        for batch in calibration:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise ValueError(f"criterion {criterion_name!r}: calibration must yield (inputs, targets) batches")
            x, y = _move(batch[0], device), _move(batch[1], device)
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
        model.train(was_training)
        for h in hooks:
            h.remove()
    if batches == 0:
        raise ValueError(f"criterion {criterion_name!r}: calibration yielded no batch")
    tensors = [abs_sum[m] for m in modules] + [sum_[m] for m in modules]
    all_reduce_mean(tensors)
    return ({m: abs_sum[m] / batches for m in modules}, {m: sum_[m] / batches for m in modules}, batches)


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
        self._abs, self._mean, _ = gradient_statistics(model, calibration, self.name)

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
    Linear weight, so scores are comparable across layers and sum to one (Karnin, "A simple
    procedure for pruning back-propagation trained neural networks", 1990; the
    sensitivity-based pruning write-up). Pair it with the ``sensitivity`` threshold rule
    (remove a cumulative mass) or ``absolute`` (remove while ``S_i < theta``); the
    prune -> evaluate -> re-score loop is the iterative schedule of ``finetune``.
    """

    name = "sensitivity"
    param_defaults = {"normalizer": "none"}

    def prepare(self, model: nn.Module, calibration: Iterable[Batch] | None) -> None:
        super().prepare(model, calibration)
        total = sum(
            float(g.abs().sum())
            for m, g in self._mean.items()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
        )
        self._total = total if total > 0 else 1.0

    def elementwise(self, module: nn.Module, name: str) -> torch.Tensor | None:
        if name != "weight":
            return None
        g = self._stat(module, self._mean)
        return None if g is None else g.abs() / self._total
