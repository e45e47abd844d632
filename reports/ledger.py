"""Read an experiment directory (docs/design.md section 4) without Ray or the orchestrator.

Every reading rule (torn last lines, trial status and retries, re-reported epochs) is
``reports.contract``'s; this module turns the ledger into DataFrames for the tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from reports.contract import (
    LEDGER_FILE,
    METRIC_KEYS,
    UNIT_INTERVAL_METRICS,
    LedgerError,
    TrialState,
    check_metrics,
    flatten_config,
    read_events,
    trial_states,
)
from reports.layout import EXPERIMENT_FILE, Layout, model_dir_name

# Columns the reports add themselves; a config key by one of these names would be
# ambiguous, so it is rejected like a config key that shadows a metric.
RESERVED_COLUMNS = frozenset(
    {
        "type",
        "trial_id",
        "status",
        "reason",
        "epoch",
        "last_epoch",
        "trial_time_s",
        "model_dir",
        "model_file",
        "method",
        "front",
        "pareto_rank",
        "rank_among_trials",
        "dominated_by_dense",
        "dominated_by",
        "hv_contribution",
        "is_knee",
        "time_total_s",
    }
)


@dataclass(frozen=True)
class Experiment:
    """Everything the reports need from an experiment directory.

    Attributes:
        path: The experiment directory.
        info: The parsed ``experiment.json`` (empty when the file is missing).
        dense: The dense baseline's metrics (``dense/metrics.json``), or None.
        trials: ``trial_id -> TrialState`` (``reports.contract`` rules).
        results: One row per kept result line: ``trial_id``, ``epoch``, the config
            columns, the metrics, ``time_total_s``; plus ``_seq`` (line number). Object
            columns, a key a line lacks is missing (NaN).
        config_columns: Names of the columns that came from result configs.
        model_dirs: ``trial_id -> "models/<trial_id>"`` for saved models present.
        ledger_bytes: Size of the ledger when it was read (it only grows, so a larger
            size means a later state of the experiment).
        dense_int8: The dense model in int8 (``dense/metrics-int8.json``), or None.
    """

    path: Path
    info: dict[str, Any]
    dense: dict[str, Any] | None
    trials: dict[str, TrialState]
    results: pd.DataFrame
    config_columns: tuple[str, ...]
    model_dirs: dict[str, str] = field(default_factory=dict)
    ledger_bytes: int = 0
    dense_int8: dict[str, Any] | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The experiment's validated config, as written to ``experiment.json``."""
        cfg = self.info.get("config", {})
        return cfg if isinstance(cfg, dict) else {}

    @property
    def versions(self) -> dict[str, Any]:
        """Package versions the experiment ran with."""
        ver = self.info.get("versions", {})
        return ver if isinstance(ver, dict) else {}


def is_experiment_dir(path: str | Path) -> bool:
    """True when ``path`` holds an ``experiment.json`` or a ``results.jsonl``."""
    p = Path(path)
    return Layout(p).is_experiment()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise LedgerError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise LedgerError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise LedgerError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer too long to convert
        raise LedgerError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LedgerError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_dense(path: str | Path, *, int8: bool = False) -> dict[str, Any] | None:
    """``dense/metrics.json`` (``int8``: ``dense/metrics-int8.json``) of an experiment
    directory, range-checked; None if absent.

    Raises:
        LedgerError: the file is damaged or a metric is out of range (file and key named).
    """
    dense_path = Layout(path).dense_int8_metrics if int8 else Layout(path).dense_metrics
    if not dense_path.is_file():
        return None
    dense = _read_json(dense_path)
    check_metrics(str(dense_path), dense)
    return dense


def check_experiment_dir(path: str | Path) -> None:
    """Everything a resume or a report reads from an experiment directory parses and is in
    range: ``experiment.json``, ``dense/metrics.json``, every ledger line (torn tail per
    ``reports.contract.torn_tail``). Cheap; call it before starting anything.

    Raises:
        LedgerError: the first damaged file, line or value, named.
    """
    read_experiment(path)


#: Columns every reader of a report table relies on.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "trials": ("trial_id", "status", "epoch"),
    "final": ("trial_id", "status", "epoch", "model_dir", "val_accuracy"),
    "fronts": ("front", "trial_id", "status", "pareto_rank", "val_accuracy"),
    "methods": ("cost", "method"),
}


def check_frame(path: str | Path, table: str, df: pd.DataFrame) -> None:
    """A report table read from Parquet has the columns readers use and in-range metrics.

    Raises:
        LedgerError: naming the file, the row (1-based) and the column.
    """
    missing = [c for c in REQUIRED_COLUMNS.get(table, ()) if c not in df.columns]
    if missing:
        raise LedgerError(f"{path}: not a Prunefront {table} table (no column {missing[0]!r})")
    for key in METRIC_KEYS:
        if key not in df.columns:
            continue
        col = df[key]
        values = pd.to_numeric(col, errors="coerce").astype(float)
        if key in UNIT_INTERVAL_METRICS:
            ok = (values >= 0) & (values <= 1)
        else:
            ok = (values >= 0) & (values < math.inf)
        bad = (col.notna() & ~ok).to_numpy()
        if bad.any():
            i = int(bad.argmax())
            value = col.iloc[i].item() if hasattr(col.iloc[i], "item") else col.iloc[i]
            want = "a number in [0, 1]" if key in UNIT_INTERVAL_METRICS else "a finite number >= 0"
            raise LedgerError(f"{path}: row {i + 1}: {key!r} is {value!r}; expected {want}")


