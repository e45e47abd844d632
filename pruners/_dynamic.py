"""Mask revision for the ``dynamic`` schedule (unstructured only).

Two pieces, after Guo et al., "Dynamic Network Surgery for Efficient DNNs" (NeurIPS 2016):

* ``StraightThrough``: while masks may still change, the dense weights behind the masks
  (``weight_orig``) keep receiving the gradient of the masked weight, so a pruned weight that
  becomes important again grows back in magnitude. The forward pass is unchanged (the masked
  weight, bit for bit); only the backward pass treats the mask as the identity.
* ``regrow``: re-derive the masks from the criterion's scores of the dense weights: up to
  ``regrow_fraction`` of the pruned weights whose scores now beat the weakest survivors swap
  places with them, so the sparsity stays where the schedule put it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pruners.criteria import Criterion


def masked_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose ``weight`` is masked by ``torch.nn.utils.prune``."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if hasattr(m, "weight_mask") and isinstance(getattr(m, "weight_orig", None), nn.Parameter)
    ]


class StraightThrough:
    """Give masked weights the dense gradient (the mask acts as identity in backward)."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    @staticmethod
    def _hook(module: nn.Module, _inputs: object) -> None:
        # Registered after prune's pre-hook, which has just set weight = orig * mask.
        # orig + (orig * mask - orig).detach() has exactly that value (x + (0 - x) == 0 and
        # x + 0 == x in floating point) and gradient 1 with respect to orig everywhere.
        orig = getattr(module, "weight_orig", None)
        if orig is None:  # masks made permanent on a copy (pruners.save): nothing to do
            return
        module.weight = orig + (orig * module.weight_mask - orig).detach()

    def attach(self, model: nn.Module) -> None:
        self.detach()
        self._handles = [m.register_forward_pre_hook(self._hook) for _, m in masked_layers(model)]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def active(self) -> bool:
        return bool(self._handles)


def _swap(pruned_scores: torch.Tensor, kept_scores: torch.Tensor, budget: int) -> int:
    """How many of the best pruned units beat, pairwise, the worst kept units (<= budget)."""
    k = min(budget, pruned_scores.numel(), kept_scores.numel())
    if k <= 0:
        return 0
    best_pruned = torch.topk(pruned_scores, k).values  # descending
    worst_kept = torch.topk(kept_scores, k, largest=False).values  # ascending
    return int((best_pruned > worst_kept).sum())


def regrow(model: nn.Module, criterion: Criterion, regrow_fraction: float, scope: str) -> int:
    """Swap up to ``regrow_fraction`` of the pruned weights with weaker survivors.

    Scores come from ``criterion.weight_scores(module, weight_orig)`` (the dense weights),
    so the criterion must be prepared first (data-driven criteria). ``scope`` is ``global``
    (one ranking over all masked layers) or ``layerwise``. Each masked layer keeps its number
    of weights under ``layerwise``; under ``global`` only the total is kept, and a layer never
    loses its last weight.

    Returns:
        The number of weights regrown (equal to the number newly pruned).
    """
    layers = masked_layers(model)
    if not layers:
        return 0
    scores = [
        criterion.weight_scores(m, m.weight_orig).detach().to("cpu", torch.float64).flatten()
        for _, m in layers
    ]
    masks = [m.weight_mask.detach().to("cpu").flatten().bool() for _, m in layers]
    new_masks = [k.clone() for k in masks]

    def plan(idx: list[int]) -> None:
        s = torch.cat([scores[i] for i in idx])
        keep = torch.cat([masks[i] for i in idx])
        budget = math.floor(regrow_fraction * int((~keep).sum()))
        pruned_pos = (~keep).nonzero().flatten()
        kept_pos = keep.nonzero().flatten()
        n = _swap(s[pruned_pos], s[kept_pos], budget)
        if n == 0:
            return
        # Stable order so every DDP rank (identical scores) picks the same weights.
        grow = pruned_pos[torch.sort(-s[pruned_pos], stable=True).indices[:n]]
        drop = kept_pos[torch.sort(s[kept_pos], stable=True).indices[:n]]
        flat = keep.clone()
        flat[grow] = True
        flat[drop] = False
        for i, part in zip(idx, torch.split(flat, [scores[i].numel() for i in idx])):
            if not bool(part.any()):  # never disconnect a layer
                part = part.clone()
                part[int(torch.argmax(scores[i]))] = True
            new_masks[i] = part

    if scope == "global":
        plan(list(range(len(layers))))
    else:
        for i in range(len(layers)):
            plan([i])

    regrown = 0
    with torch.no_grad():
        for (_, m), old, new in zip(layers, masks, new_masks):
            regrown += int((new & ~old).sum())
            m.weight_mask.copy_(new.view_as(m.weight_mask).to(m.weight_mask))
            # A weight coming back starts from its dense value, as in Dynamic Network Surgery;
            # refresh the attribute so nonzero counts before the next forward are right.
            m.weight = m.weight_orig * m.weight_mask
    return regrown
