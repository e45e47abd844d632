"""The experiment directory: every file and folder's name, and how each is written.

Part of the result contract (docs/design.md section 4): the orchestrator writes an
experiment by these names and ``reports`` reads it by them, so no other module spells a
file name (``tests/test_layout.py`` checks it). Imports neither side, nor pandas or Ray::

    <output>/                 default ./prunefront-results/<name> (RESULTS_DIR)
      experiment.json         EXPERIMENT_FILE, write_json; resumed_at[] added on --resume
      dense/                  DENSE_DIR, published whole by replace_dir; METRICS_FILE last
        model.pt2             MODEL_FILE (pruners.save)
        state_dict.pt         DENSE_STATE_FILE (what trials load)
        metrics.json          METRICS_FILE (the reference row)
        model-int8.onnx       DENSE_INT8_MODEL_FILE (the dense model in int8; absent when it
        metrics-int8.json     DENSE_INT8_METRICS_FILE  could not be quantized): the dense-int8 row
      results.jsonl           LEDGER_FILE, appended and fsynced line by line (orchestrator.ledger)
      models/<trial_id>/      MODELS_DIR, published whole by replace_dir
        model.pt2, row.json   MODEL_FILE, ROW_FILE (the kept epoch's file and row); an int8
                              trial's file is model.onnx (ONNX_MODEL_FILE): model_file_name()
      tune/                   TUNE_DIR (Tune's experiment when ``storage`` is unset); tune/train
      report/                 REPORT_DIR, REPORT_FILES, staged and renamed together (reports.io.AtomicFiles)

A trial's Train checkpoint holds ``STATE_FILE`` (to resume from) and, on kept epochs,
``MODEL_FILE`` and ``ROW_FILE`` (what :data:`MODELS_DIR` receives).

Every file is written whole or not at all: a temporary file in the target directory,
flushed and fsynced, then renamed over the target (:func:`write_atomic`; ``os.replace`` is
atomic). A directory is staged under a hidden name and renamed in (:func:`replace_dir`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DENSE_DIR", "DENSE_FILES", "DENSE_INT8_FILES", "DENSE_INT8_METRICS_FILE", "DENSE_INT8_MODEL_FILE", "ONNX_MODEL_FILE",
    "model_file_name", "DENSE_STATE_FILE", "EXPERIMENT_FILE", "LEDGER_FILE", "METRICS_FILE", "MODELS_DIR",
    "MODEL_FILE", "REPORT_DIR", "REPORT_FILES", "REPORT_TABLES", "RESULTS_DIR", "ROW_FILE", "STATE_FILE", "TRAIN_DIR", "UMASK",
    "TRIAL_MODEL_FILES", "TUNE_DIR", "Layout", "json_safe", "model_dir_name", "fsync_tree", "recover_swaps", "replace_dir", "staging_dir", "write_atomic",
    "write_json",
]

RESULTS_DIR = "prunefront-results"
EXPERIMENT_FILE = "experiment.json"
LEDGER_FILE = "results.jsonl"
DENSE_DIR = "dense"
MODEL_FILE = "model.pt2"
DENSE_STATE_FILE = "state_dict.pt"
METRICS_FILE = "metrics.json"
#: The dense directory is complete when all three are there.
DENSE_FILES = (MODEL_FILE, DENSE_STATE_FILE, METRICS_FILE)
#: The dense model in int8 (ONNX, ``pruners.quantize``) and its row: the ``dense-int8``
#: reference. Optional: a model that cannot be quantized has neither.
DENSE_INT8_MODEL_FILE = "model-int8.onnx"
DENSE_INT8_METRICS_FILE = "metrics-int8.json"
DENSE_INT8_FILES = (DENSE_INT8_MODEL_FILE, DENSE_INT8_METRICS_FILE)
MODELS_DIR = "models"
ROW_FILE = "row.json"
#: An int8 trial's shipped file: ONNX, run by ONNX Runtime.
ONNX_MODEL_FILE = "model.onnx"
#: What a trial's kept epoch leaves in ``models/<trial_id>/``: its row and one model file
#: (``model_file_name`` of its ``quantize``).
TRIAL_MODEL_FILES = (MODEL_FILE, ONNX_MODEL_FILE, ROW_FILE)
STATE_FILE = "state.pt"
TUNE_DIR = "tune"
TRAIN_DIR = "train"
REPORT_DIR = "report"
REPORT_TABLES = ("trials", "final", "fronts", "methods")
REPORT_FILES = tuple(f"{t}.parquet" for t in REPORT_TABLES) + ("fronts.png", "fronts.html")


@dataclass(frozen=True)
class Layout:
    """The paths of one experiment directory."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def experiment(self) -> Path:
        return self.root / EXPERIMENT_FILE

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER_FILE

    @property
    def dense(self) -> Path:
        return self.root / DENSE_DIR

    @property
    def dense_metrics(self) -> Path:
        return self.dense / METRICS_FILE

    @property
    def dense_int8_metrics(self) -> Path:
        return self.dense / DENSE_INT8_METRICS_FILE

    @property
    def dense_state(self) -> Path:
        return self.dense / DENSE_STATE_FILE

    @property
    def models(self) -> Path:
        return self.root / MODELS_DIR

    def model_dir(self, trial_id: str) -> Path:
        """``models/<trial_id>/`` (the trial's kept model and row)."""
        return self.models / trial_id

    @property
    def tune(self) -> Path:
        return self.root / TUNE_DIR

    @property
    def report(self) -> Path:
        return self.root / REPORT_DIR

    def is_experiment(self) -> bool:
        """True when the directory holds an experiment record or a ledger."""
        return self.experiment.is_file() or self.ledger.is_file()


