"""Malformed configs through the real command line: one line on stderr, exit 2, no Ray.

Each case runs the entry point in a fresh interpreter (``orchestrator/search.py`` once it
exists, else ``python -m orchestrator.cli``). The cases run concurrently, since most of
their time is interpreter and torch start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEARCH = ROOT / "orchestrator" / "search.py"

# Valid apart from what a case changes (keeps the search small, so errors are about the case).
BASE = """\
name: cli-test
search:
  num_samples: 2
  space: {criterion: [magnitude], granularity: [unstructured], schedule: [one_shot]}
"""


def entry() -> list[str]:
    if SEARCH.is_file():
        return [sys.executable, str(SEARCH)]
    return [sys.executable, "-m", "orchestrator.cli"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.pop("RAY_ADDRESS", None)
    return e


@dataclass(frozen=True)
class Case:
    id: str
    yaml: str | None  # config file text (None: no --config written)
    args: tuple[str, ...]
    expect: str  # fragment of the error line


CASES = [
    Case("unknown-criterion", BASE, ("--set", "search.space.criterion=[magnitude, obd]"),
         "search.space.criterion: unknown value 'obd'; valid choices: adaptive_attention"),
    Case("amount-outside-unit-interval", BASE, ("--set", "search.space.amount={low: 0.5, high: 1.2}"),
         "search.space.amount: 1.2 is invalid for threshold_rule fraction"),
    Case("negative-epochs", BASE + "dense: {epochs: -2}\n", (), "dense.epochs: -2 is too small; must be an integer >= 0"),
    Case("negative-search-epochs", BASE, ("--set", "search.epochs=-1"), "search.epochs: -1 is too small"),
    Case("unknown-dataset", BASE + "data: {dataset: svhn}\n", (),
         "data.dataset: unknown value 'svhn'; valid choices: cifar10, cifar100, digits"),
    Case("workers-never-fit", BASE + "resources: {workers: 64, cpus_per_worker: 1}\n", (),
         "resources.workers=64 needs 64 CPUs per trial but the cluster has"),
    Case("unwritable-storage", BASE + "storage: /proc/prunefront-storage\n", (), "storage: cannot write to '/proc'"),
    Case("relative-storage", BASE + "storage: runs/tune\n", (), "storage: 'runs/tune' is relative; give an absolute path or a URI"),
    Case("unknown-top-level-key", BASE + "trials: 5\n", (), "trials: unknown key; allowed keys: name, seed, output"),
    Case("wrong-type", BASE + "data: {batch_size: big}\n", (), "data.batch_size: got a string 'big'; expected an integer"),
    Case("bad-set-syntax", BASE, ("--set", "search.num_samples"), "--set 'search.num_samples': not KEY=VALUE; write a dotted key"),
    Case("unknown-scheduler", BASE + "scheduler: {name: pbt}\n", (), "scheduler.name: unknown value 'pbt'; valid choices: asha, moasha, fifo"),
    Case("objective-not-a-metric", BASE + "scheduler: {name: moasha, objectives: {val_accuracy: max, top5: max}}\n", (),
         "scheduler.objectives: unknown value 'top5'; valid choices: val_accuracy, val_loss"),
    Case("empty-choice-list", BASE, ("--set", "search.space.scope=[]"), "search.space.scope: the choice list is empty"),
    Case("low-above-high", BASE, ("--set", "search.space.lr={low: 0.1, high: 0.01}"), "search.space.lr: low 0.1 must be < high 0.01"),
    Case("schedule-ends-after-fine-tuning", BASE,
         ("--set", "search.space.schedule=[gradual]", "--set", "search.epochs=1",
          "--set", "search.schedule_params.gradual.end_epoch=1"),
         "search.schedule_params.gradual: its ramp ends at end_epoch 1.0, not before fine-tuning ends (search.epochs 1)"),
    Case("negative-lr", BASE, ("--set", "search.space.lr=[0, -0.01]"), "search.space.lr: -0.01 is out of range; must be >= 0"),
    Case("missing-config-file", None, ("--config", "{tmp}/nope.yaml"), "--config: '{tmp}/nope.yaml' does not exist"),
    Case("invalid-yaml", "search: {num_samples: 2\nname: x\n", (), "config.yaml: invalid YAML at line"),
    Case("top-level-not-a-mapping", "- a\n- b\n", (), "config.yaml: the top level is a list; it must be a mapping of keys"),
    Case("imagefolder-path-missing", BASE + "data: {dataset: imagefolder, root: /nonexistent/imagenet}\n", (),
         "data.root: imagefolder directory '/nonexistent/imagenet' does not exist"),
    Case("model-factory-not-importable", BASE + "model: {name: 'no_such_pkg.models:build'}\n", (),
         "model.name: cannot import 'no_such_pkg.models'"),
    Case("resume-without-experiment", None, ("--resume", "{tmp}"), "--resume: no experiment at '{tmp}'"),
    Case("unknown-flag", BASE, ("--trials", "4"), "unrecognized arguments: --trials 4; see --help"),
    Case("moasha-single-objective", BASE + "scheduler: {name: moasha, objectives: {val_accuracy: max}}\n", (),
         "moasha needs at least two objectives; use asha for one metric"),
    Case("test-split-decides-nothing", BASE + "scheduler: {name: asha, metric: test_accuracy}\n", (),
         "scheduler.metric: test_accuracy is measured on the test split, which no decision may use"),
    Case("rung-before-schedule-target", BASE, ("--set", "search.space.schedule=[gradual]",
                                               "--set", "search.schedule_params.gradual.end_epoch=1.5"),
         "scheduler.grace_period: the first rung judges trials after epoch 1, but schedule gradual reaches its "
         "target only then or later"),
]


def _run(case: Case, tmp: Path) -> tuple[Case, subprocess.CompletedProcess]:
    d = tmp / case.id
    d.mkdir()
    args = [a.replace("{tmp}", str(d)) for a in case.args]
    if case.yaml is not None:
        (d / "config.yaml").write_text(case.yaml)
        args = ["--config", str(d / "config.yaml"), *args]
    if "--output" not in args and "--resume" not in args:
        args += ["--output", str(d / "out")]
    proc = subprocess.run(entry() + args, cwd=d, env=env(), capture_output=True, text=True, timeout=120)
    return case, proc


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        done = list(pool.map(lambda c: _run(c, tmp), CASES))
    return {c.id: (p, tmp / c.id) for c, p in done}


def test_at_least_fifteen_malformed_configs():
    assert len(CASES) >= 15
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_malformed_config_is_one_line_exit_2(case, results):
    proc, d = results[case.id]
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: ") and "; " in line
    assert case.expect.replace("{tmp}", str(d)) in line
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def _in_fresh_interpreter(args: list[str], cwd: Path) -> dict:
    """Run the entry point inside ``python -c``; report exit code, output and Ray modules."""
    target = (
        f"runpy.run_path({str(SEARCH)!r}, run_name='__main__')"
        if SEARCH.is_file()
        else "runpy.run_module('orchestrator.cli', run_name='__main__', alter_sys=True)"
    )
    code = textwrap.dedent(
        f"""
        import contextlib, io, json, runpy, sys
        sys.argv = ['prunefront-search'] + {args!r}
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                {target}
            code = 0
        except SystemExit as e:
            code = e.code
        ray = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))
        print(json.dumps({{'code': code, 'ray': ray, 'stdout': out.getvalue()}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip(), proc.stderr
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


def test_ray_is_not_imported_when_parsing_fails(tmp_path):
    cfg = tmp_path / "config.yaml"
    # A plan refusal: the deepest check before Ray (the whole config validated, torch loaded).
    cfg.write_text(BASE + "resources: {workers: 64}\n")
    out = _in_fresh_interpreter(["--config", str(cfg), "--output", str(tmp_path / "out")], tmp_path)
    assert (out["code"], out["ray"]) == (2, [])
    assert out["stderr"].startswith("error: resources.workers=64 needs 64 CPUs per trial")


def test_dry_run_prints_the_plan_without_ray_and_creates_nothing(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(BASE)
    args = ["--config", str(cfg), "--output", str(tmp_path / "out"), "--dry-run", "--cluster-cpus", "4"]
    out = _in_fresh_interpreter(args, tmp_path)
    assert (out["code"], out["ray"]) == (0, [])
    assert "trials:      2" in out["stdout"]
    assert "per trial:   driver 0.1 CPU + 1 worker(s) x (1 CPU)" in out["stdout"]
    assert "max_concurrent_trials = 2" in out["stdout"]
    assert not (tmp_path / "out").exists()


def test_help_documents_the_flags():
    proc = subprocess.run(entry() + ["--help"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--config", "--set", "--output", "--resume", "--dry-run", "--cluster-cpus", "configs/default.yaml"):
        assert flag in proc.stdout


# --------------------------------------------------------------------------------------
# The same parser in-process (cheap: torch is already loaded here)
# --------------------------------------------------------------------------------------


def _parse(args: list[str]):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from orchestrator import cli

    return cli.parse(args)


def _error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        _parse(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err.strip()


def _small_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(BASE)
    return cfg


def test_existing_experiment_is_never_taken_over(tmp_path, capsys):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "experiment.json").write_text("{}")
    err = _error(["--config", str(_small_config(tmp_path)), "--output", str(out)], capsys)
    assert err == (
        f"error: output: '{out}' already holds an experiment; continue it with --resume {out} "
        "or choose a new --output"
    )
    # An existing directory without an experiment (e.g. made by hand) is fine.
    cfg, args = _parse(["--config", str(_small_config(tmp_path)), "--output", str(tmp_path), "--dry-run"])
    assert cfg.output == str(tmp_path) and not args.resuming


def test_output_that_cannot_be_created_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = _error(["--config", str(_small_config(tmp_path)), "--output", str(blocker / "out")], capsys)
    assert f"output: cannot create '{blocker / 'out'}': '{blocker}' is a file" in err


def test_default_output_is_under_prunefront_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, args = _parse(["--config", str(_small_config(tmp_path)), "--dry-run"])
    assert cfg.output == str(tmp_path / "prunefront-results" / "cli-test")
    assert args.plan is not None and args.checked_files


def test_resume_reads_the_recorded_config_and_applies_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recorded, _ = _parse(["--config", str(_small_config(tmp_path)), "--dry-run"])
    exp = tmp_path / "prunefront-results" / "cli-test"
    exp.mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps({"name": "cli-test", "config": recorded.to_dict()}))
    # --set may change resources only (a restored search keeps its num_samples anyway).
    cfg, args = _parse(["--resume", "cli-test", "--set", "resources.max_failures=5", "--dry-run"])
    assert args.resuming and cfg.output == str(exp)
    assert cfg.resources.max_failures == 5
    assert cfg.search.space == recorded.search.space
    # By path too; and --config next to --resume is refused (the recorded config wins).
    assert _parse(["--resume", str(exp), "--dry-run"])[0].output == str(exp)


def test_resume_refuses_a_second_config(tmp_path, capsys):
    err = _error(["--resume", str(tmp_path), "--config", str(_small_config(tmp_path))], capsys)
    assert "--resume: the config comes from the experiment's experiment.json; drop --config" in err


def test_dry_run_cluster_flags_beat_resources_cluster_and_skip_local_files(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(BASE + "data: {dataset: cifar10, root: /nonexistent}\nresources: {cluster: {nodes: 2, cpus: 8}}\n")
    c, args = _parse(["--config", str(cfg), "--output", str(tmp_path / "o"), "--dry-run", "--cluster-cpus", "3"])
    assert [(n.cpus, n.gpus) for n in args.plan.cluster.nodes] == [(3.0, 0.0), (3.0, 0.0)]
    assert not args.checked_files  # cifar10 lives on the cluster, not here
    from orchestrator import cli

    assert "dataset and checkpoint not checked" in cli.describe(c, args)
