"""Terminal renderings of a report (``show``), a comparison (``compare``) and the method table.

All aim at an 80-100 column terminal: column widths follow the content and long values
are abbreviated (``unstr`` / ``struct`` for granularities).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from reports.compare import FrontComparison
from reports.contract import REFERENCE_ID, REFERENCE_STATUS, TRIAL_COUNT_STATES, TrialCounts, trial_counts
from reports.methods import method_matrix
from reports.units import COST_HEADERS, COST_LABELS, format_cost, front_title

GRANULARITY_SHORT = {"unstructured": "unstr", "structured": "struct"}


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


def status_counts(trials: pd.DataFrame, metadata: dict[str, Any] | None = None) -> str:
    """``12 trials: 7 completed, 3 stopped, 1 errored, 1 running``: the counts the report was
    built with (``report.trial_counts``, from the ledger: trials that errored before their
    first result included); a report without them is counted from its trial rows."""
    recorded = ((metadata or {}).get("report") or {}).get("trial_counts")
    if isinstance(recorded, dict):
        return TrialCounts(**{s: int(recorded.get(s, 0)) for s in TRIAL_COUNT_STATES}).describe()
    per_trial = trials[trials["status"] != REFERENCE_STATUS].drop_duplicates("trial_id")
    return trial_counts(dict(zip(per_trial["trial_id"], per_trial["status"], strict=True))).describe()


def _costs(metadata: dict[str, Any], fronts: pd.DataFrame) -> dict[str, str]:
    summaries = metadata.get("report", {}).get("fronts", {})
    costs = {f: s["cost"] for f, s in summaries.items() if isinstance(s, dict) and s.get("cost")}
    if costs:
        return costs
    from reports.plots import _costs_of

    return _costs_of(fronts, None)


def format_show(frames: dict[str, pd.DataFrame], metadata: dict[str, Any], title: str) -> str:
    """The fronts as text: per front, its rank-1 trials by increasing cost, the dense model
    among them; then the method table.

    Args:
        frames: ``trials``, ``final``, ``fronts`` (and ``methods``) tables.
        metadata: Report metadata (its ``report.fronts`` holds per-front summaries).
        title: First line.
    """
    fronts = frames["fronts"]
    summaries = metadata.get("report", {}).get("fronts", {})
    costs = _costs(metadata, fronts)
    lines = [
        f"{title}  ({status_counts(frames['trials'], metadata)})",
        "val: validation accuracy (every decision uses it); test: the kept model on the test split.",
        "The references compete: dense (float32) and dense-int8 (the dense model in int8); a trial",
        "either dominates is not on a front. hv: hypervolume as a share of the box from the ideal",
        "(accuracy 1, cost 0) to the reference point; hv%: the part of that box only this trial",
        "adds; *: the knee point. Latency: the shipped file on the runtime its row names.",
    ]
    for front, cost in costs.items():
        s = summaries.get(front, {})
        ref = s.get("reference", [0.0, float("nan")])
        box = (1.0 - ref[0]) * ref[1]
        part = fronts[fronts["front"] == front]
        members = part[(part["pareto_rank"] == 1) & (part["status"] != REFERENCE_STATUS)]
        dense = part[part["status"] == REFERENCE_STATUS]
        lines.append("")
        lines.append(
            f"{front_title(cost)}: {len(members)} of {s.get('n_trials', 0)} finished trials on the front"
        )
        lines.append(f"  hv {_cell(s.get('hypervolume_normalized'), '.4f')}; reference point: accuracy {ref[0]:g}, "
                     f"{cost} {format_cost(ref[1], cost)}; {s.get('n_dominated_by_dense', 0)} dominated by a reference")
        header = ["trial", "criterion", "gran", "schedule", "amount", "val", "test",
                  COST_HEADERS.get(cost, cost), "x dense", "hv%", "rank"]
        base = dense[dense["trial_id"] == REFERENCE_ID]
        dense_cost = float(base[cost].iloc[0]) if len(base) and pd.notna(base[cost].iloc[0]) else math.nan
        rows = []
        # The front's members and, on the front or not, the dense model they compete with.
        shown = pd.concat([members, dense]).sort_values(cost, kind="stable")
        for _, r in shown.iterrows():
            c = r.get(cost)
            if r.get("status") == REFERENCE_STATUS:  # dense, dense-int8
                rows.append([_cell(r.get("trial_id")), "reference", "", "", "", _cell(r.get("val_accuracy"), ".4f"),
                             _cell(r.get("test_accuracy"), ".4f"), format_cost(c, cost),
                             _cell(float(c) / dense_cost if dense_cost > 0 and pd.notna(c) else math.nan, ".3f"),
                             "", _cell(r.get("pareto_rank"))])
                continue
            rows.append([
                _cell(r.get("trial_id")) + ("*" if bool(r.get("is_knee")) else ""), _cell(r.get("criterion")),
                GRANULARITY_SHORT.get(str(r.get("granularity")), _cell(r.get("granularity"))),
                _cell(r.get("schedule")), _cell(r.get("amount"), ".3g"),
                _cell(r.get("val_accuracy"), ".4f"), _cell(r.get("test_accuracy"), ".4f"),
                format_cost(c, cost),
                _cell(float(c) / dense_cost if dense_cost > 0 and pd.notna(c) else math.nan, ".3f"),
                _cell(100.0 * r["hv_contribution"] / box if box > 0 else math.nan, ".2f"),
                _cell(r.get("pareto_rank")),
            ])
        if rows:
            lines.extend("  " + ln for ln in render_table(header, rows, right={4, 5, 6, 7, 8, 9, 10}))
        else:
            lines.append("  (no finished trial yet)")
    methods = frames.get("methods")
    if methods is not None and not methods.empty:
        lines.append("")
        lines.extend(format_methods(methods, list(dict.fromkeys(costs.values()))))
    return "\n".join(lines)


def format_methods(methods: pd.DataFrame, costs: list[str]) -> list[str]:
    """Per cost: methods x compression levels, ``val/test`` of each method's best trial."""
    lines = ["which method wins: best val/test accuracy of each method's trials reaching each",
             "compression level (dense cost / trial cost), chosen on validation"]
    for cost in costs:
        m = method_matrix(methods, cost)
        if m.empty:
            continue
        header = [COST_LABELS.get(cost, cost)] + [f">={lvl:g}x" for lvl in m.columns]
        rows = [[str(method)] + ["-" if not isinstance(c, tuple) else f"{c[0]:.4f}/{_cell(c[1], '.4f')}" for c in row]
                for method, row in m.iterrows()]
        lines.append("")
        lines.extend("  " + ln for ln in render_table(header, rows, right=set(range(1, len(header)))))
    return lines


def format_compare(comparisons: list[FrontComparison], name_a: str, name_b: str) -> str:
    """Hypervolumes and per-budget winners of two experiments, as text."""
    lines = [f"A = {name_a}", f"B = {name_b}"]
    for c in comparisons:
        lines.append("")
        lines.append(
            f"{front_title(c.cost)}  (reference: accuracy {c.reference[0]:g}, "
            f"{c.cost} {format_cost(c.reference[1], c.cost)})"
        )
        lines.append(f"  hypervolume  A {_cell(c.hv_a, '.4f')}  B {_cell(c.hv_b, '.4f')}  -> {c.winner}")
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
            for ln in render_table([f"{c.cost} budget", "best val A", "best val B", "better"], rows, right={1, 2})
        )
    return "\n".join(lines)
