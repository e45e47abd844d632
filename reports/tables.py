"""Ledger -> the three report tables, as pure functions over DataFrames.

* :func:`trials_table`: one row per trial x epoch (running trials included, with
  status ``running``, so progress can be watched).
* :func:`final_table`: one row per finished trial (a status line, and at least one
  result). The row holds the trial's *best-accuracy epoch among the trailing run
  of epochs at its final sparsity* (ties: the earliest such epoch), which is the
  epoch whose model the orchestrator saves. ``epoch`` is that epoch,
  ``last_epoch`` the epoch the trial ended on.
* :func:`fronts_table`: for each objective pair of :data:`FRONTS`, every finished
  trial with its Pareto rank, exclusive hypervolume contribution and knee flag.

Every table starts with the dense baseline's reference row (``trial_id`` "dense",
``status`` "reference") when the experiment has one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reports import pareto
from reports.ledger import (
    CONFIG_ORDER,
    FINISHED_STATUSES,
    METRIC_COLUMNS,
    REFERENCE_ID,
    REFERENCE_STATUS,
    RUNNING,
    Experiment,
    is_missing,
    records_frame,
)

# Front name -> the cost column minimised against accuracy (maximised).
FRONTS: dict[str, str] = {
    "accuracy_flops": "flops",
    "accuracy_flops_sparse": "flops_sparse",
    "accuracy_size": "size_bytes",
}
INTEGER_METRICS = frozenset({"params", "params_nonzero", "size_bytes"})
OBJECTIVE = "accuracy"
DIRECTIONS = ("max", "min")
# Epochs whose achieved sparsity is within this of the last epoch's count as "at
# the final sparsity" (achieved sparsity is a ratio of integer counts, so real
# changes between pruning steps are far larger).
SPARSITY_ATOL = 1e-6


@dataclass(frozen=True)
class FrontSummary:
    """Per-front figures that belong with the table (written to Parquet metadata).

    Attributes:
        front: Front name (a key of :data:`FRONTS`).
        cost: The cost column.
        reference: ``(accuracy, cost)`` reference point of the hypervolume.
        hypervolume: Area dominated by the finished trials inside the reference box.
        hypervolume_normalized: ``hypervolume`` divided by the area of the box from
            the ideal point (accuracy 1, cost 0) to the reference, in [0, 1].
        n_trials: Finished trials with finite accuracy and cost.
        n_front: Trials of Pareto rank 1.
        knee: ``trial_id`` of the knee, or None when the front is empty.
    """

    front: str
    cost: str
    reference: tuple[float, float]
    hypervolume: float
    hypervolume_normalized: float
    n_trials: int
    n_front: int
    knee: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "front": self.front,
            "cost": self.cost,
            "reference": list(self.reference),
            "hypervolume": self.hypervolume,
            "hypervolume_normalized": self.hypervolume_normalized,
            "n_trials": self.n_trials,
            "n_front": self.n_front,
            "knee": self.knee,
        }


@dataclass(frozen=True)
class ReportTables:
    """The report's tables and what goes into their metadata."""

    trials: pd.DataFrame
    final: pd.DataFrame
    fronts: pd.DataFrame
    summaries: dict[str, FrontSummary]
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    dense: dict[str, Any] | None = None
    experiment: dict[str, Any] = field(default_factory=dict)


def normalize_column(values: pd.Series) -> pd.Series:
    """Give a column of JSON-born values one Parquet-friendly dtype.

    bool -> ``boolean``; int -> ``Int64``; int and float -> ``float64``; str ->
    ``string``; anything else (lists, dicts, mixed kinds) -> JSON text. Missing
    values stay missing.
    """
    present = [v for v in values if not is_missing(v)]
    if not present:
        return pd.Series([np.nan] * len(values), index=values.index, dtype="float64")
    kinds = set()
    for v in present:
        if isinstance(v, (bool, np.bool_)):
            kinds.add("bool")
        elif isinstance(v, (int, np.integer)):
            kinds.add("int")
        elif isinstance(v, (float, np.floating)):
            kinds.add("float")
        elif isinstance(v, str):
            kinds.add("str")
        else:
            kinds.add("other")
    if kinds == {"bool"}:
        return values.astype("boolean")
    if kinds == {"int"}:
        return values.astype("Int64")
    if kinds <= {"int", "float"}:
        return pd.Series(
            [np.nan if is_missing(v) else float(v) for v in values],
            index=values.index,
            dtype="float64",
        )
    if kinds == {"str"}:
        return values.astype("string")
    return pd.Series(
        [pd.NA if is_missing(v) else json.dumps(v, sort_keys=True, default=str) for v in values],
        index=values.index,
        dtype="string",
    )


