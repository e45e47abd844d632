"""What one ``prune`` call selects and reports, for both granularities.

``select_units`` applies a threshold rule to scores (units removed before stay removed),
``keep_at_least`` gives a layer back its best units so it is never emptied (``min_keep``),
and ``LayerReport`` is what became of each layer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruners.thresholds import fraction_count, get_threshold_rule, lowest

__all__ = ["LayerReport", "call_model", "keep_at_least", "layer_keep", "select_global", "select_units"]


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


def select_global(
    scores: list[torch.Tensor], removed: list[torch.Tensor], rule: str, value: float, keeps: list[int]
) -> list[torch.Tensor]:
    """``select_units`` over several layers ranked together, where layer ``i`` keeps at least
    ``keeps[i]`` units.

    With ``fraction`` the floors do not lower the total: the units a floor holds back are
    removed elsewhere, the lowest-scored among what the other layers may still give (the
    requested fraction is reached whenever the floors leave room for it). Each layer's best
    ``keeps[i]`` surviving units are out of the ranking; the rest compete on their scores.
    The other rules select on the scores and then give each layer its floor back.
    """
    sizes = [s.numel() for s in scores]
    if rule != "fraction":
        sel = select_units(torch.cat(scores), torch.cat(removed), rule, value)
        return [keep_at_least(m, s, k, fixed=r)
                for m, s, r, k in zip(torch.split(sel, sizes), scores, removed, keeps)]
    ranked = []
    for s, r, k in zip(scores, removed, keeps):
        s = s.to(torch.float64).clone()
        s[r] = float("-inf")  # gone already: counted first
        alive = (~r).nonzero().flatten()
        # The layer's best `keep` survivors (or all of them when fewer) cannot be removed.
        hold = min(k, alive.numel())
        if hold:
            best = torch.topk(s[alive], hold, largest=True, sorted=False).indices
            s[alive[best]] = float("inf")
        ranked.append(s)
    cat = torch.cat(ranked)
    count = fraction_count(cat.numel(), value)
    count = max(count, int(torch.cat(removed).sum()))  # what is gone stays gone
    count = min(count, int((cat != float("inf")).sum()))  # the floors cap the total
    out = torch.zeros(cat.numel(), dtype=torch.bool)
    if count:
        out[torch.sort(cat, stable=True).indices[:count]] = True
    return list(torch.split(out, sizes))


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


def min_keep_problem(value: object) -> str | None:
    """Why ``value`` is no valid ``min_keep`` (a fraction in [0, 1)), or None: the one range
    check ``PruneSpec``, ``prune`` and the search config apply."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        return "must be a fraction in [0, 1)"
    return None


def layer_keep(n: int, min_keep: float) -> int:
    """Units a layer of ``n`` keeps at least: ``min_keep`` of them, and never none."""
    return max(1, math.ceil(min_keep * n))


