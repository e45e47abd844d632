"""What one ``prune`` call selects and reports, for both granularities.

``select_units`` applies a threshold rule to scores (units removed before stay removed),
``keep_at_least`` gives a layer back its best units so it is never emptied (``min_keep``),
and ``LayerReport`` is what became of each layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruners.thresholds import fraction_count, get_threshold_rule, lowest

__all__ = ["LayerReport", "call_model", "keep_at_least", "layer_keep", "select_units"]


@dataclass(frozen=True)
class LayerReport:
    """Units of one layer (unstructured: weights; structured: channels or heads)."""

    name: str
    units_before: int
    units_after: int
    achieved: float



def call_model(model: nn.Module, example_inputs: Any) -> Any:
    """Run ``model`` on ``example_inputs`` (a tensor, a tuple of arguments or a dict of keywords)."""
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def select_units(scores: torch.Tensor, removed: torch.Tensor, rule: str, value: float) -> torch.Tensor:
    """Mask of units to remove; ``removed`` units are gone already and stay gone.

    ``fraction`` counts them towards its total (cumulative targets); the other rules are
    applied to the surviving units' scores (their statistics describe what is left).
    """
    out = removed.clone()
    alive = (~removed).nonzero().flatten()
    if rule == "fraction":
        picked = lowest(scores[alive], fraction_count(scores.numel(), value) - int(removed.sum()))
    else:
        picked = get_threshold_rule(rule)(scores[alive], value)
    out[alive[picked]] = True
    return out


def keep_at_least(sel: torch.Tensor, scores: torch.Tensor, keep: int, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """``sel`` (True = remove) with its best-scored selected units kept back until at least
    ``keep`` units remain. ``fixed`` units (removed before) stay removed."""
    n = sel.numel()
    over = int(sel.sum()) - (n - keep)
    if over <= 0:
        return sel
    sel = sel.clone()
    candidates = sel if fixed is None else sel & ~fixed
    ranked = torch.where(candidates, scores.to(torch.float64), torch.tensor(float("-inf"), dtype=torch.float64))
    back = torch.sort(ranked, descending=True, stable=True).indices[: min(over, int(candidates.sum()))]
    sel[back] = False
    return sel


def layer_keep(n: int, min_keep: float) -> int:
    """Units a layer of ``n`` keeps at least: ``min_keep`` of them, and never none."""
    return max(1, math.ceil(min_keep * n))


