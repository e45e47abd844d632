"""Written report files: read back with pandas and pyarrow.dataset, metadata round
trip, and atomic replacement when a write fails or the process dies mid-write."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from reports_fixtures import DENSE, REPO, cfg, metrics

import reports
from reports import io as rio
from reports.ledger import read_experiment
from reports.tables import build_tables


def test_parquet_round_trip_with_pandas_and_pyarrow_dataset(experiment_dir):
    written = reports.build_report(experiment_dir, plots=False)
    assert sorted(written) == ["final.parquet", "fronts.parquet", "methods.parquet", "trials.parquet"]
    tables = build_tables(read_experiment(experiment_dir))
    for name in ("trials", "final", "fronts", "methods"):
        path = experiment_dir / "report" / f"{name}.parquet"
        expected = getattr(tables, name)
        pd.testing.assert_frame_equal(pd.read_parquet(path), expected)
        via_dataset = ds.dataset(path, format="parquet").to_table()
        assert via_dataset.schema.equals(pq.read_schema(path), check_metadata=True)
        pd.testing.assert_frame_equal(via_dataset.to_pandas(), expected)
        meta = rio.parquet_metadata(path)
        assert meta["config"]["scheduler"]["name"] == "asha"
        assert meta["versions"]["torch"] == "2.14.1"
        assert meta["dense"] == DENSE
        assert meta["experiment"]["started_at"] == "2026-11-22T07:50:00+00:00"
        assert meta["report"]["table"] == name
    fronts_meta = reports.read_metadata(experiment_dir)["report"]["fronts"]
    assert fronts_meta["accuracy_flops"]["knee"] == "a1b2c_00002"
    assert fronts_meta["accuracy_flops"]["reference"] == [0.0, 34048.0]
    # One build, one id across the files.
    ids = {rio.parquet_metadata(p)["report"]["build_id"] for p in written.values()}
    assert len(ids) == 1


def test_column_types_readers_can_count_on(experiment_dir):
    reports.build_report(experiment_dir, plots=False)
    schema = ds.dataset(experiment_dir / "report" / "fronts.parquet").schema
    types = {f.name: str(f.type) for f in schema}
    assert types["trial_id"] == types["status"] == types["front"] == "string"
    assert types["epoch"] == types["pareto_rank"] == "int64"
    assert types["val_accuracy"] == types["flops"] == types["hv_contribution"] == "double"
    assert types["params"] == types["size_bytes"] == "int64"
    assert types["is_knee"] == "bool"


def test_load_reads_report_and_experiment_directories(experiment_dir):
    reports.build_report(experiment_dir, plots=False)
    a = reports.load(experiment_dir)
    b = reports.load(experiment_dir / "report")
    for name in ("trials", "final", "fronts"):
        pd.testing.assert_frame_equal(a[name], b[name])
    with pytest.raises(ValueError, match="holds no report"):
        reports.load(experiment_dir / "dense")


def test_load_warns_when_files_come_from_different_builds(experiment_dir, tmp_path):
    reports.build_report(experiment_dir, plots=False)
    kept = (experiment_dir / "report" / "trials.parquet").read_bytes()
    reports.build_report(experiment_dir, plots=False)
    (experiment_dir / "report" / "trials.parquet").write_bytes(kept)
    with pytest.warns(UserWarning, match="different builds"):
        reports.load(experiment_dir)


def _append_finished_trial(root: Path) -> None:
    c = cfg("taylor", "structured", 0.7, "one_shot")
    with (root / "results.jsonl").open("a") as f:
        row = {"type": "result", "trial_id": "new_00009", "epoch": 1,
               **metrics(0.953125, 0.7, 4096, 4096, 9000, 2100, 2100), "config": c,
               "time_total_s": 3.0}
        f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"type": "status", "trial_id": "new_00009", "status": "completed",
                            "reason": "max epochs reached", "config": c}) + "\n")


def _snapshot(report_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(report_dir.iterdir())}


def test_failed_write_leaves_the_old_report_intact(experiment_dir, monkeypatch):
    reports.build_report(experiment_dir, plots=False)  # plots: see the next test
    report_dir = experiment_dir / "report"
    before = _snapshot(report_dir)
    old = reports.load(experiment_dir)
    _append_finished_trial(experiment_dir)

    real_write_table = pq.write_table
    calls = []

    def crashing_write_table(table, where, **kw):
        calls.append(1)
        if len(calls) == 3:  # fronts.parquet, after trials and final were staged
            where.write(b"PAR1 half a file")
            raise OSError("disk full")
        return real_write_table(table, where, **kw)

    monkeypatch.setattr(rio.pq, "write_table", crashing_write_table)
    with pytest.raises(OSError, match="disk full"):
        reports.build_report(experiment_dir, plots=False)
    assert _snapshot(report_dir) == before  # no file replaced, no temp file left
    new = reports.load(experiment_dir)
    for name in old:
        pd.testing.assert_frame_equal(new[name], old[name])

    monkeypatch.undo()
    reports.build_report(experiment_dir, plots=False)
    assert "new_00009" in set(reports.load(experiment_dir)["final"]["trial_id"])


def test_plot_failure_does_not_publish_new_tables(experiment_dir, monkeypatch):
    reports.build_report(experiment_dir)
    before = _snapshot(experiment_dir / "report")
    _append_finished_trial(experiment_dir)
    from reports import plots

    def broken(*args, **kwargs):
        raise RuntimeError("font cache corrupted")

    monkeypatch.setattr(plots, "png_bytes", broken)
    with pytest.raises(RuntimeError):
        reports.build_report(experiment_dir)
    assert _snapshot(experiment_dir / "report") == before


CRASH = """
import os, sys
sys.path.insert(0, {repo!r})
import pyarrow.parquet as pq
import reports
from reports import io as rio
real = pq.write_table
def dying(table, where, **kw):
    where.write(b"PAR1 partial")
    where.flush()
    os._exit(9)  # the process dies: no cleanup, no exception handler
