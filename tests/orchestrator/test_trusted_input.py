"""Nothing runs that shouldn't (issue 19, the config half): YAML aliases and duplicate keys,
counts above their bounds, ``--dry-run`` that imports no model module, and a ``--resume``
that matches its experiment (``--set`` limited to resources, stored state readable,
``dense/`` fitting the model). Each refusal is one line, exit 2, before Ray starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEARCH = ROOT / "orchestrator" / "search.py"
BASE = """\
name: trusted
search:
  num_samples: 2
  space: {criterion: [magnitude], granularity: [unstructured], schedule: [one_shot]}
"""


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.pop("RAY_ADDRESS", None)
    return e


def _error(args: list[str], capsys) -> str:
    from orchestrator import cli

    with pytest.raises(SystemExit) as e:
        cli.parse(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------- YAML


def test_a_nine_level_alias_bomb_is_refused_at_its_first_anchor(tmp_path, capsys):
    lines = ["model:", "  name: small_cnn", "  kwargs:", '    l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        lines.append(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")  # 9**9 strings once expanded
    path = _config(tmp_path, BASE + "\n".join(lines) + "\n")
    err = _error(["--config", str(path), "--output", str(tmp_path / "out"), "--dry-run"], capsys)
    assert err == ("error: config.yaml: line 8: key 'l0': anchor &l0; YAML anchors and aliases are not allowed "
                   "in a config (they can expand without bound): write the value out")


def test_an_alias_in_set_is_refused(tmp_path, capsys):
    path = _config(tmp_path, BASE)
    err = _error(["--config", str(path), "--set", "search.space.lr=[&x 0.01, *x]", "--dry-run"], capsys)
    assert err.startswith("error: --set 'search.space.lr=[&x 0.01, *x]': anchor &x; YAML anchors and aliases")


def test_two_search_blocks_are_refused_naming_line_and_key(tmp_path, capsys):
    path = _config(tmp_path, BASE + "search:\n  num_samples: 3\n")
    err = _error(["--config", str(path), "--output", str(tmp_path / "out"), "--dry-run"], capsys)
    assert err == "error: config.yaml: line 5: duplicate key 'search' (first given at line 2); keep one"


def test_a_nested_duplicate_key_is_refused(tmp_path, capsys):
    path = _config(tmp_path, BASE + "data:\n  batch_size: 32\n  augment: false\n  batch_size: 64\n")
    err = _error(["--config", str(path), "--dry-run"], capsys)
    assert err == "error: config.yaml: line 8: duplicate key 'batch_size' (first given at line 6); keep one"


def test_the_shipped_configs_still_load():
    from orchestrator.loading import read_yaml

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert read_yaml(path)


# ------------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("key, value, bound", [
    ("search.num_samples", 1_000_000_000, 100_000),
    ("search.epochs", 1_000_000_000, 10_000),
    ("dense.epochs", 1_000_000_000, 10_000),
    ("metrics.latency_batch_size", 1_000_000_000, 65_536),
    ("metrics.latency_repeats", 1_000_000_000, 100_000),
    ("data.num_workers", 100_000, 1_024),
    ("resources.workers", 100_000, 4_096),
    ("data.batch_size", 1_000_000_000, 65_536),
    ("seed", 2**40, 2**32 - 1),
])
def test_counts_above_their_bound_are_refused_naming_it(key, value, bound, tmp_path, capsys):
    path = _config(tmp_path, BASE)
    err = _error(["--config", str(path), "--set", f"{key}={value}", "--dry-run"], capsys)
    assert err == f"error: {key}: {value} is too large; must be <= {bound} (bounds: orchestrator/limits.py)"


def test_the_bounds_live_in_one_table_the_schema_publishes():
    from orchestrator.limits import LIMITS
    from orchestrator.loading import json_schema

    schema = json_schema()
    assert schema["$defs"]["SearchSettings"]["properties"]["num_samples"]["maximum"] == LIMITS["search.num_samples"]
    assert schema["$defs"]["MetricsConfig"]["properties"]["latency_batch_size"]["maximum"] == LIMITS[
        "metrics.latency_batch_size"]
    assert json.loads((ROOT / "configs" / "schema.json").read_text()) == schema


# ------------------------------------------------------------------------------- code in configs


def test_dry_run_locates_a_factory_module_without_importing_it(tmp_path):
    # `this` prints the Zen of Python when imported: a dry run must not import it.
    proc = subprocess.run([sys.executable, str(SEARCH), "--config", str(_config(tmp_path, BASE)), "--set",
                           "model.name=this:x", "--output", str(tmp_path / "out"), "--dry-run"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Beautiful is better than ugly" not in proc.stdout + proc.stderr
    assert "code:        model.name imports 'this' (" in proc.stdout
    assert "not run by --dry-run (configs are trusted code)" in proc.stdout


def test_dry_run_does_not_run_a_packages_init_either(tmp_path, capsys):
    pkg = tmp_path / "evilpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\n")
    (pkg / "models.py").write_text("def build(**kw): raise SystemExit('ran')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        from orchestrator import cli

        cfg, args = cli.parse(["--config", str(_config(tmp_path, BASE)), "--set", "model.name=evilpkg.models:build",
                               "--output", str(tmp_path / "out"), "--dry-run"])
        assert "evilpkg/models.py" in cli.describe(cfg, args)
        err = _error(["--config", str(_config(tmp_path, BASE)), "--set", "model.name=evilpkg.nothere:build",
                      "--dry-run"], capsys)
        assert err.startswith("error: model.name: cannot find module 'evilpkg.nothere' (searched without importing")
    finally:
        sys.path.remove(str(tmp_path))
    assert not (tmp_path / "ran").exists() and "evilpkg" not in sys.modules


# ------------------------------------------------------------------------------- --resume


def _experiment(tmp_path: Path, **config) -> Path:
    """A started experiment: its record, a ledger of two lines, and a dense baseline."""
    import torch

    from orchestrator.config import SearchConfig
    from orchestrator.loading import apply_overrides, read_yaml
    from orchestrator.models import build_model
    from orchestrator.trial import state_dict_bytes

    out = tmp_path / "exp"
    (out / "dense").mkdir(parents=True)
    raw = apply_overrides(read_yaml(_config(tmp_path, BASE)), [f"{k}={v}" for k, v in config.items()])
    cfg = SearchConfig.from_dict({**raw, "output": str(out)})
    (out / "experiment.json").write_text(json.dumps({"name": cfg.name, "config": cfg.to_dict()}))
    (out / "results.jsonl").write_text('{"type": "result", "trial_id": "a", "epoch": 1}\n'
                                       '{"type": "status", "trial_id": "a", "status": "completed"}\n')
    torch.manual_seed(0)
    (out / "dense" / "state_dict.pt").write_bytes(state_dict_bytes(build_model(cfg.model.name, 10, 1)))
    (out / "dense" / "metrics.json").write_text(json.dumps({"val_accuracy": 0.9}))
    (out / "dense" / "model.pt2").write_bytes(b"")
    return out


def test_resume_with_a_resources_change_is_accepted(tmp_path):
    from orchestrator import cli

    out = _experiment(tmp_path)
    cfg, args = cli.parse(["--resume", str(out), "--set", "resources.max_failures=5",
                           "--set", "resources.driver_cpus=0.2", "--dry-run"])
    assert args.resuming and cfg.resources.max_failures == 5


@pytest.mark.parametrize("override, line", [
    ("seed=99", "error: --set seed: --resume cannot change it (0 -> 99)"),
    ("data.eval_subset=50", "error: --set data.eval_subset: --resume cannot change it (null -> 50)"),
    ("model.name=small_resnet", "error: --set model.name: --resume cannot change it ('small_cnn' -> 'small_resnet')"),
    ("resources.bf16=true", "error: --set resources.bf16: --resume cannot change it (false -> true)"),
])
def test_resume_set_that_changes_the_results_is_refused(override, line, tmp_path, capsys):
    out = _experiment(tmp_path)
    err = _error(["--resume", str(out), "--set", override, "--dry-run"], capsys)
    assert err.startswith(line + ": the experiment's results were produced with the recorded value; only "
                          "resources.* (not resources.bf16) may change on --resume"), err


@pytest.mark.parametrize("model, classes, what", [
    ("small_resnet", 10, "the model's 'classifier.bias' is not in the file"),
    ("small_cnn", 100, "'classifier.bias' has shape [100] in the file, [10] in the model"),
])
def test_resume_with_a_dense_baseline_of_another_model_is_refused(model, classes, what, tmp_path, capsys):
    from orchestrator.models import build_model
    from orchestrator.trial import state_dict_bytes

    out = _experiment(tmp_path)
    (out / "dense" / "state_dict.pt").write_bytes(state_dict_bytes(build_model(model, classes, 1)))
    err = _error(["--resume", str(out), "--dry-run"], capsys)
    assert err == (f"error: --resume: '{out / 'dense' / 'state_dict.pt'}' does not fit model.name 'small_cnn' "
                   f"({what}); dense/ was trained for another model: resume with the experiment's own config, or "
                   "start a new experiment")


@pytest.mark.parametrize("damage, line", [
    ("ledger", "error: --resume: {out}/results.jsonl:1: not valid JSON; the ledger is damaged at this line; "
               "repair or remove it, then resume again"),
    ("non-utf8", "error: --resume: {out}/results.jsonl:3: not UTF-8 text"),
    ("dense-metrics", "error: --resume: {out}/dense/metrics.json: not valid JSON"),
])
def test_resume_dry_run_reads_the_stored_state(damage, line, tmp_path, capsys):
    out = _experiment(tmp_path)
    ledger = out / "results.jsonl"
    if damage == "ledger":
        ledger.write_text('{"type": "resu\n' + ledger.read_text())
    elif damage == "non-utf8":
        ledger.write_bytes(ledger.read_bytes() + b'{"x": "\xff"}\n')
    else:
        (out / "dense" / "metrics.json").write_text('{"val_accuracy": 0.')
    err = _error(["--resume", str(out), "--dry-run"], capsys)
    assert err.startswith(line.format(out=out)), err
