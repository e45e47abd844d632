"""The result contract: what a result row is and how the ledger is read. One rule each.

``orchestrator/`` writes ``results.jsonl`` (and decides, inside each trial, which epoch's
model to keep); ``reports/`` reads it. Both import the rules from here, so they cannot
drift apart; this module imports neither of them, nor pandas or Ray (a Train worker
imports it for :class:`KeptEpoch`).

* **Keys.** :data:`METRIC_KEYS` (what every epoch measures), :data:`TEST_KEYS` (the test
  split: reported, never used for a decision), :data:`EXTRA_KEYS` (bookkeeping a row may
  carry). A row's config keys come in the order the search declared them
  (``orchestrator.space.TrialSettings``); no list here repeats them.
* **Events.** The ledger is one JSON object per line, in the order things happened:
  ``{"type": "result", "trial_id", "epoch", <metrics>, "config": {...}, "time_total_s"}`` and
  ``{"type": "status", "trial_id", "status", "reason", "config": {...}}``.
  :func:`torn_tail` is the one rule for the last line, used by every reader and by the
  writer: a last line without its newline that is a whole JSON object is an event (an
  editor dropped the newline, or the disk filled at the last byte; the writer completes it
  with a newline), anything else there is a write in progress (readers skip it, the writer
  cuts it). Any other line that is not a JSON object is an error (:class:`LedgerError`).
* **Ranges** (:func:`check_metrics`): accuracies and sparsities lie in [0, 1], every other
  metric is >= 0, all finite (None: not measured); a value outside is refused, naming file,
  line and key, so a percentage or a negative cost never reaches a front.
* **Trial status** (:func:`trial_states`): a trial's status is its last status line,
  unless a result line follows it (the trial was retried), or it has no status line: then
  it is ``running``. On resume an epoch may be reported again: the last line wins. A result
  line equal to the one already recorded for its epoch is the same event twice (a copied
  line; the writer never repeats an epoch), not a retry.
* **Kept epoch** (:class:`KeptEpoch`, :func:`kept_epoch`): the epoch whose model a trial
  keeps and reports is the best *validation* accuracy among the trailing run of epochs at
  its final achieved sparsity (ties to the earliest). The trial applies it incrementally
  (it saves the model when :meth:`KeptEpoch.observe` says so) and the reports apply the
  same class to the recorded rows, so the kept row and the saved model always agree.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reports.layout import LEDGER_FILE

__all__ = [
    "COST_METRICS",
    "DECISION_METRICS",
    "EXTRA_KEYS",
    "FINISHED_STATUSES",
    "INTEGER_METRICS",
    "LEDGER_FILE",
    "METRIC_KEYS",
    "REFERENCE_ID",
    "REFERENCE_INT8_ID",
    "REFERENCE_STATUS",
    "RUNNING",
    "SPARSITY_ATOL",
    "TEST_KEYS",
    "KeptEpoch",
    "LedgerError",
    "TRIAL_COUNT_STATES",
    "TrialCounts",
    "TrialState",
    "ledger_counts",
    "trial_counts",
    "TrialCounter",
    "flatten_config",
    "kept_epoch",
    "SELECTION_METRIC",
    "read_events",
    "torn_tail",
    "check_metrics",
    "trial_states",
]

try:  # optional (extra "fast"): parses a long ledger about twice as fast
    from orjson import JSONDecodeError as _FastError
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads, _FastError = None, ValueError


def _loads(line: str) -> Any:
    """``json.loads``; through orjson when it is installed and accepts the line (it
    rejects what json takes beyond the standard, NaN or huge integers: json decides)."""
    if _fast_loads is not None:
        try:
            return _fast_loads(line)
        except _FastError:
            pass
    return json.loads(line)

#: Metric keys every epoch row carries (docs/design.md section 3), in report order.
#: ``val_*`` is the validation split carved from the training data: every decision (rungs,
#: the kept epoch, accuracy targets, fronts, knee, ``reports pick``) uses it. ``test_*`` is the
#: held-out test split, evaluated for the dense model and each kept model only.
METRIC_KEYS: tuple[str, ...] = (
    "val_accuracy",
    "val_loss",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "sparsity",
    "requested_sparsity",
    "flops",
    "flops_sparse",
    "params",
    "params_nonzero",
    "size_bytes",
    "latency_ms",
    "latency_iqr_ms",
    "dense_latency_ms",
    "speedup",
)
#: The test split: reported beside the validation figures, never a decision's input.
TEST_KEYS: tuple[str, ...] = ("test_accuracy", "test_loss")
#: Metrics a scheduler, an objective or a selection may use.
DECISION_METRICS: tuple[str, ...] = tuple(k for k in METRIC_KEYS if k not in TEST_KEYS)
#: The accuracy every choice is made on: kept epoch, fronts, knee, ``reports pick``.
SELECTION_METRIC = "val_accuracy"
#: Metrics a front can use as its cost (all minimised).
COST_METRICS: tuple[str, ...] = ("flops", "flops_sparse", "params", "params_nonzero", "size_bytes", "latency_ms")
#: Counts: integers in every table.
INTEGER_METRICS = frozenset({"params", "params_nonzero", "size_bytes"})
#: Other keys a result row may carry (kept in the ledger and the tables).
EXTRA_KEYS: tuple[str, ...] = (
    "kept",
    "step",
    "units_pruned",
    "pruning_stopped",
    "startup_s",
    "dense_wait_s",
    "latency_runtime",
    "latency_threads",
    "float_val_accuracy",
    "float_val_loss",
    "int8_layers",
    "float_layers",
    "node_id",
    "host",
    "device",
)

FINISHED_STATUSES: tuple[str, ...] = ("completed", "stopped", "errored")
RUNNING = "running"
REFERENCE_ID = "dense"
#: The dense model in int8: a second reference row, competing on every front like ``dense``.
REFERENCE_INT8_ID = "dense-int8"
REFERENCE_STATUS = "reference"
#: Epochs whose achieved sparsity is within this of another count as the same sparsity
#: (a ratio of integer counts: real changes between pruning steps are far larger).
SPARSITY_ATOL = 1e-6
#: Metrics that are fractions; every other metric is a loss, count, cost or ratio (>= 0).
UNIT_INTERVAL_METRICS = frozenset({"val_accuracy", "test_accuracy", "sparsity", "requested_sparsity"})

class LedgerError(ValueError):
    """The ledger (or a file beside it) is malformed; the message names file and line."""


def torn_tail(data: bytes) -> tuple[int, bool]:
    """The ledger's one torn-line rule, shared by every reader and the writer.

    Returns ``(end, complete)``: ``data[:end]`` is every newline-terminated line; the bytes
    after ``end`` are the last line, unterminated. ``complete`` says that line is a whole
    JSON object: an event that lost only its newline (readers keep it; the writer appends
    the newline). Otherwise it is a write in progress (readers skip it; the writer cuts it).
    """
    end = data.rfind(b"\n") + 1
    tail = data[end:]
    if not tail.strip():
        return end, False
    try:
        return end, isinstance(json.loads(tail.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return end, False


def _parse_line(where: str, raw: bytes) -> dict[str, Any]:
    try:
        obj = _loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise LedgerError(f"{where}: not UTF-8 text; the ledger is damaged at this line") from None
    except RecursionError:
        raise LedgerError(f"{where}: JSON nested too deeply; the ledger is damaged at this line") from None
    except ValueError:  # JSONDecodeError, or an integer too long to convert
        raise LedgerError(f"{where}: not valid JSON; the ledger is damaged at this line") from None
    if not isinstance(obj, dict):
        raise LedgerError(f"{where}: expected a JSON object per line")
    return obj


def read_events(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """The ledger's events in order, as ``(line number, object)``.

    The last line follows :func:`torn_tail`; a missing file has no events.

    Raises:
        LedgerError: a line (other than a torn last one) is not a UTF-8 JSON object, or the
            file cannot be read; the message names file and line.
    """
    p = Path(path)
    if not p.is_file():
        return []
    try:
        data = p.read_bytes()
    except OSError as e:
        raise LedgerError(f"{p}: cannot read the ledger ({e.strerror or e})") from None
    end, complete = torn_tail(data)
    body = data if complete else data[:end]
    events = []
    for i, raw in enumerate(body.split(b"\n")):
        if raw.strip():
            events.append((i + 1, _parse_line(f"{p}:{i + 1}", raw)))
    return events


def check_metrics(where: str, row: Mapping[str, Any]) -> None:
    """Refuse a metric outside its range (module docstring); None (not measured) passes.

    Raises:
        LedgerError: naming ``where`` (file and line) and the key.
    """
    for key in METRIC_KEYS:
        value = row.get(key)
        if value is None:
            continue
        unit = key in UNIT_INTERVAL_METRICS
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (0 <= value <= 1 if unit else value >= 0)
        if not ok:
            want = "a number in [0, 1]" if unit else "a finite number >= 0"
            raise LedgerError(f"{where}: {key!r} is {value!r}; expected {want}")


_FLAT = frozenset({str, int, float, bool, type(None), list})


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys (already-flat keys pass through)."""
    if not prefix and all(type(k) is str and type(v) in _FLAT for k, v in config.items()):
        return dict(config)  # the usual case, a flat config: nothing to rename
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _epoch_of(where: str, obj: Mapping[str, Any]) -> int:
    epoch = obj.get("epoch")
    if isinstance(epoch, float) and epoch.is_integer():
        epoch = int(epoch)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise LedgerError(f"{where}: result line needs a 1-based integer 'epoch', got {epoch!r}")
    return epoch


