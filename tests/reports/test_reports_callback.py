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


def test_callback_refreshes_every_n_results_and_at_the_end(tmp_path, callback_list):
    from reports import ReportCallback  # resolved lazily, imports Ray

    w = ExperimentWriter(tmp_path / "exp")
    cb = ReportCallback(w.root, every=2, plots=False)
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
