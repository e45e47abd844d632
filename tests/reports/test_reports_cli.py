"""`python -m reports` (show / plot / compare / build) and the comparison it prints."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from reports_fixtures import REPO, cfg, metrics

import reports
from reports.build import open_report

# Two experiments on the same dense model (cost 16 on every axis), binary-fraction
# values so hypervolumes are exact: A = (0.875, 4), (0.75, 2);
# B = (0.96875, 8), (0.75, 4), (0.5, 1).
DENSE16 = {**metrics(0.984375, 0.0, 16, 16, 16, 64, 64)}
POINTS = {"A": [(0.875, 4), (0.75, 2)], "B": [(0.96875, 8), (0.75, 4), (0.5, 1)]}


@pytest.fixture
def two_experiments(make_experiment):
    dirs = {}
    for name, pts in POINTS.items():
        w = make_experiment(name, dense=DENSE16)
        for i, (acc, cost) in enumerate(pts):
            c = cfg("taylor", "structured", 1 - cost / 16, "one_shot")
            w.result(f"{name}{i}", c, 1, **metrics(acc, 1 - cost / 16, cost, cost, cost, 4 * cost,
                                                  4 * cost))
            w.status(f"{name}{i}", c, "completed", "max epochs reached")
        dirs[name] = w.root
    return dirs


def test_compare_fronts_exact(two_experiments):
    frames_a, meta_a, _ = open_report(two_experiments["A"])
    frames_b, meta_b, _ = open_report(two_experiments["B"])
    out = reports.compare_fronts(frames_a["fronts"], frames_b["fronts"],
                                 meta_a["report"]["fronts"], meta_b["report"]["fronts"])
    assert [c.front for c in out] == list(reports.DEFAULT_FRONTS)
    for c in out:
        if c.front == "accuracy_latency":  # the fixture's latencies are not its costs
            continue
        assert c.reference == (0.0, 16.0)
        assert c.hv_a == (0.875 * 12 + 0.75 * 2) / 16  # 0.75
        assert c.hv_b == (0.96875 * 8 + 0.75 * 4 + 0.5 * 3) / 16  # 0.765625
        assert c.winner == "B"
        assert (c.n_a, c.n_b) == (2, 3)
        assert (c.a_dominated_by_b, c.b_dominated_by_a) == (0, 1)  # (0.75, 4) loses to A
        b = c.budgets
        assert b["budget"].tolist() == [1.6, 4.0, 8.0, 12.0, 16.0]
        assert b["better"].tolist() == ["B", "A", "B", "B", "B"]
        assert math.isnan(b["accuracy_a"][0]) and b["accuracy_b"][0] == 0.5
        assert (b["accuracy_a"][1], b["accuracy_b"][1]) == (0.875, 0.75)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "reports", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_show_prints_each_front(experiment_dir):
    proc = _run("show", str(experiment_dir))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # a1b2c_00008 errored before its first result: it counts, as in the search's last line
    assert "9 trials: 4 completed, 2 stopped, 2 errored, 1 running" in out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    flops = lines[lines.index(next(ln for ln in lines if ln.startswith("validation accuracy vs FLOPs"))):]
    # The dense model (0.975 at 34k FLOPs) dominates the three unstructured trials.
    assert "3 of 7 finished trials on the front" in flops[0]
    assert flops[1].endswith("; 3 dominated by a reference")
    # Rank-1 trials by increasing FLOPs, knee marked, the dense model competing (rank 1).
    table = flops[3:7]
    assert [row.split()[0] for row in table] == ["a1b2c_00004", "a1b2c_00002*", "a1b2c_00005",
                                                 "dense"]  # *: the knee
    assert table[1].split()[1:3] == ["taylor", "struct"]
    assert "0.9583" in table[1] and "0.9543" in table[1] and "8.83k" in table[1]  # val, test
    assert table[3].split()[1] == "reference" and table[3].split()[-1] == "1"
    assert "which method wins" in out


def test_cli_build_then_show_from_the_report_directory(experiment_dir, capsys):
    # In-process (main() is what `python -m reports` runs) to keep the suite quick.
    from reports.__main__ import main

    assert main(["build", str(experiment_dir), "--no-plots"]) == 0
    assert capsys.readouterr().out.split() == [
        str(experiment_dir / "report" / f"{t}.parquet") for t in ("trials", "final", "fronts", "methods")
    ]
    assert main(["show", str(experiment_dir / "report")]) == 0
    from_report = capsys.readouterr().out
    assert main(["show", str(experiment_dir)]) == 0
    assert from_report == capsys.readouterr().out


def test_cli_plot_writes_png_and_self_contained_html(experiment_dir, tmp_path):
    out = tmp_path / "plots"
    proc = _run("plot", str(experiment_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    png = (out / "fronts.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    page = (out / "fronts.html").read_text()
    assert page.count("<svg") == 1
    for ref in ("src=", "<link", "@import", "url(http", "fetch(", "XMLHttpRequest"):
        assert ref not in page  # nothing is fetched: the hover script is inline
    assert "a1b2c_00002" in page and "knee" in page and "2.14.1" in page
    # Every trial's marker carries an id the hover script maps to its details.
    from reports.plots import point_id

    for trial in ("a1b2c_00002", "a1b2c_00004", "dense"):
        assert f'id="{point_id("accuracy_flops", trial)}"' in page
    assert '"validation accuracy": "0.9583"' in page and '"test accuracy": "0.9543"' in page


def test_cli_compare(two_experiments):
    proc = _run("compare", str(two_experiments["A"]), str(two_experiments["B"]))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("hypervolume  A 0.7500  B 0.7656  -> B") == 3
    assert out.count("A's front: 0 of 2 dominated by B;  B's front: 1 of 3 dominated by A") == 3


def test_cli_bad_input_is_one_line_without_traceback(tmp_path):
    proc = _run("show", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "nowhere: no such directory" in proc.stderr


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["show", "{empty}"], "holds no report"),
        (["build", "{empty}"], "is not an experiment directory"),
        (["compare", "{empty}", "{empty}"], "holds no report"),
    ],
)
def test_cli_errors_in_process(tmp_path, capsys, command, message):
    from reports.__main__ import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([a.format(empty=empty) for a in command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["show"], "the following arguments are required: DIR"),
        (["compare", "a"], "the following arguments are required: DIR_B"),
        (["draw", "a"], "invalid choice: 'draw'"),
    ],
)
def test_cli_usage_errors_are_one_line(capsys, argv, message):
    from reports.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("python -m reports")


def test_cli_without_a_dense_baseline_says_what_is_missing(make_experiment, capsys):
    from reports.__main__ import main

    w = make_experiment("nodense", dense=None)
    assert main(["show", str(w.root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "the dense baseline (dense/metrics.json) is not written yet" in err


def test_compare_names_a_report_without_front_summaries(two_experiments):
    frames_a, meta_a, _ = open_report(two_experiments["A"])
    frames_b, _, _ = open_report(two_experiments["B"])
    with pytest.raises(ValueError, match="report B has no summary of front 'accuracy_flops'"):
        reports.compare_fronts(frames_a["fronts"], frames_b["fronts"], meta_a["report"]["fronts"], {})


def test_pick_the_cheapest_trial_within_an_accuracy_drop(experiment_dir, capsys):
    from reports.__main__ import main

    assert main(["pick", str(experiment_dir), "--max-drop", "2"]) == 0
    out = capsys.readouterr().out
    # Saved models within 2 points of the dense 0.975 (validation): 00000, 00001 (34k FLOPs)
    # and 00002 (8.8k FLOPs): the cheapest by FLOPs wins.
    assert "trial     a1b2c_00002  (taylor+structured+one_shot, kept epoch 2)" in out
    assert "validation 0.9583, test 0.9543" in out
    path = experiment_dir / "models" / "a1b2c_00002" / "model.pt2"
    assert f"file      {path}" in out
    assert f"model = torch.export.load({str(path)!r}).module()" in out
    assert '"criterion": "taylor"' in out  # the config that produced it


def test_pick_the_most_accurate_trial_within_a_size_budget(experiment_dir, capsys):
    from reports.__main__ import main

    assert main(["pick", str(experiment_dir), "--max-size", "20KiB"]) == 0
    out = capsys.readouterr().out
    assert "a1b2c_00002" in out.splitlines()[1]  # 17.9 KiB at 0.9583 beats 5.1 KiB at 0.9306
    assert main(["pick", str(experiment_dir), "--max-size", "1KiB"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no saved trial meets file size <= 1.0KiB" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-size", "big"], "--max-size: 'big' is not a number"),
    ([], "give a budget"),
    (["--max-drop", "-1"], "--max-drop: -1 must be >= 0"),
])
def test_pick_bad_budgets_are_one_line(experiment_dir, capsys, argv, message):
    from reports.__main__ import main

    assert main(["pick", str(experiment_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_method_table_keeps_each_methods_best_validation_trial_per_level(experiment_dir):
    from reports.ledger import read_experiment
    from reports.tables import build_tables

    m = build_tables(read_experiment(experiment_dir)).methods
    at2 = m[(m["cost"] == "flops") & (m["level"] == 2.0)].set_index("method")
    # >= 2x fewer FLOPs than the dense 34k: 00002 and 00003 (8.8k), 00004 (2.3k); not 00005 (17.4k).
    assert set(at2.index) == {"taylor+structured+one_shot", "random+structured+one_shot",
                              "slimming+structured+iterative"}
    row = at2.loc["taylor+structured+one_shot"]
    assert (row["trial_id"], row["val_accuracy"], row["test_accuracy"]) == ("a1b2c_00002", 0.9583, 0.9543)
    assert row["compression"] == pytest.approx(34048 / 8832)
    assert m[(m["cost"] == "flops") & (m["level"] == 8.0)]["method"].tolist() == ["slimming+structured+iterative"]
