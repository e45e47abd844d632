"""--resume refuses a damaged experiment directory while parsing (before Ray starts), with
one line naming the file and line; dense.checkpoint refuses a model file that would run code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.orchestrator.test_cli_errors import _error, _parse  # noqa: F401 - one CLI-error helper
from tests.pruners.test_io_untrusted import _pickled_weight, _rewrite, _saved

ROOT = Path(__file__).resolve().parents[2]
BASE = """\
name: cli-test
search:
  num_samples: 2
  space: {criterion: [magnitude], granularity: [unstructured], schedule: [one_shot]}
"""


@pytest.fixture
def experiment(tmp_path) -> Path:
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(BASE)
    recorded, _ = _parse(["--config", str(cfg_file), "--output", str(tmp_path / "exp"), "--dry-run"])
    exp = tmp_path / "exp"
    (exp / "dense").mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps({"name": "cli-test", "config": recorded.to_dict()}))
    (exp / "dense" / "metrics.json").write_text(json.dumps({"val_accuracy": 0.9, "flops": 100}))
    line = {"type": "result", "trial_id": "t1", "epoch": 1, "val_accuracy": 0.8, "flops": 50}
    (exp / "results.jsonl").write_text(json.dumps(line) + "\n")
    return exp




def test_a_sound_experiment_resumes(experiment):
    cfg, args = _parse(["--resume", str(experiment), "--dry-run"])
    assert args.resuming and cfg.output == str(experiment)


def test_a_damaged_ledger_line_is_refused_at_parse_time(experiment, capsys):
    ledger = experiment / "results.jsonl"
    ledger.write_text(ledger.read_text() + '{"type": "res\n' + ledger.read_text())
    err = _error(["--resume", str(experiment), "--dry-run"], capsys)
    assert err == (f"error: --resume: {ledger}:2: not valid JSON; the ledger is damaged at this line; "
                   "repair or remove it, then resume again")


def test_a_torn_dense_metrics_file_is_refused_at_parse_time(experiment, capsys):
    dense = experiment / "dense" / "metrics.json"
    dense.write_text('{"val_accuracy": 0.9, "fl')
    err = _error(["--resume", str(experiment), "--dry-run"], capsys)
    assert err.startswith(f"error: --resume: {dense}: not valid JSON")


def test_dense_checkpoint_refuses_the_crafted_file_before_anything_runs(tmp_path):
    """`dense.checkpoint: that.pt2` reached pruners.load before 'does not fit model'."""
    from orchestrator.dense import load_checkpoint_state

    marker = tmp_path / "pwned"
    bad = _rewrite(_saved(tmp_path), tmp_path / "bad.pt2", _pickled_weight(marker))
    with pytest.raises(ValueError, match=r"^dense.checkpoint: .*bad.pt2: refused: .*use_pickle"):
        load_checkpoint_state(str(bad), search=None)
    assert not marker.exists()
