"""Ledger -> the report tables, as pure functions over DataFrames.

* :func:`trials_table`: one row per trial x epoch (running trials included, with
  status ``running``, so progress can be watched).
* :func:`final_table`: one row per finished trial (a status line, and at least one
  result), holding its kept epoch (``reports.contract.kept_epoch``: the best validation
  accuracy among the trailing run of epochs at its final sparsity), which is the epoch
  whose model the orchestrator saved. ``epoch`` is that epoch, ``last_epoch`` the epoch the
  trial ended on.
* :func:`fronts_table`: for each front (validation accuracy against one cost), every
  finished trial *and the dense model* with its Pareto rank: the dense model competes,
  so a trial it dominates is not on the front. ``rank_among_trials`` is the rank without
  the dense point; ``hv_contribution`` (exclusive) and ``is_knee`` are the trials'.
* ``reports.methods.methods_table``: the best trial of each method at each compression level.

Every table starts with the dense baseline's reference row (``trial_id`` "dense",
``status`` "reference") when the experiment has one. Selection (ranks, knee, fronts) uses
``val_accuracy`` only; ``test_accuracy`` rides along to be reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reports import pareto
from reports.contract import (
    COST_METRICS,
    FINISHED_STATUSES,
    INTEGER_METRICS,
    METRIC_KEYS,
    REFERENCE_ID,
    REFERENCE_INT8_ID,
    REFERENCE_STATUS,
    SELECTION_METRIC,
    KeptEpoch,
    ledger_counts,
)
from reports.layout import (DENSE_DIR, DENSE_INT8_MODEL_FILE, EXPERIMENT_FILE, METRICS_FILE, MODEL_FILE, Layout,
                            model_file_name)
from reports.ledger import Experiment, is_missing, normalize_column, object_frame

#: The fronts a report builds when the config names none (``report.fronts``): front name
#: -> the cost column minimised against validation accuracy (maximised).
DEFAULT_FRONTS: dict[str, str] = {
    "accuracy_flops": "flops",
    "accuracy_flops_sparse": "flops_sparse",
    "accuracy_size": "size_bytes",
    # Quantization changes latency and size but not MACs: the shipped file's measured
    # latency (runtime and threads in each row's latency_runtime / latency_threads).
    "accuracy_latency": "latency_ms",
}
_FRONT_NAMES = {"size_bytes": "accuracy_size", "latency_ms": "accuracy_latency"}
DIRECTIONS = ("max", "min")


def front_name(cost: str) -> str:
    """The front of validation accuracy against ``cost`` (``accuracy_flops``, ...)."""
    return _FRONT_NAMES.get(cost, f"accuracy_{cost}")


def fronts_for(config: Mapping[str, Any] | None) -> dict[str, str]:
    """Which fronts a report builds: ``report.fronts`` when the config lists costs, else
    the four defaults (FLOPs, sparse FLOPs, size, latency) plus every cost objective of ``scheduler.objectives``."""
    config = config or {}
    listed = (config.get("report") or {}).get("fronts") if isinstance(config.get("report"), Mapping) else None
    if listed:
        if not isinstance(listed, list) or any(not isinstance(c, str) or c not in COST_METRICS for c in listed):
            raise ValueError(f"{EXPERIMENT_FILE}: report.fronts is {listed!r}; expected a list of costs from: "
                             f"{', '.join(COST_METRICS)}")
        return {front_name(c): c for c in listed}
    fronts = dict(DEFAULT_FRONTS)
    sched = config.get("scheduler") if isinstance(config.get("scheduler"), Mapping) else {}
    for metric, mode in (sched.get("objectives") or {}).items():
        if metric in COST_METRICS and mode == "min" and metric not in fronts.values():
            fronts[front_name(metric)] = metric
    return fronts


@dataclass(frozen=True)
class FrontSummary:
    """Per-front figures that belong with the table (written to Parquet metadata).

    Attributes:
        front: Front name.
        cost: The cost column.
        reference: ``(accuracy, cost)`` reference point of the hypervolume: accuracy 0 and
            the dense model's cost.
        hypervolume: Area the finished trials dominate inside the reference box.
        hypervolume_normalized: ``hypervolume`` divided by the area of the box from
            the ideal point (accuracy 1, cost 0) to the reference, in [0, 1].
        n_trials: Finished trials with finite accuracy and cost.
        n_front: Trials of Pareto rank 1 (the dense model competing).
        n_dominated_by_dense: Trials a reference model dominates: the dense model, or the
            dense model in int8 (``dense-int8``); the trial's ``dominated_by`` says which.
        knee: ``trial_id`` of the knee of the trials on the front, or None.
    """

    front: str
    cost: str
    reference: tuple[float, float]
    hypervolume: float
    hypervolume_normalized: float
    n_trials: int
    n_front: int
    n_dominated_by_dense: int
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
            "n_dominated_by_dense": self.n_dominated_by_dense,
            "knee": self.knee,
        }


@dataclass(frozen=True)
class ReportTables:
    """The report's tables and what goes into their metadata."""

    trials: pd.DataFrame
    final: pd.DataFrame
    fronts: pd.DataFrame
    summaries: dict[str, FrontSummary]
    methods: pd.DataFrame = field(default_factory=pd.DataFrame)
    front_costs: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FRONTS))
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    dense: dict[str, Any] | None = None
    experiment: dict[str, Any] = field(default_factory=dict)
    #: Trials per state (``contract.ledger_counts``): trials without a result row included.
    trial_counts: dict[str, int] = field(default_factory=dict)