def _order_columns(
    df: pd.DataFrame, head: list[str], config_columns: list[str], tail: list[str]
) -> pd.DataFrame:
    metric = [c for c in METRIC_COLUMNS if c in df.columns]
    fixed = set(head) | set(config_columns) | set(metric) | set(tail) | {"time_total_s", "_seq"}
    extras = sorted(c for c in df.columns if c not in fixed)
    time_col = ["time_total_s"] if "time_total_s" in df.columns else []
    order = head + config_columns + metric + time_col + extras + tail
    return df[[c for c in order if c in df.columns]]


def _config_order(config_columns: tuple[str, ...] | list[str]) -> list[str]:
    first = [c for c in CONFIG_ORDER if c in config_columns]
    return first + sorted(c for c in config_columns if c not in CONFIG_ORDER)


def _reference_row(dense: dict[str, Any] | None) -> dict[str, Any] | None:
    if dense is None:
        return None
    row = {k: v for k, v in dense.items() if k not in ("trial_id", "status", "epoch", "config")}
    row.update(trial_id=REFERENCE_ID, status=REFERENCE_STATUS, epoch=None)
    return row


def _metric_dtype(column: str, values: pd.Series) -> pd.Series:
    """Fixed dtypes for the metric columns, so reports of different experiments
    (or of one experiment at different times) share a schema: counts are Int64,
    everything else (FLOPs included: sparse FLOPs can be fractional) float64."""
    try:
        as_float = pd.to_numeric(values.astype(object).where(values.notna(), np.nan))
    except (TypeError, ValueError):
        bad = next(v for v in values if not is_missing(v) and not _is_number(v))
        raise ValueError(f"metric {column!r} must be numeric, got {bad!r}") from None
    as_float = as_float.astype("float64")
    if column in INTEGER_METRICS:
        finite = as_float.dropna()
        if (finite == np.round(finite)).all():
            return as_float.astype("Int64")
    return as_float


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _finalize(records: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            c: _metric_dtype(c, records[c]) if c in METRIC_COLUMNS else normalize_column(records[c])
            for c in records.columns
        },
        index=records.index,
    )
    for c in METRIC_COLUMNS:
        # Every reader can count on the metric columns, even before any result.
        if c not in out.columns:
            out[c] = pd.array([pd.NA] * len(out), dtype="Int64") if c in INTEGER_METRICS else np.nan
    for c in ("trial_id", "status"):
        if c in out.columns:
            out[c] = out[c].astype("string")
    if "epoch" in out.columns:
        out["epoch"] = out["epoch"].astype("Int64")
    return out.reset_index(drop=True)


def trial_statuses(exp: Experiment) -> pd.DataFrame:
    """Status of every trial that reported a result: ``trial_id, status, reason``.

    The last status line wins unless a result line follows it (a retried trial),
    in which case, as for a trial with no status line, the trial is running.
    """
    res = exp.results
    if res.empty:
        return pd.DataFrame(columns=["trial_id", "status", "reason"])
    last_result = res.groupby("trial_id", sort=True)["_seq"].max()
    st = exp.statuses.set_index("trial_id")
    rows = []
    for trial_id, seq in last_result.items():
        if trial_id in st.index and st.at[trial_id, "_seq"] > seq:
            rows.append((trial_id, st.at[trial_id, "status"], st.at[trial_id, "reason"]))
        else:
            rows.append((trial_id, RUNNING, None))
    return pd.DataFrame(rows, columns=["trial_id", "status", "reason"])


def trials_table(exp: Experiment) -> pd.DataFrame:
    """One row per trial x epoch, sorted by trial and epoch, reference row first.

    Columns: ``trial_id, status, epoch``, the config columns, the metrics,
    ``time_total_s``, any other key the result lines carried.
    """
    config_cols = _config_order(exp.config_columns)
    res = exp.results.drop(columns=["_seq"])
    if not res.empty:
        status = trial_statuses(exp).set_index("trial_id")["status"]
        res = res.assign(status=res["trial_id"].map(status))
        res = res.sort_values(["trial_id", "epoch"], kind="stable")
    ref = _reference_row(exp.dense)
    records = records_frame(
        ([ref] if ref else []) + res.to_dict("records"),
        list(dict.fromkeys(["trial_id", "status", "epoch", *res.columns, *(ref or {})])),
    )
    out = _finalize(records)
    return _order_columns(out, ["trial_id", "status", "epoch"], config_cols, [])


