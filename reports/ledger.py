"""Read an experiment directory (docs/design.md section 4) without Ray.

The orchestrator appends one JSON object per line to ``results.jsonl``:

* ``{"type": "result", "trial_id", <metrics>, "config": {...}, "time_total_s"}``
* ``{"type": "status", "trial_id", "status", "reason", "config": {...}}``

Rules applied here, so every reader of the ledger agrees:

* Lines are events in the order they happened. On resume a trial may report an
  epoch again: the last line for a ``(trial_id, epoch)`` wins.
* A trial's status is its last status line if no result line follows it;
  otherwise (no status line, or results after it, as when an errored trial is
  retried) the trial is ``running``.
* A final line without its newline is a write in progress and is skipped; any
  other line that is not valid JSON is an error.
* Lines of an unknown ``type`` are ignored, so the orchestrator can add events.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.config import METRIC_KEYS

# Metric keys of docs/design.md section 3, in the order reports lay them out: the
# orchestrator's list (the writer's), so the two sides cannot drift apart.
METRIC_COLUMNS: tuple[str, ...] = METRIC_KEYS
# The orchestrator's flat config keys of section 3, laid out first in this order.
CONFIG_ORDER = (
    "criterion",
    "granularity",
    "scope",
    "threshold_rule",
    "amount",
    "schedule",
    "lr",
    "epochs",
)
FINISHED_STATUSES = ("completed", "stopped", "errored")
RUNNING = "running"
REFERENCE_ID = "dense"
REFERENCE_STATUS = "reference"

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
        "front",
        "pareto_rank",
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
        results: One row per kept result line: ``trial_id``, ``epoch``, the config
            columns, the metrics, ``time_total_s``; plus ``_seq`` (line number).
        statuses: The last status line per trial: ``trial_id``, ``status``,
            ``reason``, ``_seq``.
        config_columns: Names of the columns that came from result configs.
        model_dirs: ``trial_id -> "models/<trial_id>"`` for saved models present.
    """

    path: Path
    info: dict[str, Any]
    dense: dict[str, Any] | None
    results: pd.DataFrame
    statuses: pd.DataFrame
    config_columns: tuple[str, ...]
    model_dirs: dict[str, str] = field(default_factory=dict)

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
    return (p / "experiment.json").is_file() or (p / "results.jsonl").is_file()


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys (already-flat keys pass through)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _events(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Parsed ledger lines as ``(line_number, object)``, skipping a torn last line."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    events = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            # The last line without a trailing newline is still being written.
            if i == len(lines) - 1:
                continue
            raise ValueError(f"{path}:{i + 1}: not valid JSON") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{i + 1}: expected a JSON object per line")
        events.append((i + 1, obj))
    return events


def _result_record(path: Path, lineno: int, obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    where = f"{path}:{lineno}"
    if "trial_id" not in obj:
        raise ValueError(f"{where}: result line without 'trial_id'")
    epoch = obj.get("epoch")
    if isinstance(epoch, float) and epoch.is_integer():
        epoch = int(epoch)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise ValueError(f"{where}: result line needs a 1-based integer 'epoch', got {epoch!r}")
    config = obj.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"{where}: 'config' must be a JSON object")
    config = flatten_config(config)
    record = {k: v for k, v in obj.items() if k not in ("type", "config")}
    record["trial_id"] = str(record["trial_id"])
    record["epoch"] = epoch
    for key in config:
        if key in record or key in RESERVED_COLUMNS or key in METRIC_COLUMNS:
            raise ValueError(
                f"{where}: config key {key!r} collides with a metric or report column; "
                "config keys must differ from the metric keys of docs/design.md section 3"
            )
    record.update(config)
    record["_seq"] = lineno
    return record, list(config)


def _status_record(path: Path, lineno: int, obj: dict[str, Any]) -> dict[str, Any]:
    where = f"{path}:{lineno}"
    if "trial_id" not in obj:
        raise ValueError(f"{where}: status line without 'trial_id'")
    status = obj.get("status")
    if status not in FINISHED_STATUSES:
        raise ValueError(
            f"{where}: unknown status {status!r}; valid choices: {', '.join(FINISHED_STATUSES)}"
        )
    reason = obj.get("reason")
    return {
        "trial_id": str(obj["trial_id"]),
        "status": status,
        "reason": None if reason is None else str(reason),
        "_seq": lineno,
    }


def read_experiment(path: str | Path) -> Experiment:
    """Read an experiment directory, finished or still running.

    Args:
        path: Directory laid out as in docs/design.md section 4.

    Returns:
        The parsed :class:`Experiment`.

    Raises:
        ValueError: ``path`` is not an experiment directory, or a file in it is
            malformed (the message names the file and line).
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root}: no such directory")
    if not is_experiment_dir(root):
        raise ValueError(
            f"{root} is not an experiment directory (it has neither experiment.json "
            "nor results.jsonl)"
        )
    info = _read_json(root / "experiment.json") if (root / "experiment.json").is_file() else {}
    dense_path = root / "dense" / "metrics.json"
    dense = _read_json(dense_path) if dense_path.is_file() else None

    ledger = root / "results.jsonl"
    results: dict[tuple[str, int], dict[str, Any]] = {}
    statuses: dict[str, dict[str, Any]] = {}
    config_keys: dict[str, None] = {}
    for lineno, obj in _events(ledger):
        kind = obj.get("type")
        if kind == "result":
            record, keys = _result_record(ledger, lineno, obj)
            # Re-reported epochs (resume) replace the earlier line; dict order then
            # follows the last report, which keeps _seq meaningful.
            results.pop((record["trial_id"], record["epoch"]), None)
            results[(record["trial_id"], record["epoch"])] = record
            config_keys.update(dict.fromkeys(keys))
        elif kind == "status":
            record = _status_record(ledger, lineno, obj)
            statuses[record["trial_id"]] = record

    results_df = records_frame(list(results.values()))
    if results_df.empty:
        results_df = records_frame([], ["trial_id", "epoch", "_seq"])
    statuses_df = records_frame(list(statuses.values()), ["trial_id", "status", "reason", "_seq"])
    trial_ids = set(results_df["trial_id"]) | set(statuses_df["trial_id"])
    model_dirs = {
        t: f"models/{t}" for t in sorted(trial_ids) if (root / "models" / t).is_dir()
    }
    return Experiment(
        path=root,
        info=info,
        dense=dense,
        results=results_df,
        statuses=statuses_df,
        config_columns=tuple(config_keys),
        model_dirs=model_dirs,
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


def is_missing(value: Any) -> bool:
    """True for None and float NaN (pandas' missing markers included)."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)