def _order_columns(
    df: pd.DataFrame, head: list[str], config_columns: list[str], tail: list[str]
) -> pd.DataFrame:
    metric = [c for c in METRIC_KEYS if c in df.columns]
    fixed = set(head) | set(config_columns) | set(metric) | set(tail) | {"time_total_s", "_seq"}
    extras = sorted(c for c in df.columns if c not in fixed)
    time_col = ["time_total_s"] if "time_total_s" in df.columns else []
    order = head + config_columns + metric + time_col + extras + tail
    return df[[c for c in order if c in df.columns]]


def _config_order(config_columns: tuple[str, ...] | list[str]) -> list[str]:
    """The searched keys in the order rows carry them (the search's declaration order, as
    first seen in the ledger), then the schedule / criterion parameters, sorted (which of
    them a row has depends on its method)."""
    plain = [c for c in config_columns if "." not in c]
    return plain + sorted(c for c in config_columns if "." in c)


def _reference_row(dense: dict[str, Any] | None, trial_id: str = REFERENCE_ID) -> dict[str, Any] | None:
    if dense is None:
        return None
    row = {k: v for k, v in dense.items() if k not in ("trial_id", "status", "epoch", "config")}
    row.update(trial_id=trial_id, status=REFERENCE_STATUS, epoch=None)
    return row


def reference_rows(exp: Experiment) -> list[dict[str, Any]]:
    """The reference rows: ``dense`` (float32) and, when it was made, ``dense-int8``."""
    rows = [_reference_row(exp.dense), _reference_row(exp.dense_int8, REFERENCE_INT8_ID)]
    return [r for r in rows if r is not None]


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
            c: _metric_dtype(c, records[c]) if c in METRIC_KEYS else normalize_column(records[c])
            for c in records.columns
        },
        index=records.index,
    )
    for c in METRIC_KEYS:
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
    """Status of every trial that reported a result: ``trial_id, status, reason``."""
    rows = [(t, st.status, st.reason) for t, st in sorted(exp.trials.items()) if st.results]
    return pd.DataFrame(rows, columns=["trial_id", "status", "reason"])


def trials_table(exp: Experiment) -> pd.DataFrame:
    """One row per trial x epoch, sorted by trial and epoch, reference row first.

    Columns: ``trial_id, status, epoch``, the config columns, the metrics,
    ``time_total_s``, any other key the result lines carried.
    """
    config_cols = _config_order(exp.config_columns)
    res = exp.results.drop(columns=["_seq"])
    if not res.empty:
        status = {t: st.status for t, st in exp.trials.items()}
        res = res.assign(status=res["trial_id"].map(status))
        res = res.sort_values(["trial_id", "epoch"], kind="stable")
    refs = reference_rows(exp)
    columns = list(dict.fromkeys(["trial_id", "status", "epoch", *res.columns, *(k for r in refs for k in r)]))
    out = _finalize(object_frame(refs, res, columns))
    return _order_columns(out, ["trial_id", "status", "epoch"], config_cols, [])