@dataclass
class TrialState:
    """What the ledger says about one trial.

    Attributes:
        trial_id: The trial.
        status: ``running`` or one of :data:`FINISHED_STATUSES`.
        reason: Why it ended (None while running).
        results: ``epoch -> result event`` (the last line for each epoch), with ``_seq``
            (the line number) added.
        config: The flat config of its latest event.
    """

    trial_id: str
    status: str = RUNNING
    reason: str | None = None
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    _status_seq: int = -1
    _result_seq: int = -1

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def rows(self) -> list[dict[str, Any]]:
        """Result events by epoch."""
        return [self.results[e] for e in sorted(self.results)]

    @property
    def last_result(self) -> dict[str, Any] | None:
        """The result line written last (what a resumed trial replays)."""
        if not self.results:
            return None
        return max(self.results.values(), key=lambda r: r["_seq"])


def trial_states(events: Iterable[tuple[int, Mapping[str, Any]]], where: str = LEDGER_FILE) -> dict[str, TrialState]:
    """Every trial the events mention, with its status and results (module docstring rules).

    Raises:
        LedgerError: a result or status line without what it needs.
    """
    states: dict[str, TrialState] = {}
    for seq, ev in events:
        kind = ev.get("type")
        if kind not in ("result", "status"):
            continue  # other event types are for other readers
        loc = f"{where}:{seq}"
        if "trial_id" not in ev:
            raise LedgerError(f"{loc}: {kind} line without 'trial_id'")
        tid = str(ev["trial_id"])
        st = states.setdefault(tid, TrialState(tid))
        config = ev.get("config") or {}
        if not isinstance(config, Mapping):
            raise LedgerError(f"{loc}: 'config' must be a JSON object")
        if config:
            st.config = flatten_config(config)
        if kind == "result":
            epoch = _epoch_of(loc, ev)
            check_metrics(loc, ev)
            row = {**ev, "epoch": epoch}
            prev = st.results.get(epoch)
            if prev is not None and {k: v for k, v in prev.items() if k != "_seq"} == row:
                continue  # the same event twice (a copied line), not a retry
            st.results[epoch] = {**row, "_seq": seq}
            st._result_seq = seq
        else:
            status = ev.get("status")
            if status not in FINISHED_STATUSES:
                raise LedgerError(f"{loc}: unknown status {status!r}; valid choices: {', '.join(FINISHED_STATUSES)}")
            st._status_seq = seq
            st.status, st.reason = status, (None if ev.get("reason") is None else str(ev["reason"]))
    for st in states.values():
        if st._result_seq > st._status_seq:  # no status line, or results after it: retried
            st.status, st.reason = RUNNING, None
    return states


