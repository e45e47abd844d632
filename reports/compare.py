"""Compare the fronts of two experiments: hypervolumes and who dominates where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from reports import pareto
from reports.contract import FINISHED_STATUSES, SELECTION_METRIC
from reports.tables import DIRECTIONS

# Cost budgets, as fractions of the common reference cost, at which the best
# attainable accuracy of each experiment is compared.
BUDGETS = (0.1, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class FrontComparison:
    """How two experiments' fronts for one objective pair compare.

    Attributes:
        front: Front name.
        cost: Cost column.
        reference: Common ``(accuracy, cost)`` reference point: the lower of the
            two reference accuracies and the higher of the two reference costs,
            so no point either experiment counts is cut off.
        hv_a, hv_b: Normalised hypervolumes (area / area of the box from the ideal
            point (accuracy 1, cost 0) to ``reference``).
        n_a, n_b: Front sizes (rank-1 trials).
        a_dominated_by_b: How many of A's front members some member of B's
            front dominates; ``b_dominated_by_a`` the converse.
        budgets: One row per budget: ``budget`` (cost), ``fraction`` (of the
            reference cost), ``accuracy_a``, ``accuracy_b`` (best accuracy at cost
            <= budget, NaN when none), ``better`` ("A", "B", "tie" or "-").
    """

    front: str
    cost: str
    reference: tuple[float, float]
    hv_a: float
    hv_b: float
    n_a: int
    n_b: int
    a_dominated_by_b: int
    b_dominated_by_a: int
    budgets: pd.DataFrame

    @property
    def winner(self) -> str:
        """"A" or "B" by hypervolume, or "tie"."""
        if np.isclose(self.hv_a, self.hv_b, rtol=0.0, atol=1e-12):
            return "tie"
        return "A" if self.hv_a > self.hv_b else "B"


def _points(fronts: pd.DataFrame, front: str, cost: str, rank1: bool) -> np.ndarray:
    part = fronts[(fronts["front"] == front) & fronts["status"].isin(FINISHED_STATUSES)]
    part = part[part["pareto_rank"].notna()]
    if rank1:
        part = part[part["pareto_rank"] == 1]
    return np.column_stack(
        [part[SELECTION_METRIC].to_numpy(dtype=float), part[cost].to_numpy(dtype=float)]
    ).reshape(-1, 2)


def _dominated_count(p: np.ndarray, q: np.ndarray) -> int:
    """How many points of ``p`` some point of ``q`` dominates (accuracy up, cost down)."""
    if len(p) == 0 or len(q) == 0:
        return 0
    no_worse = (q[None, :, 0] >= p[:, None, 0]) & (q[None, :, 1] <= p[:, None, 1])
    better = (q[None, :, 0] > p[:, None, 0]) | (q[None, :, 1] < p[:, None, 1])
    return int((no_worse & better).any(axis=1).sum())


def _best_within(points: np.ndarray, budget: float) -> float:
    ok = points[:, 1] <= budget
    return float(points[ok, 0].max()) if ok.any() else float("nan")


def compare_fronts(
    fronts_a: pd.DataFrame,
    fronts_b: pd.DataFrame,
    summaries_a: dict[str, dict[str, Any]],
    summaries_b: dict[str, dict[str, Any]],
) -> list[FrontComparison]:
    """Compare two experiments front by front.

    Args:
        fronts_a, fronts_b: The ``fronts`` tables of experiments A and B.
        summaries_a, summaries_b: Per-front summaries (``report.fronts`` of the
            Parquet metadata), which hold each experiment's reference point.

    Returns:
        One :class:`FrontComparison` per front both reports have, in A's order.
    """
    out = []
    costs = {f: s.get("cost") for f, s in summaries_a.items() if isinstance(s, dict) and s.get("cost")}
    if not costs:
        raise ValueError("report A has no front summaries in its metadata; rebuild it with: "
                         "python -m reports build EXPERIMENT_DIR")
    shared = {f: c for f, c in costs.items() if f in summaries_b}
    if not summaries_b:
        raise ValueError(f"report B has no summary of front {next(iter(costs))!r} in its metadata; "
                         "rebuild it with: python -m reports build EXPERIMENT_DIR")
    if not shared:
        raise ValueError(f"the reports share no front (A: {', '.join(costs)}; B: {', '.join(summaries_b)})")
    for front, cost in shared.items():
        for side, summaries in (("A", summaries_a), ("B", summaries_b)):
            if "reference" not in summaries.get(front, {}):
                raise ValueError(
                    f"report {side} has no summary of front {front!r} in its metadata; "
                    "rebuild it with: python -m reports build EXPERIMENT_DIR"
                )
        ref_a = summaries_a[front]["reference"]
        ref_b = summaries_b[front]["reference"]
        ref = (min(ref_a[0], ref_b[0]), max(ref_a[1], ref_b[1]))
        box = (1.0 - ref[0]) * ref[1]
        all_a = _points(fronts_a, front, cost, rank1=False)
        all_b = _points(fronts_b, front, cost, rank1=False)
        front_a = _points(fronts_a, front, cost, rank1=True)
        front_b = _points(fronts_b, front, cost, rank1=True)
        hv_a = pareto.hypervolume_2d(all_a, ref, DIRECTIONS) / box if box > 0 else float("nan")
        hv_b = pareto.hypervolume_2d(all_b, ref, DIRECTIONS) / box if box > 0 else float("nan")
        rows = []
        for frac in BUDGETS:
            budget = frac * ref[1]
            acc_a, acc_b = _best_within(all_a, budget), _best_within(all_b, budget)
            if np.isnan(acc_a) and np.isnan(acc_b):
                better = "-"
            elif np.isnan(acc_b) or acc_a > acc_b:
                better = "A"
            elif np.isnan(acc_a) or acc_b > acc_a:
                better = "B"
            else:
                better = "tie"
            rows.append(
                {"fraction": frac, "budget": budget, "accuracy_a": acc_a,
                 "accuracy_b": acc_b, "better": better}
            )
        out.append(
            FrontComparison(
                front=front,
                cost=cost,
                reference=(float(ref[0]), float(ref[1])),
                hv_a=hv_a,
                hv_b=hv_b,
                n_a=len(front_a),
                n_b=len(front_b),
                a_dominated_by_b=_dominated_count(front_a, front_b),
                b_dominated_by_a=_dominated_count(front_b, front_a),
                budgets=pd.DataFrame(rows),
            )
        )
    return out