def _kept_positions(done: pd.DataFrame) -> list[int]:
    """Row positions of each trial's kept epoch in ``done`` (sorted by trial and epoch),
    by ``reports.contract.KeptEpoch`` (the rule the trial applied when it saved its model)."""
    tids = done["trial_id"].to_numpy(dtype=object)
    sparsity = done["sparsity"].to_numpy(dtype=float, na_value=np.nan) if "sparsity" in done else np.full(len(done), np.nan)
    acc = (done[SELECTION_METRIC].to_numpy(dtype=float, na_value=np.nan) if SELECTION_METRIC in done
           else np.full(len(done), np.nan))
    kept: list[int] = []
    rule, current = KeptEpoch(), None
    for i, (tid, s, a) in enumerate(zip(tids, sparsity.tolist(), acc.tolist())):
        if tid != current:
            if current is not None:
                kept.append(rule.kept["_pos"])
            rule, current = KeptEpoch(), tid
        rule.observe({"sparsity": s, SELECTION_METRIC: a, "_pos": i})
    if current is not None:
        kept.append(rule.kept["_pos"])
    return kept


def final_table(exp: Experiment, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per finished trial: its kept epoch, why it ended, where its model is.

    Columns: ``trial_id, status, reason, method, epoch`` (the kept epoch),
    ``last_epoch``, the config columns, the metrics of the kept epoch, ``time_total_s`` of
    that epoch, ``trial_time_s`` (wall time of the whole trial), ``model_dir`` (relative to
    the experiment directory, when saved). Reference row first.
    """
    if trials is None:
        trials = trials_table(exp)
    config_cols = _config_order(exp.config_columns)
    ref = trials[trials["status"] == REFERENCE_STATUS]
    done = trials[trials["status"].isin(FINISHED_STATUSES)].sort_values(["trial_id", "epoch"], kind="stable")
    kept = done.iloc[_kept_positions(done)]
    last = done.drop_duplicates("trial_id", keep="last")
    ids = [str(t) for t in kept["trial_id"]]
    quantize = kept["quantize"].tolist() if "quantize" in kept.columns else [None] * len(kept)
    extra: dict[str, list[Any]] = {
        "reason": [exp.trials[t].reason for t in ids],
        "last_epoch": [int(e) for e in last["epoch"]],
        "model_dir": [exp.model_dirs.get(t) for t in ids],
        "model_file": [f"{exp.model_dirs[t]}/{model_file_name(q)}" if t in exp.model_dirs else None
                       for t, q in zip(ids, quantize)],
    }
    if "time_total_s" in last.columns:
        extra["trial_time_s"] = list(last["time_total_s"].to_numpy(dtype=object))
    columns = list(dict.fromkeys([*trials.columns, "reason", "last_epoch", "trial_time_s", "model_dir", "model_file"]))
    head = [{**r, "reason": None, "last_epoch": None, "model_file": _reference_file(exp, r["trial_id"])}
            for r in object_frame([], ref, list(ref.columns)).to_dict("records")]
    df = _finalize(object_frame(head, kept, columns, extra))
    df["last_epoch"] = df["last_epoch"].astype("Int64")
    for c in ("model_dir", "model_file", "reason"):
        if c in df.columns:
            df[c] = df[c].astype("string")
    df.insert(3, "method", method_labels(df))
    return _order_columns(
        df,
        ["trial_id", "status", "reason", "method", "epoch", "last_epoch"],
        config_cols,
        ["trial_time_s", "model_dir", "model_file"],
    )


def _reference_file(exp: Experiment, trial_id: Any) -> str | None:
    """``dense/model.pt2`` or ``dense/model-int8.onnx`` when the file is there."""
    name = DENSE_INT8_MODEL_FILE if trial_id == REFERENCE_INT8_ID else MODEL_FILE
    return f"{DENSE_DIR}/{name}" if (Layout(exp.path).dense / name).is_file() else None


def method_labels(df: pd.DataFrame) -> pd.Series:
    """``criterion+granularity+schedule`` of every row ("dense" for the reference)."""
    parts = [c for c in ("criterion", "granularity", "schedule") if c in df.columns]
    columns = [df[c].to_numpy(dtype=object) for c in parts]
    status = df["status"].to_numpy(dtype=object) if "status" in df.columns else [None] * len(df)

    tids = df["trial_id"].to_numpy(dtype=object) if "trial_id" in df.columns else [REFERENCE_ID] * len(df)

    def label(st: Any, tid: Any, vals: tuple[Any, ...]) -> Any:
        if st is not None and st is not pd.NA and st == REFERENCE_STATUS:
            return str(tid)  # dense, dense-int8
        return None if not vals or any(is_missing(v) for v in vals) else "+".join(str(v) for v in vals)

    rows = zip(*columns) if columns else (() for _ in range(len(df)))
    return pd.Series([label(st, tid, vals) for st, tid, vals in zip(status, tids, rows)], index=df.index,
                     dtype="string")


def default_reference(dense: dict[str, Any] | None, cost: str) -> tuple[float, float]:
    """The default hypervolume reference: accuracy 0 and the dense model's cost."""
    if dense is None:
        raise ValueError(
            f"no hypervolume reference for {cost!r}: the dense baseline ({DENSE_DIR}/{METRICS_FILE}) "
            f"is not written yet; build the report once it is, or pass reference={{{cost!r}: value}}"
        )
    value = dense.get(cost)
    if not _is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(
            f"no hypervolume reference for {cost!r}: {DENSE_DIR}/{METRICS_FILE} has {cost!r} = {value!r}, "
            f"not a positive number; pass reference={{{cost!r}: value}}"
        )
    return (0.0, float(value))


def _points(df: pd.DataFrame, cost: str) -> tuple[np.ndarray, np.ndarray]:
    acc = df[SELECTION_METRIC].to_numpy(dtype=float, na_value=np.nan) if SELECTION_METRIC in df else np.full(len(df), np.nan)
    cst = df[cost].to_numpy(dtype=float, na_value=np.nan) if cost in df else np.full(len(df), np.nan)
    ok = np.isfinite(acc) & np.isfinite(cst)
    return np.column_stack([acc, cst]), ok


def _one_front(
    front: str, cost: str, trials: pd.DataFrame, ref_rows: pd.DataFrame, ref_point: tuple[float, float]
) -> tuple[pd.DataFrame, pd.DataFrame, FrontSummary]:
    """The rows of one front (reference row, trials) and its summary."""
    n = len(trials)
    pts, ok = _points(trials, cost)
    dense_pts, dense_ok = _points(ref_rows, cost)
    dense = dense_pts[dense_ok]  # every reference (dense, dense-int8) competes when its figures are known
    ref_ids = [str(t) for t in ref_rows["trial_id"].to_numpy(dtype=object)[dense_ok]]
    rank = np.full(n, np.nan)
    rank_trials = np.full(n, np.nan)
    dominated = np.zeros(n, dtype=bool)
    dominated_by = np.full(n, None, dtype=object)
    ref_rank = np.full(len(ref_rows), np.nan)
    contrib = np.full(n, np.nan)
    knee = np.zeros(n, dtype=bool)
    hv, knee_id = 0.0, None
    idx = np.flatnonzero(ok)
    if len(idx):
        sub = pts[idx]
        rank_trials[idx] = pareto.nondominated_sort(sub, DIRECTIONS)
        with_dense = pareto.nondominated_sort(np.vstack([sub, dense]), DIRECTIONS)
        rank[idx] = with_dense[: len(sub)]
        if len(dense):
            ref_rank[np.flatnonzero(dense_ok)] = with_dense[len(sub):]
            for rid, point in zip(ref_ids, dense):
                beaten = pareto.dominates(point, sub, DIRECTIONS) & ~dominated[idx]
                dominated_by[idx[beaten]] = rid  # the first reference that dominates it
                dominated[idx] |= beaten
        contrib[idx] = pareto.hv_contributions(sub, ref_point, DIRECTIONS)
        hv = pareto.hypervolume_2d(sub, ref_point, DIRECTIONS)
        k = pareto.knee_among(sub, dense, DIRECTIONS)
        if k is not None:
            knee[idx[k]] = True
            knee_id = str(trials.iloc[idx[k]]["trial_id"])
    part = trials.assign(
        front=front,
        pareto_rank=pd.array([pd.NA if math.isnan(r) else int(r) for r in rank], dtype="Int64"),
        rank_among_trials=pd.array([pd.NA if math.isnan(r) else int(r) for r in rank_trials], dtype="Int64"),
        dominated_by_dense=dominated,
        dominated_by=pd.array(dominated_by, dtype="string"),
        hv_contribution=contrib,
        is_knee=knee,
    )
    part = part.sort_values(["pareto_rank", cost, "trial_id"], kind="stable", na_position="last")
    ref_part = ref_rows.assign(
        front=front,
        pareto_rank=pd.array([pd.NA if math.isnan(r) else int(r) for r in ref_rank], dtype="Int64"),
        rank_among_trials=pd.array([pd.NA] * len(ref_rows), dtype="Int64"),
        dominated_by_dense=False,
        dominated_by=pd.array([None] * len(ref_rows), dtype="string"),
        hv_contribution=np.nan,
        is_knee=False,
    )
    box = (1.0 - ref_point[0]) * ref_point[1]
    summary = FrontSummary(
        front=front, cost=cost, reference=ref_point, hypervolume=hv,
        hypervolume_normalized=hv / box if box > 0 else float("nan"),
        n_trials=int(ok.sum()), n_front=int(np.nansum(rank == 1)),
        n_dominated_by_dense=int(dominated.sum()), knee=knee_id,
    )
    return ref_part, part, summary


def fronts_table(
    final: pd.DataFrame,
    dense: dict[str, Any] | None,
    reference: dict[str, float] | None = None,
    reference_accuracy: float = 0.0,
    fronts: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, dict[str, FrontSummary]]:
    """Pareto ranks (the dense model competing), contributions and knees for each front.

    Args:
        final: The :func:`final_table` (its reference row, if any, is each front's
            reference row and competes as a point).
        dense: Dense baseline metrics; supplies the default reference costs.
        reference: Optional ``{cost_column: reference_cost}`` overriding the dense
            model's cost for some fronts.
        reference_accuracy: Accuracy of the hypervolume reference point (0 by default).
        fronts: ``{front name: cost column}`` (default :data:`DEFAULT_FRONTS`).

    Returns:
        ``(fronts, summaries)``: the long table (column ``front`` names the front;
        ``pareto_rank`` is null for trials with a non-finite accuracy or cost) and a
        :class:`FrontSummary` per front.
    """
    fronts = dict(DEFAULT_FRONTS if fronts is None else fronts)
    reference = dict(reference or {})
    unknown = set(reference) - set(fronts.values())
    if unknown:
        raise ValueError(
            f"unknown reference cost {sorted(unknown)[0]!r}; valid choices: " + ", ".join(fronts.values())
        )
    ref_rows = final[final["status"] == REFERENCE_STATUS]
    trials = final[final["status"].isin(FINISHED_STATUSES)].reset_index(drop=True)
    parts = []
    summaries: dict[str, FrontSummary] = {}
    for front, cost in fronts.items():
        ref_cost = reference[cost] if cost in reference else default_reference(dense, cost)[1]
        ref_part, part, summary = _one_front(front, cost, trials, ref_rows, (float(reference_accuracy), float(ref_cost)))
        parts.extend([ref_part, part])
        summaries[front] = summary
    table = pd.concat(parts, ignore_index=True) if parts else final.iloc[0:0]
    table["front"] = table["front"].astype("string")
    for c in ("is_knee", "dominated_by_dense"):
        table[c] = table[c].astype(bool)
    for c in ("pareto_rank", "rank_among_trials"):
        table[c] = table[c].astype("Int64")
    head = ["front", "trial_id", "status", "pareto_rank", "rank_among_trials", "dominated_by_dense",
            "dominated_by", "hv_contribution", "is_knee"]
    rest = [c for c in table.columns if c not in head]
    return table[head + rest].reset_index(drop=True), summaries


def build_tables(
    exp: Experiment,
    reference: dict[str, float] | None = None,
    reference_accuracy: float = 0.0,
) -> ReportTables:
    """All the tables of an experiment (nothing is written)."""
    from reports.methods import methods_table

    trials = trials_table(exp)
    final = final_table(exp, trials)
    costs = fronts_for(exp.config)
    fronts, summaries = fronts_table(final, exp.dense, reference, reference_accuracy, costs)
    return ReportTables(
        trials=trials,
        final=final,
        fronts=fronts,
        summaries=summaries,
        methods=methods_table(final, costs),
        front_costs=costs,
        config=exp.config,
        versions=exp.versions,
        dense=exp.dense,
        experiment=exp.info,
        trial_counts=ledger_counts(exp.trials).to_dict(),
    )