@dataclass(frozen=True)
class TrialCounts:
    """How many trials are in each state: every reader's count (:func:`trial_counts`).

    ``pending`` is the planned trials the ledger and Tune have not started (0 when the
    plan is unknown).
    """

    completed: int = 0
    stopped: int = 0
    errored: int = 0
    running: int = 0
    pending: int = 0

    @property
    def finished(self) -> int:
        return self.completed + self.stopped + self.errored

    @property
    def total(self) -> int:
        return self.finished + self.running + self.pending

    def to_dict(self) -> dict[str, int]:
        return {s: getattr(self, s) for s in TRIAL_COUNT_STATES}

    def describe(self) -> str:
        """``9 trials: 7 completed, 1 stopped, 1 errored`` (states with none left out)."""
        parts = [f"{n} {s}" for s, n in self.to_dict().items() if n]
        return f"{self.total} trial{'s' if self.total != 1 else ''}" + (": " + ", ".join(parts) if parts else "")


#: The states :class:`TrialCounts` counts, in order.
TRIAL_COUNT_STATES = ("completed", "stopped", "errored", "running", "pending")


def trial_counts(statuses: Mapping[str, str], planned: int | None = None,
                 live: Iterable[str] = ()) -> TrialCounts:
    """Trial counts from each trial's status (``trial_id -> status``, as :func:`trial_states`
    gives them: a trial that errored before its first result has a status line, so it counts).

    Args:
        statuses: The ledger's statuses (``running`` or a finished one).
        planned: Trials the search will run; the ones not seen are ``pending``.
        live: Trials Tune runs now that the ledger has no line of yet: counted as running.
    """
    counter = TrialCounter()
    for trial_id, status in statuses.items():
        counter.set(trial_id, status)
    return counter.counts(planned, live)


