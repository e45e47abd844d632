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
    assert [c.front for c in out] == list(reports.FRONTS)
    for c in out:
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
    assert "8 trials: 4 completed, 2 stopped, 1 errored, 1 running" in out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    flops = lines[lines.index(next(ln for ln in lines if ln.startswith("accuracy vs dense FLOPs"))):]
    assert "3 of 7 finished trials on the front" in flops[0]
    # Rank-1 trials by increasing FLOPs, knee marked, dense reference last.
    table = flops[3:7]
    assert [row.split()[0] for row in table] == ["a1b2c_00004", "a1b2c_00002", "a1b2c_00005",
                                                 "dense"]
    assert table[1].split()[1:3] == ["taylor", "struct"] and table[1].rstrip().endswith("*")
    assert "0.9583" in table[1] and "8.83k" in table[1]
    assert table[3].split()[1] == "(reference)"


def test_cli_build_then_show_from_the_report_directory(experiment_dir, capsys):
    # In-process (main() is what `python -m reports` runs) to keep the suite quick.
    from reports.__main__ import main

    assert main(["build", str(experiment_dir), "--no-plots"]) == 0
    assert capsys.readouterr().out.split() == [
        str(experiment_dir / "report" / f"{t}.parquet") for t in ("trials", "final", "fronts")
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
    for ref in ("src=", "<script", "<link", "@import", "url(http"):
        assert ref not in page  # nothing is fetched
    assert "a1b2c_00002" in page and "knee" in page and "2.14.1" in page


def test_cli_compare(two_experiments):
    proc = _run("compare", str(two_experiments["A"]), str(two_experiments["B"]))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("hypervolume  A 0.7500  B 0.7656  -> B") == 3
    assert out.count("A's front: 0 of 2 dominated by B;  B's front: 1 of 3 dominated by A") == 3


def test_cli_bad_input_is_one_line_without_traceback(tmp_path):
    proc = _run("show", str(tmp_path / "nowhere"))
    assert proc.returncode == 1
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
    assert main([a.format(empty=empty) for a in command]) == 1
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
    assert main(["show", str(w.root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "the dense baseline (dense/metrics.json) is not written yet" in err


def test_compare_names_a_report_without_front_summaries(two_experiments):
    frames_a, meta_a, _ = open_report(two_experiments["A"])
    frames_b, _, _ = open_report(two_experiments["B"])
    with pytest.raises(ValueError, match="report B has no summary of front 'accuracy_flops'"):
        reports.compare_fronts(frames_a["fronts"], frames_b["fronts"], meta_a["report"]["fronts"], {})