def _result_record(where: str, row: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    record = {k: v for k, v in row.items() if k not in ("type", "config")}
    record["trial_id"] = str(record["trial_id"])
    for key in config:
        if key in record or key in RESERVED_COLUMNS or key in METRIC_KEYS:
            raise LedgerError(
                f"{where}: config key {key!r} collides with a metric or report column; "
                "config keys must differ from the metric keys of docs/design.md section 3"
            )
    record.update(config)
    return record


def read_experiment(path: str | Path) -> Experiment:
    """Read an experiment directory, finished or still running.

    Raises:
        ValueError: ``path`` is not an experiment directory, or a file in it is
            malformed (the message names the file and line).
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root}: no such directory")
    if not is_experiment_dir(root):
        raise ValueError(
            f"{root} is not an experiment directory (it has neither {EXPERIMENT_FILE} "
            f"nor {LEDGER_FILE})"
        )
    layout = Layout(root)
    info = _read_json(layout.experiment) if layout.experiment.is_file() else {}
    dense = read_dense(root)

    ledger = layout.ledger
    size = ledger.stat().st_size if ledger.is_file() else 0  # before reading: never more than was read
    states = trial_states(read_events(ledger), where=str(ledger))
    records: list[dict[str, Any]] = []
    config_keys: dict[str, None] = {}
    for st in states.values():
        last_raw: Any = None
        config: dict[str, Any] = {}
        for row in st.rows():
            raw = row.get("config")
            if raw is not last_raw and raw != last_raw:  # a trial's lines repeat its config
                config = flatten_config(raw) if isinstance(raw, dict) else {}
                config_keys.update(dict.fromkeys(config))
                last_raw = raw
            records.append(_result_record(f"{ledger}:{row['_seq']}", row, config))
    records.sort(key=lambda r: r["_seq"])
    # Object columns keep JSON's ints as ints (a key missing from a line is NaN there).
    results = pd.DataFrame(records, dtype=object) if records else records_frame([], ["trial_id", "epoch", "_seq"])
    model_dirs = {t: model_dir_name(t) for t in sorted(states) if layout.model_dir(t).is_dir()}
    return Experiment(
        path=root, info=info, dense=dense, trials=states, results=results,
        config_columns=tuple(config_keys), model_dirs=model_dirs, ledger_bytes=size,
        dense_int8=read_dense(root, int8=True),
    )


def records_frame(records: list[dict[str, Any]], columns: list[str] | None = None) -> pd.DataFrame:
    """A DataFrame of object columns from dict records, keys missing from a record
    becoming None. Unlike ``pd.DataFrame.from_records`` this never turns an int
    column with gaps into floats; ``reports.tables.normalize_column`` types it later.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for r in records for k in r))
    return pd.DataFrame(
        {c: pd.Series([r.get(c) for r in records], dtype=object) for c in columns},
        columns=columns,
    )


def object_frame(head: list[dict[str, Any]], body: pd.DataFrame, columns: list[str],
                  extra: Mapping[str, list[Any]] | None = None) -> pd.DataFrame:
    """``records_frame(head + body's rows, columns)`` without turning each row into a dict:
    object columns, None where a record lacks a key. ``extra`` gives whole columns for
    the body's rows (the head's are None)."""
    extra = extra or {}
    n = len(body)
    data = {}
    for c in columns:
        top = objects([r.get(c) for r in head])
        if c in extra:
            rest = objects(extra[c])
        elif c in body.columns:
            rest = body[c].to_numpy(dtype=object)
        else:
            rest = np.full(n, None, dtype=object)
        data[c] = pd.Series(np.concatenate([top, rest]), dtype=object)
    return pd.DataFrame(data, columns=columns)


def objects(values: list[Any]) -> np.ndarray:
    """A 1-D object array of ``values`` (lists stay elements, unlike ``np.array``)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def is_missing(value: Any) -> bool:
    """True for None and float NaN (pandas' missing markers included)."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def normalize_column(values: pd.Series) -> pd.Series:
    """Give a column of JSON-born values one Parquet-friendly dtype.

    bool -> ``boolean``; int -> ``Int64``; int and float -> ``float64``; str ->
    ``string``; anything else (lists, dicts, mixed kinds) -> JSON text. Missing
    values stay missing.
    """
    fast = _normalize_fast(values)
    if fast is not None:
        return fast
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


def _normalize_fast(values: pd.Series) -> pd.Series | None:
    """:func:`normalize_column` for the common columns of one plain kind, without a Python
    loop; None for anything else (the general path decides). ``infer_dtype`` names the
    kinds of the present values (None and NaN skipped, as :func:`reports.ledger.is_missing`
    skips them); a kind it reports as "integer" or "boolean" holds nothing else."""
    if values.dtype != object:
        return None
    kind = pd.api.types.infer_dtype(values, skipna=True)
    try:
        if kind == "empty" and values.map(is_missing, na_action=None).all():
            return pd.Series([np.nan] * len(values), index=values.index, dtype="float64")
        if kind == "boolean":
            return values.astype("boolean")
        if kind == "integer":
            return values.astype("Int64")
        if kind in ("floating", "mixed-integer-float"):
            return values.astype("float64")
        if kind == "string":
            return values.astype("string")
    except (TypeError, ValueError, OverflowError):
        return None
    return None
