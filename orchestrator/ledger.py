"""The experiment's ledger: every trial result and every trial end, appended and fsynced.

``<output>/results.jsonl`` (docs/design.md section 4) is written by :class:`LedgerCallback`,
a Tune callback running in the search driver. Each event is one JSON line, written to the
operating system before Tune moves on (a killed driver loses nothing). A trial's end is
fsynced before Tune moves on, which makes every line before it durable too, so no result of
a finished trial is lost even if the machine fails; result lines of running trials are
fsynced at least every ``SYNC_INTERVAL_S`` (an fsync per result was most of the driver's
cost per result, issue 20). ``reports`` rebuilds everything from this file. The same callback copies each
trial's best pruned model (the Train checkpoint the trial reported last, see
``orchestrator.trial``) into ``<output>/models/<trial_id>/``.

On ``--resume`` the ledger is appended to, never rewritten. Trials the ledger already
records as finished are not run again (``orchestrator.trial`` replays their last result
so Tune marks them done), and the callback writes nothing more for them, so their lines
are never duplicated.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator.space import decode_trial
from reports.contract import (
    EXTRA_KEYS,
    FINISHED_STATUSES,
    METRIC_KEYS,
    TrialCounts,
    ledger_counts,
    read_events,
    torn_tail,
    trial_counts,
    trial_states,
)
from reports.layout import (
    LEDGER_FILE,
    TRIAL_MODEL_FILES,
    Layout,
    json_safe,
    recover_swaps,
    replace_dir,
    staging_dir,
    write_json,
)

__all__ = [
    "copy_from_storage",
    "now_iso",
    "status_summary",
    "EXTRA_ROW_KEYS",
    "LEDGER_FILE",
    "LedgerCallback",
    "LedgerWriter",
    "finished_trials",
    "package_versions",
    "replayed_trials",
    "row_metrics",
    "trial_record",
    "write_json",
]

logger = logging.getLogger(__name__)

#: Keys of a row besides ``epoch`` and the metric keys that are kept in the ledger.
EXTRA_ROW_KEYS = EXTRA_KEYS
FINISHED = FINISHED_STATUSES
# The result key TuneReportCallback adds when a Train report carried a checkpoint.
CHECKPOINT_PATH_KEY = "checkpoint_path"
# The result key of a trial that failed in its own code (``orchestrator.trial.worker_loop``).
TRIAL_ERROR_KEY = "trial_error"


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on (for ``experiment.json``)."""
    out: dict[str, str] = {}
    for name in ("torch", "torchvision", "torch-pruning", "ray", "numpy", "pandas", "pyarrow", "scikit-learn", "prunefront"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


#: Longest time a result line of a running trial waits for its fsync (a trial's end never waits).
SYNC_INTERVAL_S = 1.0


class LedgerWriter:
    """Append-only JSON-lines file; every line is flushed to the operating system before
    returning, and fsynced then when ``durable`` (or when the last fsync is older than
    ``sync_interval_s``). An fsync covers every line before it.

    Args:
        path: The ledger file (created with its directory if missing).
        sync_interval_s: The longest a line that is not ``durable`` stays unsynced while
            lines keep coming (:meth:`close` fsyncs what is left).
    """

    def __init__(self, path: str | os.PathLike[str], sync_interval_s: float = SYNC_INTERVAL_S) -> None:
        self.path = Path(path)
        self.sync_interval_s = sync_interval_s
        self._file: Any = None
        self._lock = threading.Lock()
        self._synced_at = -math.inf
        self._dirty = False

    def append(self, event: Mapping[str, Any], *, durable: bool = True) -> None:
        line = json.dumps(json_safe(dict(event)), allow_nan=False) + "\n"
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.touch()
                self._repair_torn_tail()
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
            self._dirty = True
            if durable or time.monotonic() - self._synced_at >= self.sync_interval_s:
                self._sync()

    def _sync(self) -> None:
        os.fsync(self._file.fileno())
        self._synced_at, self._dirty = time.monotonic(), False

    def _repair_torn_tail(self) -> None:
        # The last line without its newline follows reports.contract.torn_tail, the rule
        # every reader applies: a whole JSON object lost only its newline (an editor, a disk
        # full at the last byte) and is completed, since readers count it and the run may
        # have acted on it (a finished trial is never rerun); anything else is a write in
        # progress, never acknowledged, and is cut so the next event does not glue onto it.
        with open(self.path, "rb+") as f:
            data = f.read()
            end, complete = torn_tail(data)
            if end == len(data):
                return
            if complete:
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
            else:
                f.truncate(end)
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                if self._dirty:
                    self._sync()
                self._file.close()
                self._file = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks into its experiment state; the open file stays behind.
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])


