"""Front plots (PNG) and a self-contained, interactive HTML page (inline SVG, no CDN).

Matplotlib is used through ``Figure`` and its Agg / SVG canvases directly, never
``pyplot``: no global backend is switched, no GUI is needed, and a report can be
drawn from a Tune callback thread.

Every trial is its own marker (with an SVG id), drawn above the dense model's hollow
star so none hides under it; the page's script shows a trial's details when the pointer
rests on its marker (or when the page is opened as ``fronts.html#trial=<trial_id>``).
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from reports.contract import REFERENCE_STATUS, SELECTION_METRIC
from reports.layout import DENSE_DIR, MODEL_FILE
from reports.units import COST_LABELS, format_cost, front_title

GRANULARITY_MARKERS = {"unstructured": "o", "structured": "s"}
#: A panel draws at most this many trials as markers of their own (hover, SVG ids). Past
#: it, the front members and the knee still are; the other trials become one density
#: layer, so a 10,000-trial page stays small and quick to open.
MAX_MARKERS = 1000


def drawn_individually(pts: pd.DataFrame) -> np.ndarray:
    """Which of a panel's trials get a marker of their own: all of them up to
    :data:`MAX_MARKERS`, else the front members (rank 1) and the knee."""
    if len(pts) <= MAX_MARKERS:
        return np.ones(len(pts), dtype=bool)
    return (pts["pareto_rank"] == 1).to_numpy(dtype=bool, na_value=False) | pts["is_knee"].to_numpy(dtype=bool)


def aggregated_note(n: int) -> str:
    """The note a panel and the page carry when trials are drawn as a density."""
    return f"{n} trials off the front drawn as a density (darker: more); markers: the front and the knee"


def _criteria_colours(values: Iterable[Any]) -> dict[str, Any]:
    from matplotlib import colormaps

    names = sorted({str(v) for v in values if isinstance(v, str)})
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _costs_of(fronts: pd.DataFrame, costs: Mapping[str, str] | None) -> dict[str, str]:
    """``{front: cost}`` (given, or the default costs of the fronts present)."""
    if costs:
        return {f: c for f, c in costs.items() if (fronts["front"] == f).any()} or dict(costs)
    from reports.tables import DEFAULT_FRONTS

    present = list(dict.fromkeys(fronts["front"].dropna()))
    return {f: DEFAULT_FRONTS.get(f, f.removeprefix("accuracy_")) for f in present}


def point_id(front: str, trial_id: str) -> str:
    """The SVG id of a trial's marker in a front's panel."""
    return "pt-" + re.sub(r"[^A-Za-z0-9_-]", "_", f"{front}-{trial_id}")


def axis_scale(cost: str, values: list[float]) -> tuple[float, str]:
    """(divisor, unit) that puts a cost axis in round numbers: k/M/G for counts, KiB/MiB for
    bytes, ms for latency."""
    top = max((abs(v) for v in values if v == v), default=0.0)
    if cost == "size_bytes":
        steps = [(1024.0**3, "GiB"), (1024.0**2, "MiB"), (1024.0, "KiB")]
        return next(((d, u) for d, u in steps if top >= d), (1.0, "B"))
    if cost == "latency_ms":
        return 1.0, "ms"
    steps = [(1e9, "G"), (1e6, "M"), (1e3, "k")]
    return next(((d, u) for d, u in steps if top >= d), (1.0, ""))


def _format_axis(ax: Any, cost: str, values: list[float], unit: str) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    positive = [v for v in values if v > 0]
    fmt = FuncFormatter(lambda v, _pos: f"{v:g}{unit}")
    if positive and max(positive) / min(positive) > 20:
        # Structured pruning spans orders of magnitude in cost; a log axis keeps the cheap
        # end readable. Few major ticks and no minor labels, so labels never overlap.
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=5))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
    ax.xaxis.set_major_formatter(fmt)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))


def fronts_figure(fronts: pd.DataFrame, title: str | None = None, costs: Mapping[str, str] | None = None) -> Any:
    """A matplotlib ``Figure`` with one panel per front.

    Every finished trial is a marker coloured by criterion (shape by granularity); the
    rank-1 trials (the dense model competing) are joined by the front's staircase, the knee
    is ringed, and the dense model is a hollow black star underneath the trials.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    costs = _costs_of(fronts, costs)
    n = max(len(costs), 1)
    fig = Figure(figsize=(4.8 * n + 0.6, 5.0))
    fig.subplots_adjust(left=0.07 if n > 1 else 0.14, right=0.98, bottom=0.27, top=0.86, wspace=0.3)
    axes = fig.subplots(1, n, squeeze=False)[0]
    has_criterion = "criterion" in fronts.columns
    colours = _criteria_colours(fronts["criterion"]) if has_criterion else {}
    for ax, (front, cost) in zip(axes, costs.items()):
        part = fronts[fronts["front"] == front]
        ref = part[part["status"] == REFERENCE_STATUS]
        pts = part[(part["status"] != REFERENCE_STATUS) & part["pareto_rank"].notna()]
        scale, unit = axis_scale(cost, [float(v) for v in part[cost].dropna()])
        xs: list[float] = []
        for _, r in ref.iterrows():  # dense (a star) and dense-int8 (a diamond)
            if pd.isna(r[cost]) or pd.isna(r[SELECTION_METRIC]):
                continue
            rx, ry, rid = float(r[cost]) / scale, float(r[SELECTION_METRIC]), str(r["trial_id"])
            ax.scatter([rx], [ry], marker="*" if rid == "dense" else "D", s=260 if rid == "dense" else 110,
                       facecolors="none", edgecolors="black", linewidths=1.3, zorder=2, gid=point_id(front, rid))
            ax.annotate(rid, (rx, ry), textcoords="offset points", xytext=(-10, 8), ha="right",
                        fontsize="small")
            xs.append(rx)
        on_front = (pts["pareto_rank"] == 1).to_numpy(dtype=bool)
        x = pts[cost].to_numpy(dtype=float) / scale
        y = pts[SELECTION_METRIC].to_numpy(dtype=float)
        drawn = drawn_individually(pts)
        _markers(ax, front, pts[drawn], x[drawn], y[drawn], on_front[drawn], colours)
        if not drawn.all():
            _density(ax, x[~drawn], y[~drawn], xs + list(x))
        xs += list(x)
        # The staircase of the front, the dense point included when it is on it.
        stair = [(float(a), float(b)) for a, b in zip(x[on_front], y[on_front])]
        for _, r in ref[(ref["pareto_rank"] == 1).fillna(False)].iterrows():
            if xs and pd.notna(r[cost]):
                stair.append((float(r[cost]) / scale, float(r[SELECTION_METRIC])))
        if stair:
            sx, sy = zip(*sorted(stair))
            ax.step(sx, sy, where="post", color="0.25", linewidth=1.0, zorder=1)
        knee = pts["is_knee"].to_numpy(dtype=bool)
        if knee.any():
            ax.scatter(x[knee], y[knee], s=190, facecolors="none", edgecolors="crimson",
                       linewidths=1.6, zorder=5)
        _format_axis(ax, cost, xs, unit)
        ax.set_title(front_title(cost), fontsize="medium")
        ax.set_xlabel(f"{COST_LABELS.get(cost, cost)}{f' ({unit})' if unit else ''}, lower is better")
        ax.set_ylabel("validation accuracy (higher is better)")
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=name) for name, c in colours.items()]
    handles += [Line2D([], [], marker=m, linestyle="", color="0.4", label=g) for g, m in GRANULARITY_MARKERS.items()]
    handles += [
        Line2D([], [], marker="*", linestyle="", markerfacecolor="none", markeredgecolor="black",
               markersize=13, label="dense"),
        Line2D([], [], marker="D", linestyle="", markerfacecolor="none", markeredgecolor="black",
               markersize=8, label="dense-int8"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="crimson",
               markersize=11, label="knee"),
        Line2D([], [], color="0.25", linewidth=1.0, label="front (rank 1)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize="small",
               frameon=False, bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title)
    return fig


def _markers(ax: Any, front: str, pts: pd.DataFrame, x: np.ndarray, y: np.ndarray, on_front: np.ndarray,
             colours: Mapping[str, Any]) -> None:
    """One marker per trial, with its SVG id (the page's hover finds it by that id)."""
    crit = pts["criterion"].to_numpy(dtype=object) if "criterion" in pts.columns else [None] * len(pts)
    gran = pts["granularity"].to_numpy(dtype=object) if "granularity" in pts.columns else [None] * len(pts)
    for i, tid in enumerate(pts["trial_id"].astype(str)):
        member = bool(on_front[i])
        ax.scatter(
            [x[i]], [y[i]],
            color=colours.get(crit[i], "0.5") if isinstance(crit[i], str) else "0.5",
            marker=GRANULARITY_MARKERS.get(gran[i], "o") if isinstance(gran[i], str) else "o",
            s=46 if member else 30, alpha=1.0 if member else 0.5,
            edgecolors="black" if member else "none", linewidths=0.6, zorder=4 if member else 3,
            gid=point_id(front, tid),
        )


def _density(ax: Any, x: np.ndarray, y: np.ndarray, all_x: list[float]) -> None:
    """The trials without a marker of their own, as hexagonal bins under the markers."""
    positive = [v for v in all_x if v > 0]
    log = bool(positive) and max(positive) / min(positive) > 20 and (x > 0).all()  # as _format_axis decides
    ax.hexbin(x, y, gridsize=45, xscale="log" if log else "linear", cmap="Greys", mincnt=1,
              linewidths=0.0, alpha=0.8, zorder=2)
    ax.text(0.02, 0.02, f"{len(x)} other trials: density", transform=ax.transAxes, fontsize="x-small", color="0.3")


def png_bytes(fronts: pd.DataFrame, title: str | None = None, dpi: int = 110,
              costs: Mapping[str, str] | None = None) -> bytes:
    """The fronts figure as PNG bytes."""
    fig = fronts_figure(fronts, title, costs)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def svg_text(fronts: pd.DataFrame, title: str | None = None, costs: Mapping[str, str] | None = None) -> str:
    """The fronts figure as an ``<svg>`` element (no XML prolog), text kept as text."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "prunefront"}):
        fig = fronts_figure(fronts, title, costs)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    # The RDF metadata block only names schemas; drop it so the page holds no links.
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)


def _cell(v: Any, fmt: str = "") -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if fmt and isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return format(float(v), fmt)
    return str(v)


def point_info(fronts: pd.DataFrame, costs: Mapping[str, str], experiment_dir: str | None) -> dict[str, dict[str, str]]:
    """What the page shows for each marker (keyed by :func:`point_id`)."""
    info: dict[str, dict[str, str]] = {}
    for front, cost in costs.items():
        part = fronts[fronts["front"] == front]
        pts = (part["status"] != REFERENCE_STATUS) & part["pareto_rank"].notna()
        if pts.sum() > MAX_MARKERS:  # only the markers drawn have a tooltip
            keep = ~pts
            keep[pts] = drawn_individually(part[pts])
            part = part[keep]
        for _, r in part.iterrows():
            ref = r.get("status") == REFERENCE_STATUS
            tid = str(r["trial_id"])
            model = r.get("model_file") if isinstance(r.get("model_file"), str) else None
            if model is None and ref and tid == "dense":
                model = f"{DENSE_DIR}/{MODEL_FILE}"
            elif model is None and isinstance(r.get("model_dir"), str):
                model = f"{r['model_dir']}/{MODEL_FILE}"
            if model and experiment_dir:
                model = f"{experiment_dir.rstrip('/')}/{model}"
            info[point_id(front, tid)] = {
                "trial": tid,
                "method": f"{tid} model (reference)" if ref else _cell(r.get("method")),
                "amount": _cell(r.get("amount"), ".3g"),
                "validation accuracy": _cell(r.get("val_accuracy"), ".4f"),
                "test accuracy": _cell(r.get("test_accuracy"), ".4f"),
                COST_LABELS.get(cost, cost): format_cost(r.get(cost), cost),
                "Pareto rank": _cell(r.get("pareto_rank")),
                "saved model": model or "-",
            }
    return info


_SCRIPT = """
(function () {
  const info = JSON.parse(document.getElementById('points').textContent);
  const tip = document.getElementById('tip');
  function show(id, x, y) {
    const d = info[id]; if (!d) return;
    tip.innerHTML = Object.entries(d).map(([k, v]) =>
      '<div><b>' + k + '</b> ' + String(v).replace(/[&<>]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;'}[c])) + '</div>').join('');
    tip.style.left = (x + 14) + 'px'; tip.style.top = (y + 14) + 'px'; tip.style.display = 'block';
  }
  document.querySelectorAll('g[id^="pt-"]').forEach(function (g) {
    g.style.cursor = 'pointer';
    g.addEventListener('mousemove', e => show(g.id, e.pageX, e.pageY));
    g.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
  });
  const m = /trial=([^&]+)/.exec(decodeURIComponent(location.hash));
  if (m) {
    const id = Object.keys(info).find(k => info[k].trial === m[1]);
    const g = id && document.getElementById(id);
    if (g) { const b = g.getBoundingClientRect(); show(id, b.right + window.scrollX, b.top + window.scrollY); }
  }
})();
"""


def _table_html(df: pd.DataFrame, columns: list[str], cost: str, box: float) -> str:
    head = "".join(f"<th>{html.escape(HTML_HEADERS.get(c, c))}</th>" for c in columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in columns:
            v = r.get(c)
            if c == cost:
                text = format_cost(v, cost)
            elif c == "is_knee":
                text = "knee" if bool(v) else ""
            elif c == "hv_contribution":
                text = f"{100.0 * v / box:.2f}" if box > 0 and pd.notna(v) else "-"
            elif c in (SELECTION_METRIC, "test_accuracy"):
                text = _cell(v, ".4f")
            elif isinstance(v, float):
                text = _cell(v, ".4g")
            else:
                text = _cell(v)
            cells.append(f"<td>{html.escape(text)}</td>")
        cls = ' class="ref"' if r.get("status") == REFERENCE_STATUS else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


HTML_HEADERS = {"hv_contribution": "hv %", "is_knee": "knee", "trial_id": "trial", "latency_runtime": "timed on",
                "model_file": "shipped file",
                "val_accuracy": "val acc", "test_accuracy": "test acc", "pareto_rank": "rank"}


def _methods_html(methods: pd.DataFrame | None, costs: Mapping[str, str]) -> str:
    from reports.methods import method_matrix

    if methods is None or methods.empty:
        return ""
    parts = ["<h2>Which method wins</h2><p>Best validation accuracy (test accuracy) of each method's "
             "trials reaching each compression level (dense cost / trial cost); chosen on validation.</p>"]
    for cost in dict.fromkeys(costs.values()):
        m = method_matrix(methods, cost)
        if m.empty:
            continue
        head = "".join(f"<th>&ge; {lvl:g}x</th>" for lvl in m.columns)
        body = []
        for method, row in m.iterrows():
            cells = "".join(
                "<td>-</td>" if not isinstance(c, tuple)
                else f"<td title=\"{html.escape(str(c[2]))}\">{c[0]:.4f} ({_cell(c[1], '.4f')})</td>"
                for c in row
            )
            body.append(f"<tr><td style='text-align:left'>{html.escape(str(method))}</td>{cells}</tr>")
        parts.append(f"<h3>{html.escape(COST_LABELS.get(cost, cost))}</h3><table><thead><tr><th>method</th>"
                     f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    return "".join(parts)


def html_page(
    fronts: pd.DataFrame,
    summaries: dict[str, dict[str, Any]],
    metadata: dict[str, Any],
    title: str = "Prunefront report",
    methods: pd.DataFrame | None = None,
    experiment_dir: str | None = None,
) -> str:
    """A self-contained HTML page: the fronts as inline SVG whose markers show their
    trial on hover, each front's table, the method table, and the experiment's config and
    package versions. It loads nothing."""
    costs = {f: s.get("cost") for f, s in summaries.items() if s.get("cost")} or _costs_of(fronts, None)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1600px}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "th{background:#eee}tr.ref{font-style:italic;background:#f6f6f6}"
        "pre{background:#f6f6f6;padding:0.5em;overflow:auto}"
        "svg{max-width:100%;height:auto}"
        "#tip{position:absolute;display:none;background:#fffff0;border:1px solid #888;padding:6px 9px;"
        "font-size:13px;box-shadow:2px 2px 6px rgba(0,0,0,.25);pointer-events:none;z-index:10}</style>"
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p>Accuracy is measured on the validation split, which every decision uses; the test "
        "accuracy of each kept model is shown beside it. The dense model and the dense model "
        "in int8 (dense-int8) compete: a trial either dominates is not on a front. Latency is "
        "the shipped file's, timed on the runtime each row names (torch for float files, ONNX "
        "Runtime for int8 ones). Rest the pointer on a marker to see its trial.</p>",
        svg_text(fronts, costs=costs),
        '<div id="tip"></div>',
    ]
    for front in costs:
        part = fronts[(fronts["front"] == front) & (fronts["status"] != REFERENCE_STATUS) & fronts["pareto_rank"].notna()]
        if len(part) > MAX_MARKERS:
            n = int((~drawn_individually(part)).sum())
            parts.append(f"<p class='note'>{html.escape(front_title(costs[front]))}: {html.escape(aggregated_note(n))}.</p>")
    for front, cost in costs.items():
        part = fronts[fronts["front"] == front]
        shown = part[(part["pareto_rank"] == 1) | (part["status"] == REFERENCE_STATUS)]
        s = summaries.get(front, {})
        ref = s.get("reference", [0.0, float("nan")])
        parts.append(f"<h2>{html.escape(front_title(cost))}</h2>")
        parts.append(
            "<p>" + html.escape(
                f"{s.get('n_front', 0)} of {s.get('n_trials', 0)} finished trials on the front "
                f"({s.get('n_dominated_by_dense', 0)} dominated by the dense model or dense-int8). Hypervolume "
                f"{_cell(s.get('hypervolume_normalized'), '.4f')} of the box from the ideal (accuracy 1, "
                f"{cost} 0) to the reference point (accuracy {ref[0]:g}, {cost} {format_cost(ref[1], cost)}); "
                "hv % is the part of that box only that trial adds."
            ) + "</p>"
        )
        cols = [c for c in ("trial_id", "method", "scope", "amount", "quantize", "epoch", SELECTION_METRIC,
                            "test_accuracy", cost, "sparsity", "speedup", "latency_runtime", "hv_contribution",
                            "is_knee", "model_file")
                if c in shown.columns]
        box = (1.0 - ref[0]) * ref[1] if ref[1] is not None else float("nan")
        parts.append(_table_html(shown.sort_values(cost, kind="stable"), cols, cost, box))
    parts.append(_methods_html(methods, costs))
    for key in ("config", "versions"):
        value = metadata.get(key)
        parts.append(f"<details><summary>{key}</summary><pre>"
                     f"{html.escape(json.dumps(value, indent=2, sort_keys=True, default=str))}"
                     "</pre></details>")
    info = point_info(fronts, costs, experiment_dir)
    parts.append('<script type="application/json" id="points">'
                 + json.dumps(info).replace("</", "<\\/") + "</script>")
    parts.append(f"<script>{_SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)