class TrialCounter:
    """:func:`trial_counts`, kept up to date one status at a time (the monitor's form: a
    trial's end costs the same at 10,000 trials as at 10)."""

    def __init__(self) -> None:
        self.statuses: dict[str, str] = {}
        self._n = dict.fromkeys(TRIAL_COUNT_STATES, 0)

    def set(self, trial_id: str, status: str) -> None:
        """Record ``trial_id``'s status (``running`` or a finished one), replacing its last."""
        old = self.statuses.get(trial_id)
        if old is not None:
            self._n[old if old in FINISHED_STATUSES else RUNNING] -= 1
        self.statuses[trial_id] = status
        self._n[status if status in FINISHED_STATUSES else RUNNING] += 1

    def counts(self, planned: int | None = None, live: Iterable[str] = ()) -> TrialCounts:
        """The counts; ``planned`` and ``live`` as in :func:`trial_counts`."""
        counts = dict(self._n)
        counts[RUNNING] += sum(1 for t in set(live) if t not in self.statuses)
        if planned is not None:
            counts["pending"] = max(0, planned - sum(counts.values()))
        return TrialCounts(**counts)


def ledger_counts(states: Mapping[str, TrialState], planned: int | None = None,
                  live: Iterable[str] = ()) -> TrialCounts:
    """:func:`trial_counts` of what :func:`trial_states` read."""
    return trial_counts({t: st.status for t, st in states.items()}, planned, live)


def _number(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


class KeptEpoch:
    """Which epoch's model a trial keeps (the incremental form of the rule).

    :meth:`observe` is called with each epoch's row, in order, and says whether that epoch
    becomes the kept one: the first epoch; an epoch whose achieved ``sparsity`` differs
    from the kept epoch's by more than :data:`SPARSITY_ATOL` (a new model: the earlier,
    less or differently pruned ones are never the result); or one with a strictly higher
    ``val_accuracy``. So the kept epoch is the most accurate (on validation) of the trailing
    run at the final sparsity, ties to the earliest.
    """

    def __init__(self) -> None:
        self.kept: Mapping[str, Any] | None = None

    def would_keep(self, row: Mapping[str, Any]) -> bool:
        if self.kept is None:
            return True
        s, ks = _number(row.get("sparsity")), _number(self.kept.get("sparsity"))
        if not (math.isnan(s) and math.isnan(ks)) and not abs(s - ks) <= SPARSITY_ATOL:
            return True
        acc, kacc = _number(row.get(SELECTION_METRIC)), _number(self.kept.get(SELECTION_METRIC))
        return not math.isnan(acc) and (math.isnan(kacc) or acc > kacc)

    def observe(self, row: Mapping[str, Any]) -> bool:
        """Record ``row``; True when it is now the kept epoch (save its model)."""
        keep = self.would_keep(row)
        if keep:
            self.kept = row
        return keep


def kept_epoch(rows: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The kept row among a trial's rows (in epoch order), by :class:`KeptEpoch`."""
    rule = KeptEpoch()
    for row in sorted(rows, key=lambda r: int(r["epoch"])):
        rule.observe(row)
    return rule.kept
