"""Which weights are pruned: the weights sparsity is counted over, and the masks.

``sparsity`` in every row is ``achieved_sparsity`` against ``prunable_weight_counts`` of the
model before pruning (the classifier and ignored modules left out, as ``pruners.prune``
leaves them); masks are ``torch.nn.utils.prune``'s, saved and restored by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pruners.prune import find_classifier, set_mask

__all__ = ["achieved_sparsity", "install_masks", "masks_of", "prunable_weight_counts"]


def prunable_weight_counts(net: nn.Module, example_inputs: Any, ignore: tuple[str, ...]) -> dict[str, int]:
    """Weights of the Conv / Linear layers pruning may touch, by module name.

    The reference for ``sparsity``: the classifier (never pruned) and ignored modules are
    left out, as in ``pruners.prune``.
    """
    classifier = find_classifier(net, example_inputs)
    skipped = [n for n in (*ignore, classifier) if n is not None]

    def excluded(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in skipped)

    return {
        name: m.weight.numel() if not hasattr(m, "weight_orig") else m.weight_orig.numel()
        for name, m in net.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and not excluded(name)
    }


def _effective_weight(module: nn.Module) -> torch.Tensor:
    mask = getattr(module, "weight_mask", None)
    if mask is not None and hasattr(module, "weight_orig"):
        return module.weight_orig.detach() * mask
    return module.weight.detach()


def achieved_sparsity(net: nn.Module, reference: Mapping[str, int]) -> float:
    """1 - nonzero prunable weights now / prunable weights at the start."""
    modules = dict(net.named_modules())
    total = sum(reference.values())
    nonzero = 0
    for name in reference:
        m = modules.get(name)
        if m is not None:
            nonzero += int(torch.count_nonzero(_effective_weight(m)))
    return 1.0 - nonzero / total if total else 0.0


def masks_of(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every ``torch.nn.utils.prune`` weight mask of ``net`` (bool, on the CPU), by module name."""
    return {n: m.weight_mask.detach().bool().cpu().clone() for n, m in net.named_modules()
            if hasattr(m, "weight_mask")}


def install_masks(net: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Put ``masks`` (from :func:`masks_of`) on ``net``'s layers, through ``torch.nn.utils.prune``."""
    modules = dict(net.named_modules())
    for name, mask in masks.items():
        m = modules[name]
        set_mask(m, mask.to(device=m.weight.device if not hasattr(m, "weight_orig") else m.weight_orig.device))
