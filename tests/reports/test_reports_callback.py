"""ReportCallback driven through Ray Tune's own CallbackList (no cluster needed),
and `import reports` staying free of Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from reports_fixtures import REPO, ExperimentWriter, cfg, metrics

import reports


def test_import_reports_does_not_import_ray():
    code = (
        "import sys, reports, reports.__main__\n"
        "reports.build_report; reports.load\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def callback_list():
    tune_callback = pytest.importorskip("ray.tune.callback")
    return tune_callback.CallbackList


@pytest.mark.parametrize("background", [True, False])
def test_callback_refreshes_every_n_results_and_at_the_end(tmp_path, callback_list, background):
    from reports import ReportCallback  # resolved lazily, imports Ray

    w = ExperimentWriter(tmp_path / "exp")
    cb = ReportCallback(w.root, every=2, plots=False, background=background)
    tune_callbacks = callback_list([cb])
    report = w.root / "report"
    c1 = cfg("magnitude", "unstructured", 0.5, "one_shot")
    c2 = cfg("taylor", "structured", 0.5, "one_shot")
    row1 = metrics(0.96875, 0.5, 34048, 17110, 52210, 17226, 8709)
    row2 = metrics(0.9375, 0.5, 8832, 8832, 18370, 4522, 4522)

    def result(trial_id, config, epoch, row):
        # The orchestrator's ledger callback writes the line, then Tune notifies ours.
        w.result(trial_id, config, epoch, **row)
        tune_callbacks.on_trial_result(iteration=epoch, trials=[], trial=None,
                                       result={"epoch": epoch, **row})

    result("t1", c1, 1, row1)
    assert not report.exists()  # 1 result < every
    result("t2", c2, 1, row2)
    cb.wait()  # a background refresh runs in a child process
    assert cb.builds == 1
    assert reports.load(w.root)["trials"]["trial_id"].tolist() == ["dense", "t1", "t2"]
    assert reports.load(w.root)["final"]["trial_id"].tolist() == ["dense"]  # none finished
    w.status("t1", c1, "completed", "max epochs reached")
    result("t2", c2, 2, row2)
    assert cb.builds == 1
    w.status("t2", c2, "stopped", "ASHA")
    tune_callbacks.on_experiment_end(trials=[])
    assert cb.builds == 2
    final = reports.load(w.root)["final"]
    assert final["trial_id"].tolist() == ["dense", "t1", "t2"]
    assert (report / "fronts.png").is_file() and (report / "fronts.html").is_file()


def test_callback_survives_a_broken_ledger(tmp_path, callback_list, caplog):
    from reports.callback import ReportCallback

    w = ExperimentWriter(tmp_path / "exp")
    with w.ledger.open("a") as f:
        f.write("garbage\n" + json.dumps({"type": "status", "trial_id": "x",
                                          "status": "completed"}) + "\n")
    cb = ReportCallback(w.root, every=1, plots=False)
    callback_list([cb]).on_trial_result(iteration=1, trials=[], trial=None, result={})
    cb.wait()
    assert cb.builds == 0
    assert "report refresh" in caplog.text


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_callback_rejects_bad_every(tmp_path, every):
    from reports.callback import ReportCallback

    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        ReportCallback(tmp_path, every=every)


def test_callback_leaves_the_final_build_to_its_caller_when_asked(tmp_path, callback_list):
    from reports import ReportCallback

    w = ExperimentWriter(tmp_path / "exp")
    cb = ReportCallback(w.root, every=5, plots=False, at_end=False)
    c1 = cfg("magnitude", "unstructured", 0.5, "one_shot")
    w.result("t1", c1, 1, **metrics(0.96875, 0.5, 34048, 17110, 52210, 17226, 8709))
    w.status("t1", c1, "completed", "max epochs reached")
    callback_list([cb]).on_experiment_end(trials=[])
    assert cb.builds == 0 and not (w.root / "report").exists()


def test_a_refresh_runs_off_the_driver_one_at_a_time(tmp_path, callback_list):
    """The driver's hook starts the rebuild in a child process and returns; while it runs,
    more results start no second one; the end of the experiment waits for it."""
    from reports import ReportCallback

    w = ExperimentWriter(tmp_path / "exp")
    cb = ReportCallback(w.root, every=1, plots=False, at_end=False)
    tune_callbacks = callback_list([cb])
    c1 = cfg("magnitude", "unstructured", 0.5, "one_shot")
    w.result("t1", c1, 1, **metrics(0.96875, 0.5, 34048, 17110, 52210, 17226, 8709))
    tune_callbacks.on_trial_result(iteration=1, trials=[], trial=None, result={})
    child = cb._child
    assert child is not None and cb.builds == 0  # started, not waited for
    tune_callbacks.on_trial_result(iteration=2, trials=[], trial=None, result={})
    assert cb._child is child or child.poll() is not None  # never two at once
    tune_callbacks.on_experiment_end(trials=[])
    assert cb._child is None and cb.builds >= 1
    assert reports.load(w.root)["trials"]["trial_id"].tolist() == ["dense", "t1"]


def test_a_late_refresh_never_undoes_a_later_build(tmp_path):
    """A refresh that read a shorter ledger and finishes after a build of the longer one
    leaves the later report in place (if_newer); without if_newer it writes as asked."""
    from reports.build import build_report, write_report
    from reports.ledger import read_experiment
    from reports.tables import build_tables

    w = ExperimentWriter(tmp_path / "exp")
    c1 = cfg("magnitude", "unstructured", 0.5, "one_shot")
    w.result("t1", c1, 1, **metrics(0.96875, 0.5, 34048, 17110, 52210, 17226, 8709))
    old = read_experiment(w.root)  # the refresh reads ...
    w.result("t2", c1, 1, **metrics(0.9375, 0.5, 34048, 17110, 52210, 17226, 8709))
    build_report(w.root, plots=False)  # ... a later build publishes first
    assert write_report(build_tables(old), w.root / "report", plots=False,
                        ledger_bytes=old.ledger_bytes, if_newer=True) == {}
    assert reports.load(w.root)["trials"]["trial_id"].tolist() == ["dense", "t1", "t2"]
    write_report(build_tables(old), w.root / "report", plots=False, ledger_bytes=old.ledger_bytes)
    assert reports.load(w.root)["trials"]["trial_id"].tolist() == ["dense", "t1"]


def test_show_reads_a_current_report_and_recomputes_a_stale_one(tmp_path):
    """On an experiment directory, open_report reads report/'s Parquet files when they were
    built from the ledger as it is now (fast at 10,000 trials), and computes afresh once a
    line or a model was added."""
    from reports.build import build_report, open_report

    w = ExperimentWriter(tmp_path / "exp")
    c1 = cfg("magnitude", "unstructured", 0.5, "one_shot")
    w.result("t1", c1, 1, **metrics(0.96875, 0.5, 34048, 17110, 52210, 17226, 8709))
    w.status("t1", c1, "completed", "max epochs reached")
    build_report(w.root, plots=False)
    frames, meta, title = open_report(w.root)
    assert meta["report"]["build_id"] != "in-memory" and title == "Prunefront report: digits-mlp"
    assert frames["final"]["trial_id"].tolist() == ["dense", "t1"]
    w.save_model("t1")  # copied in after the build: pick must see it
    os.utime(w.root / "models", ns=(2**62, 2**62))
    frames, meta, _ = open_report(w.root)
    assert meta["report"]["build_id"] == "in-memory"
    assert frames["final"]["model_dir"].tolist()[1] == "models/t1"
    os.utime(w.root / "models", ns=(0, 0))
    build_report(w.root, plots=False)
    assert open_report(w.root)[1]["report"]["build_id"] != "in-memory"
    w.result("t2", c1, 1, **metrics(0.9375, 0.5, 34048, 17110, 52210, 17226, 8709))
    frames, meta, _ = open_report(w.root)
    assert meta["report"]["build_id"] == "in-memory"
    assert frames["trials"]["trial_id"].tolist() == ["dense", "t1", "t2"]
