"""Turn per-parameter scores into per-channel scores of a Torch-Pruning dependency group.

A group lists every (layer, pruning function, indices) that removing one root channel
touches: the conv's output rows, its BatchNorm entry, the next conv's input columns, the
other branch of a residual add... A channel's score is the average over those layers of the
score mass of its slice, the same reduction Torch-Pruning's group importances use, so a
channel is only cheap if it is cheap everywhere it lives.

Everything is tensor work per layer: index lists become tensors once, slices are gathered and
scattered onto the root channels in one call each, and, inside :func:`slice_cache` (which
``prune`` opens while it scores every group of a model), a layer's slice sums are computed
once even when the layer sits in many groups (a DenseNet layer reads the concatenation of
every earlier layer of its block, so its input columns belong to one group per producer).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

Elementwise = Callable[[nn.Module, str], "torch.Tensor | None"]


def _is_depthwise(layer: nn.Module) -> bool:
    return (
        isinstance(layer, nn.modules.conv._ConvNd)
        and layer.groups > 1
        and layer.groups == layer.in_channels == layer.out_channels
    )


# (layer, to_output, elementwise) -> slice sums, while the weights cannot change.
_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("pruners_slice_cache", default=None)


@contextlib.contextmanager
def slice_cache() -> Iterator[None]:
    """Within the block, each layer's slice sums are computed once per elementwise score.

    Only for a stretch where no weight, gradient statistic or gate changes (scoring every
    group of a model before anything is removed); the cache is dropped on exit.
    """
    token = _CACHE.set({})
    try:
        yield
    finally:
        _CACHE.reset(token)


def _cached_slice_scores(layer: nn.Module, to_output: bool, elementwise: Elementwise) -> torch.Tensor | None:
    cache = _CACHE.get()
    if cache is None:
        return layer_slice_scores(layer, to_output, elementwise)
    key = (layer, to_output, elementwise)
    if key not in cache:
        cache[key] = layer_slice_scores(layer, to_output, elementwise)
    return cache[key]


#: Elements converted to float64 at a time when a large layer is summed (8 MB).
_CHUNK = 1 << 20


def _sum64(t: torch.Tensor, keep: int) -> torch.Tensor:
    """``t`` summed over every axis but ``keep`` (0 or 1), accumulated in float64.

    A reduction with ``dtype=torch.float64`` converts element by element and runs about
    10x slower than summing an already converted tensor, so a large layer (VGG's 100M-weight
    classifier: 0.4 s) is converted a slice of rows at a time (memory stays bounded by
    ``_CHUNK``) and each slice summed in float64.
    """
    if t.numel() <= 4 * _CHUNK:
        return t.sum(dim=[d for d in range(t.dim()) if d != keep], dtype=torch.float64)
    rows = max(1, _CHUNK // max(1, t[0].numel()))
    if keep == 0:
        return torch.cat([c.reshape(c.shape[0], -1).to(torch.float64).sum(1) for c in t.split(rows)])
    total = torch.zeros(t.shape[1], dtype=torch.float64, device=t.device)
    for c in t.split(rows):
        total += c.reshape(c.shape[0], c.shape[1], -1).to(torch.float64).sum(dim=(0, 2))
    return total


def layer_slice_scores(
    layer: nn.Module, to_output: bool, elementwise: Elementwise
) -> torch.Tensor | None:
    """Score of every output (``to_output``) or input channel of ``layer``, or ``None``."""
    if isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
        t = elementwise(layer, "weight")
        if t is None:
            return None
        # Keep the (possibly huge) elementwise tensor in its own dtype; accumulate in float64.
        t = t.detach()
        transposed = getattr(layer, "transposed", False)
        if _is_depthwise(layer):
            # One filter per channel: inputs and outputs are the same axis.
            return _sum64(t, keep=0).cpu()
        if to_output:
            return _sum64(t, keep=1 if transposed else 0).cpu()
        groups = getattr(layer, "groups", 1)
        if groups > 1 and not transposed:
            # Grouped conv: weight is (out, in // groups, ...); input channel g * in_g + j is
            # read only by group g's filters, column j.
            per_group = t.reshape(groups, t.shape[0] // groups, t.shape[1], -1)
            return per_group.sum(dim=(1, 3), dtype=torch.float64).flatten().cpu()
        # Column sums without materialising a transposed copy.
        return _sum64(t, keep=0 if transposed else 1).cpu()
    if isinstance(layer, (_BatchNorm, nn.LayerNorm, nn.GroupNorm)):
        if getattr(layer, "weight", None) is None:
            return None
        t = elementwise(layer, "weight")
        return None if t is None else t.detach().to("cpu", torch.float64).flatten()
    return None


def coupled_channel_scores(
    group, elementwise: Elementwise, power: float = 1.0, outputs_only: bool = False
) -> torch.Tensor | None:
    """Per-root-channel scores of a dependency group (mean over coupled layers).

    Each layer's slice sum is raised to ``1 / power`` first, so with ``|w|**p`` elementwise
    and ``power=p`` a layer contributes the channel's p-norm. ``outputs_only`` skips the
    input columns of consumer layers. ``None`` if no layer of the group could be scored.
    """
    dg = group._DG
    n = len(group[0].idxs)
    total = torch.zeros(n, dtype=torch.float64)
    count = 0
    for item in group:
        dep = item.dep
        root_idxs = getattr(item, "root_idxs", None)
        layer = dep.target.module
        if not isinstance(layer, nn.Module) or root_idxs is None or None in root_idxs:
            continue
        to_output = dg.is_out_channel_pruning_fn(dep.handler)
        if outputs_only and not to_output:
            continue
        local = _cached_slice_scores(layer, to_output, elementwise)
        if local is None:
            continue
        idxs = torch.as_tensor(item.idxs, dtype=torch.long)
        if idxs.numel() and int(idxs.max()) >= local.numel():
            continue
        local = local[idxs]
        if power != 1.0:
            local = local.clamp_min(0) ** (1.0 / power)
        total.scatter_add_(0, torch.as_tensor(root_idxs, dtype=torch.long), local)
        count += 1
    if count == 0:
        return None
    return total / count


def head_slice_scores(module: nn.Module, elementwise: Elementwise) -> torch.Tensor:
    """Per-head scores of a ``pruners`` attention module: its q/k/v rows + out columns."""
    h, d = module.num_heads, module.head_dim
    total = torch.zeros(h, dtype=torch.float64)
    for proj in (module.q_proj, module.k_proj, module.v_proj):
        t = elementwise(proj, "weight")
        if t is not None:
            total += t.detach().reshape(h, d, -1).sum(dim=(1, 2), dtype=torch.float64).cpu()
    t = elementwise(module.out_proj, "weight")
    if t is not None:
        total += t.detach().reshape(t.shape[0], h, d).sum(dim=(0, 2), dtype=torch.float64).cpu()
    return total
