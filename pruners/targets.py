"""Cost targets: what a cost rule counts, and by how much it must fall.

A user asks for "4x fewer FLOPs", not "remove 37 % of the channels"; how many channels
that takes depends on the criterion's ranking, the scope and the architecture. The
threshold rules ``flops_cut`` and ``params_cut`` take that factor as their ``amount``;
:func:`model_cost` is the cost they count, and ``pruners.prune.prune_to_cost`` reaches a
cost by bisecting the fraction of units to remove.

Costs: ``flops_cut`` counts dense FLOPs for structured pruning (channels go, FLOPs fall) and
sparsity-aware FLOPs for unstructured pruning (masks leave dense FLOPs unchanged);
``params_cut`` counts nonzero parameters.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pruners.measure import measure

__all__ = ["COST_RULES", "model_cost"]

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