def _chosen_epoch(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(row of the best-accuracy epoch at the final sparsity, last row) of one trial."""
    rows = rows.sort_values("epoch")
    last = rows.iloc[-1]
    sparsity = rows["sparsity"].to_numpy(dtype=float) if "sparsity" in rows else None
    start = len(rows) - 1
    if sparsity is not None:
        final = sparsity[-1]
        # Walk back over the trailing run at the final sparsity: an earlier epoch at
        # a lower sparsity is a different (less pruned) model, never the result.
        while start > 0 and (
            (math.isnan(final) and math.isnan(sparsity[start - 1]))
            or abs(sparsity[start - 1] - final) <= SPARSITY_ATOL
        ):
            start -= 1
    run = rows.iloc[start:]
    acc = run["accuracy"].to_numpy(dtype=float) if "accuracy" in run else np.full(len(run), np.nan)
    if np.isnan(acc).all():
        return last, last
    # np.nanargmax returns the first maximum: ties go to the earliest epoch.
    return run.iloc[int(np.nanargmax(acc))], last


def final_table(exp: Experiment, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per finished trial: its result epoch, why it ended, where its model is.

    Columns: ``trial_id, status, reason, epoch`` (the result epoch), ``last_epoch``,
    the config columns, the metrics of the result epoch, ``time_total_s`` of that
    epoch, ``trial_time_s`` (wall time of the whole trial), ``model_dir``
    (relative to the experiment directory, when saved). Reference row first.
    """
    if trials is None:
        trials = trials_table(exp)
    config_cols = _config_order(exp.config_columns)
    st = trial_statuses(exp)
    reasons = dict(zip(st["trial_id"], st["reason"], strict=True))
    records = []
    ref = trials[trials["status"] == REFERENCE_STATUS]
    for _, r in ref.iterrows():
        records.append({**r.to_dict(), "reason": None, "last_epoch": None})
    done = trials[trials["status"].isin(FINISHED_STATUSES)]
    for trial_id, rows in done.groupby("trial_id", sort=True):
        chosen, last = _chosen_epoch(rows)
        rec = chosen.to_dict()
        rec["reason"] = reasons.get(trial_id)
        rec["last_epoch"] = int(last["epoch"])
        if "time_total_s" in last.index:
            rec["trial_time_s"] = last["time_total_s"]
        rec["model_dir"] = exp.model_dirs.get(str(trial_id))
        records.append(rec)
    columns = list(dict.fromkeys([*trials.columns, "reason", "last_epoch", "trial_time_s", "model_dir"]))
    df = _finalize(records_frame(records, columns))
    df["last_epoch"] = df["last_epoch"].astype("Int64")
    if "model_dir" in df.columns:
        df["model_dir"] = df["model_dir"].astype("string")
    if "reason" in df.columns:
        df["reason"] = df["reason"].astype("string")
    return _order_columns(
        df,
        ["trial_id", "status", "reason", "epoch", "last_epoch"],
        config_cols,
        ["trial_time_s", "model_dir"],
    )


def default_reference(dense: dict[str, Any] | None, cost: str) -> tuple[float, float]:
    """The default hypervolume reference: accuracy 0 and the dense model's cost."""
    if dense is None:
        raise ValueError(
            f"no hypervolume reference for {cost!r}: the dense baseline (dense/metrics.json) "
            f"is not written yet; build the report once it is, or pass reference={{{cost!r}: value}}"
        )
    value = dense.get(cost)
    if not _is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(
            f"no hypervolume reference for {cost!r}: dense/metrics.json has {cost!r} = {value!r}, "
            f"not a positive number; pass reference={{{cost!r}: value}}"
        )
    return (0.0, float(value))


def fronts_table(
    final: pd.DataFrame,
    dense: dict[str, Any] | None,
    reference: dict[str, float] | None = None,
    reference_accuracy: float = 0.0,
) -> tuple[pd.DataFrame, dict[str, FrontSummary]]:
    """Pareto ranks, hypervolume contributions and knees for each front.

    Args:
        final: The :func:`final_table` (its reference row, if any, is re-used as
            each front's reference row).
        dense: Dense baseline metrics; supplies the default reference costs.
        reference: Optional ``{cost_column: reference_cost}`` overriding the dense
            model's cost for some fronts.
        reference_accuracy: Accuracy of the reference point (0 by default).

    Returns:
        ``(fronts, summaries)``: the long table (column ``front`` names the pair;
        ``pareto_rank`` is null for trials with a non-finite accuracy or cost and
        for reference rows) and a :class:`FrontSummary` per front.
    """
    reference = dict(reference or {})
    unknown = set(reference) - set(FRONTS.values())
    if unknown:
        raise ValueError(
            f"unknown reference cost {sorted(unknown)[0]!r}; valid choices: "
            + ", ".join(FRONTS.values())
        )
    ref_rows = final[final["status"] == REFERENCE_STATUS]
    trials = final[final["status"].isin(FINISHED_STATUSES)].reset_index(drop=True)
    parts = []
    summaries: dict[str, FrontSummary] = {}
    for front, cost in FRONTS.items():
        if cost in reference:
            ref_point = (float(reference_accuracy), float(reference[cost]))
        else:
            ref_point = (float(reference_accuracy), default_reference(dense, cost)[1])
        acc = trials[OBJECTIVE].to_numpy(dtype=float, na_value=np.nan)
        cst = trials[cost].to_numpy(dtype=float, na_value=np.nan)
        ok = np.isfinite(acc) & np.isfinite(cst)
        pts = np.column_stack([acc[ok], cst[ok]])
        rank = np.full(len(trials), np.nan)
        contrib = np.full(len(trials), np.nan)
        knee = np.zeros(len(trials), dtype=bool)
        hv = 0.0
        knee_id = None
        if ok.any():
            idx = np.flatnonzero(ok)
            rank[idx] = pareto.nondominated_sort(pts, DIRECTIONS)
            contrib[idx] = pareto.hv_contributions(pts, ref_point, DIRECTIONS)
            k = pareto.knee_point(pts, DIRECTIONS)
            knee[idx[k]] = True
            knee_id = str(trials.loc[idx[k], "trial_id"])
            hv = pareto.hypervolume_2d(pts, ref_point, DIRECTIONS)
        part = trials.assign(
            front=front,
            pareto_rank=pd.array(
                [pd.NA if math.isnan(r) else int(r) for r in rank], dtype="Int64"
            ),
            hv_contribution=contrib,
            is_knee=knee,
        )
        part = part.sort_values(
            ["pareto_rank", cost, "trial_id"], kind="stable", na_position="last"
        )
        ref_part = ref_rows.assign(
            front=front,
            pareto_rank=pd.array([pd.NA] * len(ref_rows), dtype="Int64"),
            hv_contribution=np.nan,
            is_knee=False,
        )
        parts.extend([ref_part, part])
        box = (1.0 - ref_point[0]) * ref_point[1]
        summaries[front] = FrontSummary(
            front=front,
            cost=cost,
            reference=ref_point,
            hypervolume=hv,
            hypervolume_normalized=hv / box if box > 0 else float("nan"),
            n_trials=int(ok.sum()),
            n_front=int(np.nansum(rank == 1)),
            knee=knee_id,
        )
    fronts = pd.concat(parts, ignore_index=True) if parts else final.iloc[0:0]
    fronts["front"] = fronts["front"].astype("string")
    fronts["is_knee"] = fronts["is_knee"].astype(bool)
    fronts["pareto_rank"] = fronts["pareto_rank"].astype("Int64")
    head = ["front", "trial_id", "status", "pareto_rank", "hv_contribution", "is_knee"]
    rest = [c for c in fronts.columns if c not in head]
    return fronts[head + rest].reset_index(drop=True), summaries


def build_tables(
    exp: Experiment,
    reference: dict[str, float] | None = None,
    reference_accuracy: float = 0.0,
) -> ReportTables:
    """All three tables of an experiment (nothing is written)."""
    trials = trials_table(exp)
    final = final_table(exp, trials)
    fronts, summaries = fronts_table(final, exp.dense, reference, reference_accuracy)
    return ReportTables(
        trials=trials,
        final=final,
        fronts=fronts,
        summaries=summaries,
        config=exp.config,
        versions=exp.versions,
        dense=exp.dense,
        experiment=exp.info,
    )
