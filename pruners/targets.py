"""Cost targets: prune until a cost (FLOPs, nonzero parameters) falls by a requested factor.

A user asks for "4x fewer FLOPs", not "remove 37 % of the channels"; how many channels
that takes depends on the criterion's ranking, the scope and the architecture. The
threshold rules ``flops_cut`` and ``params_cut`` take that factor as their ``amount``;
:func:`prune_to_cost` scores the model once, then bisects the fraction of units to remove
on copies of the model (each pruned with those same scores, its cost counted) until the cost
is at or just below the target, and prunes the model itself with that fraction.

Costs: ``flops_cut`` counts dense FLOPs for structured pruning (channels go, FLOPs fall) and
sparsity-aware FLOPs for unstructured pruning (masks leave dense FLOPs unchanged);
``params_cut`` counts nonzero parameters.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from pruners._devices import unwrap
from pruners.criteria import Criterion
from pruners.measure import measure
from pruners.prune import PruneReport, prune, score

__all__ = ["COST_RULES", "FixedScores", "clone_model", "model_cost", "prune_to_cost"]

#: Threshold rules whose amount is a cost reduction factor (> 1).
COST_RULES: tuple[str, ...] = ("flops_cut", "params_cut")


def model_cost(model: nn.Module, example_inputs: Any, rule: str, granularity: str) -> float:
    """The cost ``rule`` targets, for ``model`` as it is now."""
    m = measure(model, example_inputs, files=False)
    if rule == "flops_cut":
        return float(m.flops if granularity == "structured" else m.flops_sparse)
    if rule == "params_cut":
        return float(m.params_nonzero)
    raise ValueError(f"unknown cost rule {rule!r}; valid choices: {', '.join(COST_RULES)}")


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy that keeps ``torch.nn.utils.prune`` masks and hooks (their recomputed
    ``weight`` is not a leaf, which ``deepcopy`` refuses: hand it a detached stand-in)."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                t = getattr(module, hook._tensor_name, None)
                if isinstance(t, torch.Tensor) and not t.is_leaf:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


class FixedScores(Criterion):
    """A criterion that answers with scores computed before (by name), so copies of a model
    are pruned exactly as the model itself would be. Life-cycle calls go to ``base``."""

    name = "fixed"
    granularities = ("unstructured", "structured")

    def __init__(self, scores: Mapping[str, torch.Tensor], model: nn.Module, base: Criterion | None = None) -> None:
        super().__init__()
        self.scores, self.base = scores, base
        self.names = {m: n for n, m in model.named_modules()}

    def _of(self, module: nn.Module) -> torch.Tensor | None:
        return self.scores.get(self.names.get(module, ""))

    def weight_scores(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        return self._of(module).reshape(weight.shape)

    def group_scores(self, group: Any) -> torch.Tensor | None:
        s = self._of(group[0].dep.target.module)
        if s is None:
            return None
        n = len(group[0].idxs)
        return s.repeat(n // s.numel()) if s.numel() != n else s  # interleaved groups: one score each

    def head_scores(self, module: nn.Module) -> torch.Tensor | None:
        return self._of(module)

    def after_prune(self, model: nn.Module, removed: Any = None) -> None:
        if self.base is not None:
            self.base.after_prune(model, removed)

    def suspended(self) -> Any:
        return self.base.suspended() if self.base is not None else super().suspended()


def prune_to_cost(
    model: nn.Module,
    *,
    target_cost: float,
    rule: str,
    criterion: str | Criterion,
    granularity: str,
    example_inputs: Any,
    scope: str = "global",
    calibration: Iterable[Any] | None = None,
    ignore: Iterable[str] | None = None,
    min_keep: float = 0.0,
    rtol: float = 0.01,
    max_steps: int = 14,
) -> tuple[PruneReport | None, float]:
    """Prune ``model`` until its ``rule`` cost is at most ``target_cost`` (removing as few
    units as the criterion's ranking allows).

    Returns:
        ``(report, cost)``: the prune's report (None when the model already met the target)
        and the cost reached. When even removing all but ``min_keep`` of every layer cannot
        reach the target, the model is pruned as far as it goes and the cost says so.
    """
    net = unwrap(model)
    now = model_cost(net, example_inputs, rule, granularity)
    if now <= target_cost * (1 + rtol):
        return None, now
    crit = criterion
    ignore = list(ignore or ())
    scores = score(net, criterion=crit, granularity=granularity, example_inputs=example_inputs,
                   calibration=calibration, ignore=ignore)

    def pruned(frac: float, on: nn.Module, base: Criterion | None) -> tuple[PruneReport, float]:
        rep = prune(on, criterion=FixedScores(scores, on, base), granularity=granularity, amount=frac,
                    threshold_rule="fraction", scope=scope, example_inputs=example_inputs, ignore=ignore,
                    min_keep=min_keep)
        return rep, model_cost(on, example_inputs, rule, granularity)

    def trial(frac: float) -> float:
        return pruned(frac, clone_model(net), None)[1]

    # Unstructured fractions count the weights masked before (cumulative), structured ones
    # are fractions of the channels the model has now; either way cost falls as the
    # fraction grows, so bisection finds the smallest fraction that meets the target.
    lo, hi = 0.0, math.nextafter(1.0, 0.0)
    best = hi
    for _ in range(max_steps):
        mid = (lo + hi) / 2
        if trial(mid) <= target_cost * (1 + rtol):
            best, hi = mid, mid
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    base = criterion if isinstance(criterion, Criterion) else None
    rep, cost = pruned(best, net, base)
    return rep, cost