def model_file_name(quantize: Any) -> str:
    """The file a trial ships for its ``quantize`` value: ``model.onnx`` for ``int8`` and
    ``int8_qat``, ``model.pt2`` otherwise (``none``, or a row from before quantization)."""
    return ONNX_MODEL_FILE if isinstance(quantize, str) and quantize.startswith("int8") else MODEL_FILE


def model_dir_name(trial_id: str) -> str:
    """``models/<trial_id>`` relative to the experiment (the report's ``model_dir``)."""
    return f"{MODELS_DIR}/{trial_id}"


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN / inf become None (JSON has neither), numpy scalars plain numbers."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        with contextlib.suppress(TypeError, ValueError):
            value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# Files made by mkstemp are private (0600); written files get the mode an ordinary open()
# would. The umask is read once, at import: os.umask can only be read by setting it, which
# would race with other threads creating files.
UMASK = os.umask(0)
os.umask(UMASK)


def write_atomic(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` whole or not at all: ``writer`` fills a temporary file beside it,
    which is fsynced and renamed over ``path``. The file gets the mode an ordinary
    ``open()`` would give (readable by others on a shared results directory)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def write_json(path: str | os.PathLike[str], obj: Mapping[str, Any]) -> Path:
    """Write ``obj`` as indented JSON atomically (:func:`write_atomic`, :func:`json_safe`)."""
    text = json.dumps(json_safe(dict(obj)), indent=2, sort_keys=False) + "\n"
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def staging_dir(target: str | os.PathLike[str]) -> Path:
    """An empty hidden directory of a unique name beside ``target``, to fill before
    :func:`replace_dir` (two processes never share one)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    return tmp


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """fsync every file under ``path`` and every folder, ``path`` included (bottom up)."""
    for root, _dirs, names in os.walk(path, topdown=False):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(staged: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Put the filled folder ``staged`` at ``target``; a folder already there goes only once
    ``staged`` is in place.

    ``staged`` is fsynced first. The old folder is renamed aside (``.<name>.<unique>.old``),
    the new one renamed in, the parent fsynced, then the old one removed. A crash between
    the two renames leaves the old copy aside, whole: :func:`recover_swaps` puts it back. If
    the second rename fails (another process put its copy there first) the old folder is put
    back or dropped, never lost while ``target`` is empty.
    """
    staged, target = Path(staged), Path(target)
    fsync_tree(staged)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
        os.rename(target, old)
    try:
        os.rename(staged, target)
    except OSError:
        if old is not None and not target.exists():
            os.rename(old, target)
            old = None
        raise
    finally:
        _fsync_dir(target.parent)
        if old is not None and target.exists():
            shutil.rmtree(old, ignore_errors=True)
    return target


def recover_swaps(folder: str | os.PathLike[str], stale_s: float = 600.0) -> None:
    """After a crash: put back an old copy :func:`replace_dir` had set aside when nothing
    replaced it, drop the ones that were replaced, and staged copies older than ``stale_s``."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in sorted(folder.iterdir()):
        parts = p.name.split(".")
        if not (p.name.startswith(".") and len(parts) >= 4 and parts[-1] in ("old", "tmp")):
            continue
        target = folder / ".".join(parts[1:-2])
        if parts[-1] == "old" and not target.exists():
            os.rename(p, target)
        elif parts[-1] == "old" or time.time() - p.stat().st_mtime > stale_s:
            shutil.rmtree(p, ignore_errors=True)