_LAST_READ: dict[str, Any] = {}


def _read_once(path: str | os.PathLike[str]) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any]]:
    """The ledger's events and trial states, read once while the file is unchanged: on
    ``--resume`` the driver (``finished_trials``) and the ledger callback's ``setup`` both need
    them, and at 10,000 trials each read of the ledger takes seconds."""
    p = Path(path)
    stat = p.stat() if p.is_file() else None
    key = (str(p.absolute()), stat.st_size if stat else None, stat.st_mtime_ns if stat else None)
    if _LAST_READ.get("key") != key:
        events = read_events(p)
        _LAST_READ.clear()
        _LAST_READ.update(key=key, events=events, states=trial_states(events, where=str(p)))
    return _LAST_READ["events"], _LAST_READ["states"]


def finished_trials(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Trials the ledger records as finished: ``trial_id -> {"status", "result"}``.

    ``result`` is the trial's last result line (None if it has none); the rules are
    ``reports.contract.trial_states``' (a retried trial is running again).
    """
    states = _read_once(path)[1]
    out = {}
    for tid, st in states.items():
        if st.finished:
            last = st.last_result
            out[tid] = {"status": st.status, "result": None if last is None else {k: v for k, v in last.items() if k != "_seq"}}
    return out


def replayed_trials(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The trials a resumed search replays instead of running: ``trial_id -> last result``.

    Finished trials with a result line, errored ones excepted: a restored search retries
    those from their last epoch (``resume_errored``), so they report (and are written) again.
    The one rule for ``search.py`` (what ``orchestrator.trial`` replays) and
    :class:`LedgerCallback` (what it writes nothing more for).
    """
    if not Path(path).is_file():
        return {}
    return {tid: v["result"] for tid, v in finished_trials(path).items()
            if v["result"] is not None and v["status"] != "errored"}


def trial_record(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's flat config keys (design.md section 3) from its sampled Tune config."""
    return decode_trial(config).record()


def row_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """The metric part of a Tune result: ``epoch``, the metric keys and a few extras."""
    keys = ("epoch",) + METRIC_KEYS + EXTRA_ROW_KEYS
    return {k: result[k] for k in keys if k in result}


def _error_reason(trial: Any) -> str:
    """The last line of the trial's error (``Type: message``), else a generic reason."""
    text = ""
    path = getattr(trial, "error_file", None)
    if path and os.path.isfile(path):
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Ray wraps the worker's exception; the innermost "Type: message" line says most.
    for ln in reversed(lines):
        if ":" in ln and not ln.startswith(("File ", "^", "~")):
            return ln[:500]
    return "the trial raised an error (see its error.txt in the Tune experiment)"


class LedgerCallback(Callback):
    """Append every result and trial end to ``<output>/results.jsonl``; copy models.

    Args:
        experiment_dir: The experiment directory (``<output>``).
        scheduler: The trial scheduler, asked for the reason of an early stop
            (``stop_reason(trial_id)``); None for a generic reason.
        storage: Tune storage (absolute path or URI) that Train checkpoint paths in
            results are relative to, for copying models; None for the local disk.
        max_epochs: Fallback for a trial config without ``epochs``.
        echo: Print one line per finished trial (status, reason, last metrics).
    """

    def __init__(
        self,
        experiment_dir: str | os.PathLike[str],
        *,
        scheduler: Any = None,
        storage: str | None = None,
        max_epochs: int | None = None,
        echo: bool = False,
    ) -> None:
        self.experiment_dir = Path(experiment_dir)
        self.writer = LedgerWriter(self.experiment_dir / LEDGER_FILE)
        self.scheduler = scheduler
        self.storage = storage
        self.max_epochs = max_epochs
        self.echo = echo
        self.skip: set[str] = set()
        self._copied: dict[str, str] = {}
        self._last_epoch: dict[str, int] = {}
        self._errors: dict[str, str] = {}
        self._kept: dict[str, dict[str, Any]] = {}  # per trial: the row of the epoch whose model ships
        self._written: set[tuple[str, int]] = set()  # (trial, epoch) lines in the ledger
        self.counts = {"result": 0, "completed": 0, "stopped": 0, "errored": 0}

    # -- state --------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        # On resume: the finished trials the ledger holds results of are replayed, not run
        # again (orchestrator.trial); nothing more is written for them.
        # An errored one is retried (resume_errored): it reports again.
        recover_swaps(Layout(self.experiment_dir).models)  # a driver killed mid-swap
        self.skip = set(replayed_trials(self.writer.path))
        self._written = {(e["trial_id"], int(e["epoch"])) for _, e in _read_once(self.writer.path)[0]
                         if e.get("type") == "result" and "epoch" in e} if self.writer.path.is_file() else set()
        _LAST_READ.clear()  # the driver holds no copy of the ledger during the search

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_copied"] = {}
        return state

    # -- helpers ------------------------------------------------------------------
    def _record(self, trial: Any) -> dict[str, Any]:
        try:
            return trial_record(trial.config)
        except (KeyError, ValueError, TypeError):
            return {k: v for k, v in dict(trial.config).items() if not isinstance(v, Mapping)}

    def _epochs(self, trial: Any) -> int | None:
        try:
            return int(trial.config["epochs"])
        except (KeyError, TypeError, ValueError):
            return self.max_epochs

    def _copy_model(self, trial_id: str, src: str) -> None:
        if self._copied.get(trial_id) == src:
            return
        try:
            copy_from_storage(self.storage, src, Layout(self.experiment_dir).model_dir(trial_id),
                              files=TRIAL_MODEL_FILES)
            self._copied[trial_id] = src
        except Exception:  # a failed copy must never stop the search
            logger.warning("could not copy the model of trial %s from %s", trial_id, src, exc_info=True)

    # -- Tune hooks ---------------------------------------------------------------
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid = trial.trial_id
        if tid in self.skip:
            return
        if result.get(TRIAL_ERROR_KEY):  # the trial failed in its own code (orchestrator.trial)
            self._errors[tid] = str(result[TRIAL_ERROR_KEY])
            return
        metrics = row_metrics(result)
        if "epoch" not in metrics:
            return  # not a fine-tuning epoch (nothing reports those today)
        if result.get("kept"):  # the trial's own decision (its model is the one copied below)
            self._kept[tid] = metrics
        if (tid, int(metrics["epoch"])) in self._written:
            return  # a retried trial reports its last checkpointed epoch again: written once
        self._written.add((tid, int(metrics["epoch"])))
        event = {"type": "result", "trial_id": tid, **metrics, "config": self._record(trial),
                 "time_total_s": result.get("time_total_s")}
        self.writer.append(event, durable=False)  # fsynced by the trial's end, or within SYNC_INTERVAL_S
        self.counts["result"] += 1
        self._last_epoch[tid] = int(metrics["epoch"])
        ckpt = result.get(CHECKPOINT_PATH_KEY)
        if ckpt and result.get("kept"):  # every epoch checkpoints; kept ones carry the model
            self._copy_model(tid, str(ckpt))

    def _status(self, trial: Any, status: str, reason: str) -> None:
        record = self._record(trial)
        self.writer.append(
            {"type": "status", "trial_id": trial.trial_id, "status": status, "reason": reason, "config": record}
        )
        self.counts[status] += 1
        if self.echo:
            shown = self._kept.get(trial.trial_id) or trial.last_result or {}
            print(_progress_line(trial.trial_id, status, reason, record, shown), flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        if tid in self.skip:
            return
        if tid in self._errors:
            self._status(trial, "errored", self._errors.pop(tid))
            return
        last = self._last_epoch.get(tid)
        if last is None and trial.last_result:
            last = trial.last_result.get("epoch")
        epochs = self._epochs(trial)
        if last is not None and epochs is not None and int(last) < epochs:
            reason = None
            if self.scheduler is not None and hasattr(self.scheduler, "stop_reason"):
                reason = self.scheduler.stop_reason(tid)
            self._status(trial, "stopped", reason or f"stopped early by the scheduler after epoch {last} of {epochs}")
        elif last is None:
            self._status(trial, "errored", "the trial ended without reporting an epoch")
        else:
            self._status(trial, "completed", f"ran all {epochs} epochs")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # A retry after a failure outside the trial's code: it continues from its last
        # checkpoint; nothing ended, so nothing is written.
        logger.info("trial %s failed and is retried from its last checkpoint", trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.skip:
            return
        self._status(trial, "errored", _error_reason(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.writer.close()




def _progress_line(trial_id: str, status: str, reason: str, record: Mapping[str, Any], last: Mapping[str, Any]) -> str:
    """``prunefront: trial <id> <status>: <method> -> <kept epoch's metrics> (<reason>)``."""
    method = "/".join(str(record.get(k, "?")) for k in ("criterion", "granularity", "schedule"))
    knobs = ", ".join(f"{k} {record[k]:.3g}" for k in ("amount", "lr") if isinstance(record.get(k), (int, float)))
    parts = []
    for key, fmt in (("epoch", "kept epoch {}"), ("val_accuracy", "val accuracy {:.4f}"), ("sparsity", "sparsity {:.3f}"),
                     ("flops", "{:.3g} FLOPs"), ("size_bytes", "{:.0f} B file")):
        if isinstance(last.get(key), (int, float)):
            parts.append(fmt.format(last[key]))
    got = f" -> {', '.join(parts)}" if parts and status != "errored" else ""
    why = f" ({reason})" if status != "completed" else ""
    return f"prunefront: trial {trial_id} {status}: {method} ({knobs}){got}{why}"


def copy_from_storage(
    storage: str | None, src: str, dst: str | os.PathLike[str], files: tuple[str, ...] | None = None
) -> None:
    """Copy directory ``src`` of the Tune/Train storage (or just ``files`` of it) to the local
    directory ``dst``, replacing it atomically.

    ``src`` is a path on the storage's file system (as Train reports checkpoint paths,
    without a URI scheme); ``storage`` is the storage URI or path it belongs to (None or a
    plain path: the local disk). The copy is written to a folder of a unique name beside
    ``dst``, fsynced, and swapped in by :func:`replace_dir`: a reader (or a crash) sees the
    old folder or the new one, whole, and two processes never share a temporary folder.
    """
    dst = Path(dst)
    tmp = staging_dir(dst)
    try:
        _copy_tree(storage, src, tmp, files)
        replace_dir(tmp, dst)  # fsyncs the copy, then swaps it in
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_tree(storage: str | None, src: str, dst: Path, files: tuple[str, ...] | None) -> None:
    import pyarrow.fs as pafs

    local = storage is None or "://" not in storage or storage.startswith("file://")
    if files is None and local:
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return
    fs = pafs.LocalFileSystem() if local else pafs.FileSystem.from_uri(storage)[0]
    dst.mkdir(parents=True, exist_ok=True)
    if files is None:
        pafs.copy_files(src, str(dst), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return
    for name in files:
        if fs.get_file_info(f"{src.rstrip('/')}/{name}").type == pafs.FileType.NotFound:
            continue  # e.g. model.pt2 of an int8 trial, which ships model.onnx
        pafs.copy_files(f"{src.rstrip('/')}/{name}", str(dst / name), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())


def now_iso() -> str:
    """Current UTC time, ISO-8601 (``experiment.json``'s ``started_at``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def status_summary(path: str | os.PathLike[str], planned: int | None = None) -> TrialCounts:
    """How many trials the ledger records in each state (``reports.contract.trial_counts``);
    ``planned`` trials it has no line of are ``pending``."""
    if not Path(path).is_file():
        return trial_counts({}, planned)
    return ledger_counts(trial_states(read_events(path), where=str(path)), planned)

