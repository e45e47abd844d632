"""Front plots (PNG) and a self-contained HTML page (inline SVG + tables, no CDN).

Matplotlib is used through ``Figure`` and its Agg / SVG canvases directly, never
``pyplot``: no global backend is switched, no GUI is needed, and a report can be
drawn from a Tune callback thread.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from reports.ledger import REFERENCE_STATUS
from reports.tables import FRONTS, OBJECTIVE

FRONT_TITLES = {
    "accuracy_flops": "accuracy vs dense FLOPs",
    "accuracy_flops_sparse": "accuracy vs sparsity-aware FLOPs",
    "accuracy_size": "accuracy vs size",
}
COST_LABELS = {"flops": "FLOPs", "flops_sparse": "sparse FLOPs", "size_bytes": "size (bytes)"}
GRANULARITY_MARKERS = {"unstructured": "o", "structured": "s"}


def format_cost(value: Any, cost: str) -> str:
    """Human-readable cost: ``1.23M`` for FLOPs, ``45.6KiB`` for bytes."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    v = float(value)
    if cost == "size_bytes":
        for unit in ("B", "KiB", "MiB", "GiB"):
            if abs(v) < 1024 or unit == "GiB":
                return f"{v:.0f}{unit}" if unit == "B" else f"{v:.1f}{unit}"
            v /= 1024
    unit, scale = next(
        ((u, s) for u, s in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)) if abs(v) >= s),
        ("", 1.0),
    )
    x = v / scale
    # Three significant digits, trailing zeros kept so that columns line up.
    digits = 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2
    return f"{x:.{digits}f}{unit}"


def _criteria_colours(values: Iterable[Any]) -> dict[str, Any]:
    from matplotlib import colormaps

    names = sorted({str(v) for v in values if isinstance(v, str)})
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def fronts_figure(fronts: pd.DataFrame, title: str | None = None) -> Any:
    """A matplotlib ``Figure`` with one panel per front.

    Every finished trial is a point coloured by criterion (marker by granularity);
    the rank-1 trials are joined by the front's staircase, the knee is ringed and
    the dense baseline is a black star.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    # Fixed margins instead of constrained layout, which costs an extra draw pass.
    fig = Figure(figsize=(5.2 * len(FRONTS) + 1.6, 4.6))
    fig.subplots_adjust(left=0.05, right=0.87, bottom=0.12, top=0.84, wspace=0.28)
    axes = fig.subplots(1, len(FRONTS), squeeze=False)[0]
    has_criterion = "criterion" in fronts.columns
    colours = _criteria_colours(fronts["criterion"]) if has_criterion else {}
    for ax, (front, cost) in zip(axes, FRONTS.items(), strict=True):
        part = fronts[fronts["front"] == front]
        ref = part[part["status"] == REFERENCE_STATUS]
        pts = part[(part["status"] != REFERENCE_STATUS) & part["pareto_rank"].notna()]
        x = pts[cost].to_numpy(dtype=float)
        y = pts[OBJECTIVE].to_numpy(dtype=float)
        on_front = (pts["pareto_rank"] == 1).to_numpy(dtype=bool)
        crit = pts["criterion"].astype(object).to_numpy() if has_criterion else [None] * len(pts)
        gran = (
            pts["granularity"].astype(object).to_numpy()
            if "granularity" in pts.columns
            else [None] * len(pts)
        )
        # One scatter per (criterion, granularity, on-front) group keeps the SVG small.
        groups: dict[tuple[Any, Any, bool], list[int]] = {}
        for i in range(len(pts)):
            groups.setdefault((crit[i], gran[i], bool(on_front[i])), []).append(i)
        for (c, g, front_member), members in groups.items():
            ax.scatter(
                x[members],
                y[members],
                color=colours.get(c, "0.5"),
                marker=GRANULARITY_MARKERS.get(g, "o"),
                s=42 if front_member else 26,
                alpha=1.0 if front_member else 0.45,
                edgecolors="black" if front_member else "none",
                linewidths=0.6,
                zorder=3,
            )
        if on_front.any():
            order = np.argsort(x[on_front], kind="stable")
            ax.step(x[on_front][order], y[on_front][order], where="post", color="0.2",
                    linewidth=1.0, zorder=2)
        knee = pts["is_knee"].to_numpy(dtype=bool)
        if knee.any():
            ax.scatter(x[knee], y[knee], s=180, facecolors="none", edgecolors="crimson",
                       linewidths=1.6, zorder=4)
        xs = list(x)
        if len(ref) and pd.notna(ref[cost].iloc[0]) and pd.notna(ref[OBJECTIVE].iloc[0]):
            rx, ry = float(ref[cost].iloc[0]), float(ref[OBJECTIVE].iloc[0])
            ax.scatter([rx], [ry], marker="*", s=220, color="black", zorder=5)
            ax.annotate("dense", (rx, ry), textcoords="offset points", xytext=(-8, -14),
                        ha="right")
            xs.append(rx)
        positive = [v for v in xs if v > 0]
        # Structured pruning spans orders of magnitude in cost; a log axis keeps
        # the cheap end readable.
        if positive and max(positive) / min(positive) > 20:
            ax.set_xscale("log")
        ax.set_title(FRONT_TITLES[front])
        ax.set_xlabel(f"{COST_LABELS[cost]} (lower is better)")
        ax.set_ylabel("accuracy (higher is better)")
        ax.grid(True, alpha=0.3)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=c, label=name)
        for name, c in colours.items()
    ]
    handles += [
        Line2D([], [], marker=m, linestyle="", color="0.4", label=g)
        for g, m in GRANULARITY_MARKERS.items()
    ]
    handles += [
        Line2D([], [], marker="*", linestyle="", color="black", markersize=12, label="dense"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
               markeredgecolor="crimson", markersize=11, label="knee"),
    ]
    fig.legend(handles=handles, loc="upper right", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def png_bytes(fronts: pd.DataFrame, title: str | None = None, dpi: int = 110) -> bytes:
    """The fronts figure as PNG bytes."""
    fig = fronts_figure(fronts, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def svg_text(fronts: pd.DataFrame, title: str | None = None) -> str:
    """The fronts figure as an ``<svg>`` element (no XML prolog), text kept as text."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "prunefront"}):
        fig = fronts_figure(fronts, title)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    # The RDF metadata block only names schemas; drop it so the page holds no links.
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)


