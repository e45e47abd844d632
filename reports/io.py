"""Atomic file writes and the report's Parquet I/O (schema metadata included).

Every report file is first written in full to a temporary file in the target
directory, flushed and fsync'ed, and only then renamed over the old file
(``os.replace`` is atomic on POSIX and Windows). :class:`AtomicFiles` stages a
whole report that way and renames nothing until every file is written, so a
failure or crash while building leaves the previous report whole. Only a crash
between the final renames (a few syscalls) could leave some files new and some
old; each is still whole, and :func:`load` warns when their build ids differ.
A crashed writer's temporary file is removed by a later build
(:func:`remove_stale_temporaries`).

Schema metadata keys (JSON text) on every Parquet file of a report:

* ``prunefront.config``: the experiment's validated config.
* ``prunefront.versions``: package versions the experiment ran with.
* ``prunefront.dense``: the dense baseline's metrics (``null`` when missing).
* ``prunefront.experiment``: the whole ``experiment.json``.
* ``prunefront.report``: ``build_id`` (same in every file of one build),
  ``built_at``, ``format_version``, ``table``, the reports side's package versions,
  and ``fronts``: per front the reference point, hypervolume, normalised
  hypervolume, counts and knee (see ``reports.tables.FrontSummary``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reports.layout import REPORT_DIR, REPORT_TABLES, UMASK

TABLES = REPORT_TABLES
#: Tables every report has (``methods`` came with format 2).
CORE_TABLES = ("trials", "final", "fronts")
FORMAT_VERSION = 2
META_PREFIX = "prunefront."
META_KEYS = ("config", "versions", "dense", "experiment", "report")

# Files made by mkstemp are private (0600): staged report files get the mode an ordinary
# open() would (reports.layout reads the umask once).
_UMASK = UMASK


class AtomicFiles:
    """Stage several files and publish them together.

    Use as a context manager: :meth:`write` writes each file to a temporary file
    next to its target; on a clean exit every temporary file is renamed over its
    target, on an exception every temporary file is deleted and no target is
    touched.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[str, Path]] = []

    def write(self, path: str | Path, writer: Callable[[IO[bytes]], None]) -> Path:
        """Stage ``path``: call ``writer`` with a binary file open on a temporary file."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        self._staged.append((tmp, target))
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        return target

    def discard(self) -> None:
        """Delete every staged temporary file."""
        for tmp, _ in self._staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._staged.clear()

    def commit(self) -> list[Path]:
        """Rename every staged file over its target; returns the targets."""
        targets = []
        for tmp, target in self._staged:
            os.replace(tmp, target)
            targets.append(target)
        for parent in {t.parent for t in targets}:
            _fsync_dir(parent)
        self._staged.clear()
        return targets

    def __enter__(self) -> AtomicFiles:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def _fsync_dir(path: Path) -> None:
    # Makes the renames themselves durable; not possible on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


STALE_AFTER_S = 600.0


def remove_stale_temporaries(directory: str | Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete temporary files a crashed writer left in ``directory``.

    Only files named like :class:`AtomicFiles` names them and not modified for
    ``max_age_s`` seconds: a writer that is still working is left alone.

    Returns:
        The files removed.
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    now = time.time()
    removed = []
    for p in d.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if now - p.stat().st_mtime > max_age_s:
                p.unlink()
                removed.append(p)
    return removed


def write_atomic(path: str | Path, writer: Callable[[IO[bytes]], None]) -> Path:
    """Write one file atomically (temporary file in the same directory, then rename)."""
    with AtomicFiles() as files:
        files.write(path, writer)
    return Path(path)


def to_arrow(df: pd.DataFrame, metadata: dict[str, Any]) -> pa.Table:
    """``df`` as an Arrow table whose schema metadata also holds ``metadata``.

    Each value of ``metadata`` is stored as JSON under ``prunefront.<key>``.
    """
    table = pa.Table.from_pandas(df, preserve_index=False)
    # pandas' pyarrow-backed strings map to large_string; plain string keeps the
    # schema the same whichever pandas wrote it, so datasets of reports combine.
    fields = [
        pa.field(f.name, pa.string(), f.nullable, f.metadata) if pa.types.is_large_string(f.type) else f
        for f in table.schema
    ]
    table = table.cast(pa.schema(fields, metadata=table.schema.metadata))
    meta = dict(table.schema.metadata or {})
    for key, value in metadata.items():
        meta[f"{META_PREFIX}{key}".encode()] = json.dumps(value, sort_keys=True, default=str).encode()
    return table.replace_schema_metadata(meta)


def write_parquet(
    df: pd.DataFrame,
    path: str | Path,
    metadata: dict[str, Any],
    files: AtomicFiles | None = None,
) -> Path:
    """Write ``df`` to Parquet with ``metadata`` in its schema, atomically.

    Args:
        df: The table.
        path: Target file.
        metadata: JSON-serialisable values stored under ``prunefront.<key>``.
        files: Stage into this :class:`AtomicFiles` (published with the others)
            instead of publishing at once.

    Returns:
        ``path``.
    """
    table = to_arrow(df, metadata)

    def writer(f: IO[bytes]) -> None:
        pq.write_table(table, f)

    if files is None:
        return write_atomic(path, writer)
    return files.write(path, writer)


def parquet_metadata(path: str | Path) -> dict[str, Any]:
    """The ``prunefront.*`` schema metadata of a Parquet file, decoded from JSON."""
    meta = pq.read_schema(path).metadata or {}
    out = {}
    for key, value in meta.items():
        name = key.decode()
        if name.startswith(META_PREFIX):
            out[name[len(META_PREFIX):]] = json.loads(value)
    return out


def resolve_report_dir(path: str | Path) -> Path:
    """The report directory for a report or an experiment directory.

    Raises:
        ValueError: neither ``path`` nor ``path/report`` holds a report.
    """
    p = Path(path)
    for candidate in (p, p / REPORT_DIR):
        if all((candidate / f"{t}.parquet").is_file() for t in CORE_TABLES):
            return candidate
    if not p.exists():
        raise ValueError(f"{p}: no such directory")
    raise ValueError(
        f"{p} holds no report (trials/final/fronts.parquet), nor does {p / REPORT_DIR}; "
        "build one with: python -m reports build EXPERIMENT_DIR"
    )


def load(path: str | Path) -> dict[str, pd.DataFrame]:
    """Read a report: ``{"trials": ..., "final": ..., "fronts": ...}`` DataFrames.

    Args:
        path: A report directory, or an experiment directory with ``report/``.

    Returns:
        The tables (``methods`` only in reports of format 2 and later), each with the
        dense reference row (``status == "reference"``) first when the experiment has one.
    """
    report_dir = resolve_report_dir(path)
    present = [t for t in TABLES if (report_dir / f"{t}.parquet").is_file()]
    from reports.ledger import check_frame

    frames = {}
    for t in present:
        file = report_dir / f"{t}.parquet"
        try:
            frames[t] = pd.read_parquet(file)
        except (OSError, ValueError, pa.ArrowException) as e:  # damaged or not Parquet
            raise ValueError(f"{file}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None
        check_frame(file, t, frames[t])
    builds = {parquet_metadata(report_dir / f"{t}.parquet").get("report", {}).get("build_id") for t in present}
    if len(builds) > 1:
        # Each file is replaced atomically, but a reader can land between two renames.
        warnings.warn(
            f"{report_dir}: the report files come from different builds; read again",
            stacklevel=2,
        )
    return frames


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The report's metadata: ``config, versions, dense, experiment, report``.

    Args:
        path: A report directory, or an experiment directory with ``report/``.
    """
    report_dir = resolve_report_dir(path)
    return parquet_metadata(report_dir / "fronts.parquet")
