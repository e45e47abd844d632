"""Terminal renderings of a report (``show``) and of a comparison (``compare``).

Both aim at an 80-100 column terminal: column widths follow the content and
long values are abbreviated (``unstr`` / ``struct`` for granularities).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from reports.compare import FrontComparison
from reports.ledger import FINISHED_STATUSES, REFERENCE_STATUS, RUNNING
from reports.plots import FRONT_TITLES, format_cost
from reports.tables import FRONTS, OBJECTIVE

GRANULARITY_SHORT = {"unstructured": "unstr", "structured": "struct"}
COST_HEADERS = {"flops": "flops", "flops_sparse": "sp.flops", "size_bytes": "size"}


def _cell(value: Any, fmt: str = "") -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if fmt and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, fmt)
    return str(value)


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Rows of cells as aligned text lines (columns in ``right`` right-aligned)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(out).rstrip()

    return [line(header)] + [line(r) for r in rows]


def status_counts(trials: pd.DataFrame) -> str:
    """``12 trials: 7 completed, 3 stopped, 1 errored, 1 running``."""
    per_trial = trials[trials["status"] != REFERENCE_STATUS].drop_duplicates("trial_id")
    counts = per_trial["status"].value_counts()
    parts = [f"{int(counts[s])} {s}" for s in (*FINISHED_STATUSES, RUNNING) if s in counts]
    total = len(per_trial)
    return f"{total} trial{'s' if total != 1 else ''}" + (": " + ", ".join(parts) if parts else "")


def format_show(frames: dict[str, pd.DataFrame], metadata: dict[str, Any], title: str) -> str:
    """The fronts as text: per front, its rank-1 trials by increasing cost.

    Args:
        frames: ``trials``, ``final``, ``fronts`` tables.
        metadata: Report metadata (its ``report.fronts`` holds per-front summaries).
        title: First line.
    """
    fronts = frames["fronts"]
    summaries = metadata.get("report", {}).get("fronts", {})
    lines = [
        f"{title}  ({status_counts(frames['trials'])})",
        "hv: hypervolume as a share of the box from the ideal (accuracy 1, cost 0) to the",
        "reference point; hv%: the part of that box only this trial adds; *: knee point.",
    ]
    for front, cost in FRONTS.items():
        s = summaries.get(front, {})
        ref = s.get("reference", [0.0, float("nan")])
        box = (1.0 - ref[0]) * ref[1]
        part = fronts[fronts["front"] == front]
        members = part[part["pareto_rank"] == 1].sort_values([cost, "trial_id"], kind="stable")
        dense = part[part["status"] == REFERENCE_STATUS]
        lines.append("")
        lines.append(
            f"{FRONT_TITLES[front]}: {len(members)} of {s.get('n_trials', 0)} finished trials "
            f"on the front, hv {_cell(s.get('hypervolume_normalized'), '.4f')}"
        )
        lines.append(
            f"  reference point: accuracy {ref[0]:g}, {cost} {format_cost(ref[1], cost)}"
        )
        header = ["trial", "criterion", "gran", "schedule", "amount", "accuracy",
                  COST_HEADERS[cost], "x dense", "hv%", "knee"]
        dense_cost = float(dense[cost].iloc[0]) if len(dense) and pd.notna(dense[cost].iloc[0]) else math.nan
        rows = []
        for _, r in members.iterrows():
            c = r.get(cost)
            rows.append([
                _cell(r.get("trial_id")),
                _cell(r.get("criterion")),
                GRANULARITY_SHORT.get(str(r.get("granularity")), _cell(r.get("granularity"))),
                _cell(r.get("schedule")),
                _cell(r.get("amount"), ".3g"),
                _cell(r.get(OBJECTIVE), ".4f"),
                format_cost(c, cost),
                _cell(float(c) / dense_cost if dense_cost > 0 and pd.notna(c) else math.nan, ".3f"),
                _cell(100.0 * r["hv_contribution"] / box if box > 0 else math.nan, ".2f"),
                "*" if bool(r.get("is_knee")) else "",
            ])
        for _, r in dense.iterrows():
            rows.append(["dense", "(reference)", "", "", "", _cell(r.get(OBJECTIVE), ".4f"),
                         format_cost(r.get(cost), cost), "1.000", "", ""])
        if len(rows):
            lines.extend("  " + ln for ln in render_table(header, rows, right={4, 5, 6, 7, 8}))
        else:
            lines.append("  (no finished trial yet)")
    return "\n".join(lines)


def format_compare(comparisons: list[FrontComparison], name_a: str, name_b: str) -> str:
    """Hypervolumes and per-budget winners of two experiments, as text."""
    lines = [f"A = {name_a}", f"B = {name_b}"]
    for c in comparisons:
        lines.append("")
        lines.append(
            f"{FRONT_TITLES[c.front]}  (reference: accuracy {c.reference[0]:g}, "
            f"{c.cost} {format_cost(c.reference[1], c.cost)})"
        )
        lines.append(
            f"  hypervolume  A {_cell(c.hv_a, '.4f')}  B {_cell(c.hv_b, '.4f')}  -> {c.winner}"
        )
        lines.append(
            f"  A's front: {c.a_dominated_by_b} of {c.n_a} dominated by B;  "
            f"B's front: {c.b_dominated_by_a} of {c.n_b} dominated by A"
        )
        rows = [
            [f"<= {r.fraction:.0%} ({format_cost(r.budget, c.cost)})",
             _cell(r.accuracy_a, ".4f"), _cell(r.accuracy_b, ".4f"), r.better]
            for r in c.budgets.itertuples()
        ]
        lines.extend(
            "  " + ln
            for ln in render_table([f"{c.cost} budget", "best acc A", "best acc B", "better"],
                                   rows, right={1, 2})
        )
    return "\n".join(lines)