def _table_html(df: pd.DataFrame, columns: list[str], cost: str, box: float) -> str:
    head = "".join(f"<th>{html.escape(HTML_HEADERS.get(c, c))}</th>" for c in columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in columns:
            v = r.get(c)
            missing = v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
            if c == cost:
                text = format_cost(v, cost)
            elif c == "is_knee":
                text = "knee" if bool(v) else ""
            elif missing:
                text = "-"
            elif c == "hv_contribution":
                text = f"{100.0 * v / box:.2f}" if box > 0 else "-"
            elif c == OBJECTIVE:
                text = f"{v:.4f}"
            elif isinstance(v, float):
                text = f"{v:.4g}"
            else:
                text = str(v)
            cells.append(f"<td>{html.escape(text)}</td>")
        cls = ' class="ref"' if r.get("status") == REFERENCE_STATUS else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


HTML_HEADERS = {"hv_contribution": "hv %", "is_knee": "knee", "trial_id": "trial"}


def html_page(
    fronts: pd.DataFrame,
    summaries: dict[str, dict[str, Any]],
    metadata: dict[str, Any],
    title: str = "Prunefront report",
) -> str:
    """A self-contained HTML page: the fronts as inline SVG, each front's table,
    and the experiment's config and package versions. It loads nothing."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1500px}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "th{background:#eee}tr.ref{font-style:italic;background:#f6f6f6}"
        "pre{background:#f6f6f6;padding:0.5em;overflow:auto}"
        "svg{max-width:100%;height:auto}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        svg_text(fronts),
    ]
    for front, cost in FRONTS.items():
        part = fronts[fronts["front"] == front]
        shown = part[(part["pareto_rank"] == 1) | (part["status"] == REFERENCE_STATUS)]
        s = summaries.get(front, {})
        ref = s.get("reference", [None, None])
        parts.append(f"<h2>{html.escape(FRONT_TITLES[front])}</h2>")
        parts.append(
            "<p>"
            + html.escape(
                f"{s.get('n_front', 0)} of {s.get('n_trials', 0)} finished trials on the "
                f"front. Hypervolume {s.get('hypervolume_normalized', float('nan')):.4f} of the "
                f"box from the ideal (accuracy 1, {cost} 0) to the reference point (accuracy "
                f"{ref[0]:g}, {cost} {format_cost(ref[1], cost)}); hv % is the part of that "
                "box only that trial adds."
            )
            + "</p>"
        )
        cols = [
            c
            for c in ("trial_id", "criterion", "granularity", "scope", "threshold_rule",
                      "amount", "schedule", "epoch", OBJECTIVE, cost, "sparsity",
                      "hv_contribution", "is_knee")
            if c in shown.columns
        ]
        shown = shown.sort_values(cost, kind="stable")
        box = (1.0 - ref[0]) * ref[1] if ref[1] is not None else float("nan")
        parts.append(_table_html(shown, cols, cost, box))
    for key in ("config", "versions"):
        value = metadata.get(key)
        parts.append(f"<details><summary>{key}</summary><pre>"
                     f"{html.escape(json.dumps(value, indent=2, sort_keys=True, default=str))}"
                     "</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)