rio.pq.write_table = dying
reports.build_report({exp!r}, plots=False)
"""


def test_process_killed_mid_write_leaves_the_old_report_readable(experiment_dir):
    reports.build_report(experiment_dir, plots=False)
    old = reports.load(experiment_dir)
    _append_finished_trial(experiment_dir)
    proc = subprocess.run(
        [sys.executable, "-c", CRASH.format(repo=str(REPO), exp=str(experiment_dir))],
        capture_output=True, timeout=120,
    )
    assert proc.returncode == 9
    report_dir = experiment_dir / "report"
    leftovers = [p.name for p in report_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".trials.parquet.")
    new = reports.load(experiment_dir)
    for name in old:
        pd.testing.assert_frame_equal(new[name], old[name])
    # The next build clears the dead writer's temporary file once it is stale.
    tmp = report_dir / leftovers[0]
    reports.build_report(experiment_dir, plots=False)
    assert tmp.exists()  # too recent: could belong to a writer still at work
    old_time = tmp.stat().st_mtime - 3600
    os.utime(tmp, (old_time, old_time))
    reports.build_report(experiment_dir, plots=False)
    assert not tmp.exists()
    assert "new_00009" in set(reports.load(experiment_dir)["final"]["trial_id"])


def test_written_files_are_readable_by_others(experiment_dir):
    """Report files (and layout.write_json's) get the mode a plain open() gives, not
    mkstemp's private 0600: others sharing a results directory can read them."""
    from reports.layout import write_json

    plain = experiment_dir / "plain.txt"
    plain.write_text("x")
    expected = os.stat(plain).st_mode & 0o777  # what open() gives under this process's umask
    assert expected != stat.S_IRUSR | stat.S_IWUSR, "the umask hides the difference; run with umask 022"
    reports.build_report(experiment_dir, plots=False)
    written = [experiment_dir / "report" / "final.parquet", write_json(experiment_dir / "x.json", {"a": 1})]
    for path in written:
        assert os.stat(path).st_mode & 0o777 == expected, path
