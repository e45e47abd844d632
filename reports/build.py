"""Build an experiment's report directory from its storage (no Ray needed)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import uuid
from pathlib import Path
from typing import Any

from reports.io import FORMAT_VERSION, TABLES, AtomicFiles, parquet_metadata, remove_stale_temporaries, write_parquet
from reports.ledger import read_experiment
from reports.tables import ReportTables, build_tables

from reports.layout import REPORT_DIR, REPORT_FILES, Layout  # noqa: F401 - REPORT_FILES re-exported


def _package_versions() -> dict[str, str]:
    out = {}
    for name in ("pandas", "pyarrow", "numpy", "matplotlib"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def report_metadata(tables: ReportTables, table: str, build_id: str, built_at: str,
                    ledger_bytes: int | None = None) -> dict[str, Any]:
    """The ``prunefront.*`` schema metadata of one report table."""
    return {
        "config": tables.config,
        "versions": tables.versions,
        "dense": tables.dense,
        "experiment": tables.experiment,
        "report": {
            "build_id": build_id,
            "built_at": built_at,
            "format_version": FORMAT_VERSION,
            "table": table,
            "packages": _package_versions(),
            "fronts": {k: s.to_dict() for k, s in tables.summaries.items()},
            "front_costs": dict(tables.front_costs),
            "trial_counts": dict(tables.trial_counts),
            "ledger_bytes": ledger_bytes,
        },
    }


def write_report(
    tables: ReportTables,
    report_dir: str | Path,
    plots: bool = True,
    title: str | None = None,
    experiment_dir: str | Path | None = None,
    ledger_bytes: int | None = None,
    if_newer: bool = False,
) -> dict[str, Path]:
    """Write ``tables`` (and the plots) to ``report_dir``, all or nothing.

    Every file is staged to a temporary file first; only when all are written are
    they renamed over the previous report, so a failure or crash part-way leaves
    the previous report whole. ``ledger_bytes`` (the size of the ledger the tables
    were read from) is recorded; with ``if_newer``, a report already there that was
    built from a longer ledger is left as it is, so a live refresh that finishes late
    never undoes a later build.

    Returns:
        ``{file name: path}`` of the files written (empty when a newer report stays).
    """
    report_dir = Path(report_dir)
    remove_stale_temporaries(report_dir)
    build_id = uuid.uuid4().hex
    built_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    written: dict[str, Path] = {}
    files = AtomicFiles()
    try:
        _stage(files, written, tables, report_dir, plots, title, experiment_dir, (build_id, built_at, ledger_bytes))
    except BaseException:
        files.discard()
        raise
    if if_newer and ledger_bytes is not None and _published_ledger_bytes(report_dir) > ledger_bytes:
        files.discard()
        return {}
    files.commit()
    return written


def _published_ledger_bytes(report_dir: Path) -> int:
    """``ledger_bytes`` of the report in ``report_dir`` (-1: none, or unknown)."""
    try:
        value = parquet_metadata(report_dir / "fronts.parquet").get("report", {}).get("ledger_bytes")
    except Exception:  # noqa: BLE001 - no report, or a damaged one: any build replaces it
        return -1
    return value if isinstance(value, int) else -1


def _stage(files: AtomicFiles, written: dict[str, Path], tables: ReportTables, report_dir: Path, plots: bool,
           title: str | None, experiment_dir: str | Path | None, build: tuple[str, str, int | None]) -> None:
    build_id, built_at, ledger_bytes = build
    for name in TABLES:
        df = getattr(tables, name)
        meta = report_metadata(tables, name, build_id, built_at, ledger_bytes)
        written[f"{name}.parquet"] = write_parquet(df, report_dir / f"{name}.parquet", meta, files)
    if plots:
        from reports import plots as _plots

        meta = report_metadata(tables, "fronts", build_id, built_at, ledger_bytes)
        page_title = title or "Prunefront report"
        png = _plots.png_bytes(tables.fronts, page_title, costs=tables.front_costs)
        written["fronts.png"] = files.write(report_dir / "fronts.png", lambda f: f.write(png))
        page = _plots.html_page(
            tables.fronts, meta["report"]["fronts"], meta, title=page_title, methods=tables.methods,
            experiment_dir=None if experiment_dir is None else str(Path(experiment_dir).absolute()),
        ).encode()
        written["fronts.html"] = files.write(report_dir / "fronts.html", lambda f: f.write(page))


def experiment_title(tables: ReportTables, experiment_dir: str | Path) -> str:
    """``Prunefront report: <name>`` from experiment.json, else the directory name."""
    name = tables.experiment.get("name") or tables.config.get("name") or Path(experiment_dir).name
    return f"Prunefront report: {name}"


def build_report(
    experiment_dir: str | Path,
    report_dir: str | Path | None = None,
    *,
    reference: dict[str, float] | None = None,
    reference_accuracy: float = 0.0,
    plots: bool = True,
    if_newer: bool = False,
) -> dict[str, Path]:
    """Rebuild the report of an experiment, finished or still running.

    Args:
        experiment_dir: Experiment directory (docs/design.md section 4).
        report_dir: Where to write; default ``<experiment_dir>/report``.
        reference: ``{cost_column: value}`` overriding the hypervolume reference
            cost of some fronts (default: the dense model's cost).
        reference_accuracy: Accuracy of the hypervolume reference point.
        plots: Also draw ``fronts.png`` and ``fronts.html``.
        if_newer: Keep a report already built from a longer ledger (see :func:`write_report`).

    Returns:
        ``{file name: path}`` of the files written.

    Raises:
        ValueError: the directory is not an experiment or holds malformed data.
    """
    exp = read_experiment(experiment_dir)
    tables = build_tables(exp, reference=reference, reference_accuracy=reference_accuracy)
    out = Path(report_dir) if report_dir is not None else Layout(experiment_dir).report
    return write_report(tables, out, plots=plots, title=experiment_title(tables, experiment_dir),
                        experiment_dir=experiment_dir, ledger_bytes=exp.ledger_bytes, if_newer=if_newer)


def _report_is_current(experiment_dir: Path) -> bool:
    """True when ``experiment_dir/report`` was built from the ledger as it is now (same
    size: it is only ever appended to) and after the last model was copied in, so its
    Parquet files say what a fresh build would."""
    from reports.contract import LEDGER_FILE

    ledger = experiment_dir / LEDGER_FILE
    report = experiment_dir / "report"
    if not ledger.is_file() or not (report / "fronts.parquet").is_file():
        return False
    models = experiment_dir / "models"  # a model copied in after the build changes pick's answer
    if models.is_dir() and models.stat().st_mtime_ns > (report / "fronts.parquet").stat().st_mtime_ns:
        return False
    return _published_ledger_bytes(report) == ledger.stat().st_size


def open_report(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Tables, metadata and title of an experiment or report directory.

    An experiment directory is read from its ledger and computed in memory
    (always current, nothing written), unless its ``report/`` was built from the
    ledger as it is now: then, like a report directory, it is read from Parquet.

    Returns:
        ``(frames, metadata, title)`` where ``frames`` has the ``trials``, ``final``,
        ``fronts`` and ``methods`` DataFrames and ``metadata`` the keys of the Parquet metadata.
    """
    from reports.io import load, read_metadata
    from reports.ledger import is_experiment_dir

    p = Path(path)
    if p.is_dir() and is_experiment_dir(p) and not _report_is_current(p):
        tables = build_tables(read_experiment(p))
        frames = {name: getattr(tables, name) for name in TABLES}
        meta = report_metadata(tables, "fronts", build_id="in-memory", built_at="")
        return frames, meta, experiment_title(tables, p)
    frames = load(p)
    meta = read_metadata(p)
    if is_experiment_dir(p):
        p = p / "report"
    exp = meta.get("experiment") or {}
    cfg = meta.get("config") or {}
    name = exp.get("name") or cfg.get("name") or (p.parent.name if p.name == REPORT_DIR else p.name)
    return frames, meta, f"Prunefront report: {name}"
