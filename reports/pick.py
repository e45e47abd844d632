"""Which model should I ship? The best finished trial under a budget.

Budgets are an accuracy drop from the dense model (points of *validation* accuracy) and /
or upper bounds on costs. With a cost bound the most accurate trial within it wins (ties:
the cheaper one by ``by``); with only an accuracy drop the cheapest trial by ``by`` wins
(ties: the more accurate). Only trials whose model was saved can be shipped, and the dense
model in int8 (``dense-int8``, when the search made it) competes with them: quantizing the
dense model may be all a budget needs. The test accuracy is printed beside the choice, never
used to make it. The lines printed to load the file need only PyTorch (``.pt2``) or ONNX
Runtime (``.onnx``, the int8 files).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from reports.contract import (EXTRA_KEYS, FINISHED_STATUSES, METRIC_KEYS, REFERENCE_ID, REFERENCE_INT8_ID,
                              REFERENCE_STATUS, SELECTION_METRIC)
from reports.ledger import RESERVED_COLUMNS
from reports.layout import DENSE_DIR, METRICS_FILE, MODEL_FILE
from reports.units import COST_LABELS, format_cost


@dataclass(frozen=True)
class Choice:
    """The trial :func:`pick` chose and why."""

    row: pd.Series
    dense: pd.Series | None
    budget: str
    by: str
    model_file: Path | None


def _budget_text(max_drop: float | None, max_costs: Mapping[str, float], dense: pd.Series | None) -> str:
    parts = []
    if max_drop is not None:
        base = f" (dense {float(dense['val_accuracy']):.4f})" if dense is not None else ""
        parts.append(f"validation accuracy >= dense - {max_drop:g} pt{base}")
    for cost, limit in max_costs.items():
        parts.append(f"{COST_LABELS.get(cost, cost)} <= {format_cost(limit, cost)}")
    return ", ".join(parts)


def pick(
    final: pd.DataFrame,
    experiment_dir: str | Path,
    *,
    max_drop: float | None = None,
    max_costs: Mapping[str, float] | None = None,
    by: str = "flops",
) -> Choice:
    """The best trial under the budget.

    Args:
        final: The final table (reference row first).
        experiment_dir: Where ``models/<trial_id>/`` live (for the file path).
        max_drop: Largest drop of validation accuracy below the dense model, in points.
        max_costs: ``{cost column: upper bound}``.
        by: The cost that decides among trials meeting an accuracy-only budget (and ties).

    Raises:
        ValueError: no budget given, or no saved trial meets it (the message says which
            trial comes closest).
    """
    max_costs = dict(max_costs or {})
    if max_drop is None and not max_costs:
        raise ValueError("give a budget: --max-drop POINTS and/or --max-flops / --max-size / --max-latency")
    ref = final[(final["status"] == REFERENCE_STATUS) & (final["trial_id"] == REFERENCE_ID)]
    dense = ref.iloc[0] if len(ref) else None
    if max_drop is not None and dense is None:
        raise ValueError(f"--max-drop needs the dense model's accuracy, and {DENSE_DIR}/{METRICS_FILE} is missing")
    int8 = (final["trial_id"] == REFERENCE_INT8_ID) & final.get("model_file", pd.Series(None, index=final.index)).notna()
    cand = final[(final["status"].isin(FINISHED_STATUSES) & final["model_dir"].notna()) | int8]
    cand = cand[pd.to_numeric(cand[SELECTION_METRIC], errors="coerce").notna()]
    if cand.empty:
        raise ValueError("no finished trial with a saved model yet")
    ok = pd.Series(True, index=cand.index)
    if max_drop is not None:
        ok &= cand[SELECTION_METRIC] >= float(dense[SELECTION_METRIC]) - max_drop / 100.0 - 1e-12
    for cost, limit in max_costs.items():
        ok &= pd.to_numeric(cand[cost], errors="coerce") <= limit
    budget = _budget_text(max_drop, max_costs, dense)
    if not ok.any():
        closest = cand.sort_values([SELECTION_METRIC, by], ascending=[False, True]).iloc[0]
        raise ValueError(
            f"no saved trial meets {budget}; the most accurate is {closest['trial_id']} at validation "
            f"accuracy {float(closest[SELECTION_METRIC]):.4f}, {COST_LABELS.get(by, by)} {format_cost(closest[by], by)}"
        )
    within = cand[ok]
    if max_costs:
        order = within.sort_values([SELECTION_METRIC, by, "trial_id"], ascending=[False, True, True], kind="stable")
    else:
        order = within.sort_values([by, SELECTION_METRIC, "trial_id"], ascending=[True, False, True], kind="stable")
    best = order.iloc[0]
    shipped = best.get("model_file")
    path = Path(experiment_dir) / (str(shipped) if isinstance(shipped, str) else f"{best['model_dir']}/{MODEL_FILE}")
    if path.is_file():
        check_model_file(path)
    return Choice(best, dense, budget, by, path.absolute() if path.is_file() else None)


def check_model_file(path: Path) -> None:
    """Refuse to recommend a file that would not load safely: the checks ``pruners.load``
    makes before torch reads it (no pickle, no exec/eval, not damaged; docs/security.md).

    Raises:
        ValueError: ``pruners.ModelFileError`` / ``UnsafeModelFile``, one line naming the file.
    """
    if path.suffix == ".onnx":  # an int8 file: no external data, standard operators only
        from pruners.quantize import check_onnx

        check_onnx(path)
        return
    from pruners.io import check_model_file as check

    check(path)


def _acc(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else f"{v:.4f}"


def format_choice(choice: Choice, costs: list[str]) -> str:
    """What ``python -m reports pick`` prints."""
    r, d = choice.row, choice.dense
    # Config columns: whatever the row holds besides the reports' own columns and the metrics.
    not_config = RESERVED_COLUMNS | set(METRIC_KEYS) | set(EXTRA_KEYS)
    config = {k: r[k] for k in r.index if k not in not_config and not k.startswith("_")
              and not (isinstance(r[k], float) and math.isnan(r[k])) and r[k] is not pd.NA}
    lines = [
        f"best trial under {choice.budget}:",
        f"  trial     {r['trial_id']}  ("
        + ("the dense model in int8, no pruning" if r.get("status") == REFERENCE_STATUS
           else f"{r.get('method')}, kept epoch {r.get('epoch')}") + ")",
        f"  accuracy  validation {_acc(r['val_accuracy'])}, test {_acc(r.get('test_accuracy'))}"
        + (f"  (dense: {_acc(d['val_accuracy'])}, {_acc(d.get('test_accuracy'))})" if d is not None else ""),
    ]
    for cost in costs:
        if cost not in r.index:
            continue
        ratio = ""
        if d is not None and pd.notna(d.get(cost)) and pd.notna(r[cost]) and float(r[cost]) > 0:
            ratio = f" (dense / this = {float(d[cost]) / float(r[cost]):.2f}x)"
        lines.append(f"  {COST_LABELS.get(cost, cost):<9} {format_cost(r[cost], cost)}{ratio}")
    if pd.notna(r.get("speedup")):
        lines.append(f"  speedup   {float(r['speedup']):.2f}x over the dense file, timed side by side")
    if isinstance(r.get("latency_runtime"), str):
        threads = r.get("latency_threads")
        lines.append(f"  timed on  {r['latency_runtime']}"
                     + (f", {int(threads)} thread(s)" if pd.notna(threads) else ""))
    lines.append("  config    " + json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in config.items()},
                                             default=str))
    if choice.model_file is None:
        lines.append("  file      (the saved model is missing)")
    elif choice.model_file.suffix == ".onnx":
        lines += [
            f"  file      {choice.model_file}",
            "load and run it (ONNX Runtime only, no Prunefront, no pickle; int8 kernels on x86 CPUs):",
            "    import onnxruntime as ort",
            f"    session = ort.InferenceSession({str(choice.model_file)!r}, providers=['CPUExecutionProvider'])",
            "    logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]  # x: a float32 batch",
        ]
    else:
        lines += [
            f"  file      {choice.model_file}",
            "load it (PyTorch only, no Prunefront, no pickle):",
            "    import torch",
            f"    model = torch.export.load({str(choice.model_file)!r}).module()",
        ]
    return "\n".join(lines)
