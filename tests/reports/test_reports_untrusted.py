"""Reports on damaged or nonsensical inputs: one line naming file, line and key, exit 2."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from reports.__main__ import main
from reports.ledger import check_experiment_dir
from tests.reports.reports_fixtures import write_fixture_experiment


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert err.count("\n") == (1 if rc else 0) and "Traceback" not in err, err
    return rc, err.strip()


def _edit_ledger(root: Path, old: str, new: str) -> None:
    ledger = root / "results.jsonl"
    text = ledger.read_text()
    assert old in text
    ledger.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(("old", "new", "message"), [
    ('"val_accuracy": 0.9417', '"val_accuracy": 94.17', "'val_accuracy' is 94.17; expected a number in [0, 1]"),
    ('"flops": 5710', '"flops": -5', "'flops' is -5; expected a finite number >= 0"),
    ('"sparsity": 0.6', '"sparsity": NaN', "'sparsity' is nan; expected a number in [0, 1]"),
    ('"size_bytes": 11950', '"size_bytes": 1e999', "'size_bytes' is inf; expected a finite number >= 0"),
])
@pytest.mark.parametrize("command", ["show", "build", "pick"])
def test_out_of_range_metric_in_the_ledger_is_refused(tmp_path, capsys, old, new, message, command):
    root = tmp_path / "exp"
    write_fixture_experiment(root)
    _edit_ledger(root, old, new)
    extra = ["--max-drop", "5"] if command == "pick" else ["--no-plots"] if command == "build" else []
    rc, err = _cli(capsys, command, root, *extra)
    assert rc == 2 and f"{root / 'results.jsonl'}:" in err and message in err, err
    assert not (root / "report").exists()


@pytest.mark.parametrize(("tail", "message"), [
    (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
    (b'{"type": "status", "trial_id": "\xff\xfe"}', "not UTF-8 text"),
    (b'{"type": "result", "trial_id": "x", "epoch": 1, "flops": ' + b"9" * 5000 + b"}", "not valid JSON"),
])
def test_damaged_ledger_line_is_one_line_naming_the_line(tmp_path, capsys, tail, message):
    root = tmp_path / "exp"
    write_fixture_experiment(root)
    ledger = root / "results.jsonl"
    n = ledger.read_bytes().count(b"\n")
    ledger.write_bytes(ledger.read_bytes() + tail + b"\n{}\n")
    rc, err = _cli(capsys, "show", root)
    assert rc == 2 and f"{ledger}:{n + 1}: {message}" in err, err
    with pytest.raises(ValueError, match=message):
        check_experiment_dir(root)


def test_torn_dense_metrics_are_named(tmp_path, capsys):
    root = tmp_path / "exp"
    write_fixture_experiment(root)
    dense = root / "dense" / "metrics.json"
    dense.write_text(dense.read_text()[:40])
    rc, err = _cli(capsys, "show", root)
    assert rc == 2 and f"{dense}: not valid JSON" in err
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        check_experiment_dir(root)


def test_dense_metric_out_of_range_is_named(tmp_path, capsys):
    root = tmp_path / "exp"
    write_fixture_experiment(root)
    dense = root / "dense" / "metrics.json"
    dense.write_text(json.dumps({**json.loads(dense.read_text()), "val_accuracy": 97.5}))
    rc, err = _cli(capsys, "show", root)
    assert rc == 2 and f"{dense}: 'val_accuracy' is 97.5" in err


def test_bad_report_fronts_in_experiment_json(tmp_path, capsys):
    root = tmp_path / "exp"
    write_fixture_experiment(root)
    info = json.loads((root / "experiment.json").read_text())
    info["config"]["report"] = {"fronts": "bogus"}
    (root / "experiment.json").write_text(json.dumps(info))
    for command in ("show", "build"):
        rc, err = _cli(capsys, command, root)
        assert rc == 2 and "report.fronts is 'bogus'; expected a list of costs" in err


def test_unrelated_parquet_files_are_refused(tmp_path, capsys):
    rep = tmp_path / "rep"
    rep.mkdir()
    for t in ("trials", "final", "fronts"):
        pd.DataFrame({"x": [1, 2]}).to_parquet(rep / f"{t}.parquet")
    for command in (["show", rep], ["pick", rep, "--max-drop", "1"], ["plot", rep, "--out", tmp_path]):
        rc, err = _cli(capsys, *command)
        assert rc == 2 and f"{rep / 'trials.parquet'}: not a Prunefront trials table (no column 'trial_id')" in err
    (rep / "trials.parquet").write_bytes(b"PAR1 not really")
    rc, err = _cli(capsys, "show", rep)
    assert rc == 2 and f"{rep / 'trials.parquet'}: not a readable Parquet file" in err


def test_out_of_range_metric_in_a_parquet_file_is_refused(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "exp"
    write_fixture_experiment(root)
    assert main(["build", str(root), "--no-plots"]) == 0
    capsys.readouterr()
    path = root / "report" / "final.parquet"
    table = pq.read_table(path)
    df = table.to_pandas()
    df.loc[df.index[1], "val_accuracy"] = 95.0
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(table.schema.metadata), path)
    for command in (["show", root / "report"], ["pick", root / "report", "--max-drop", "5"]):
        rc, err = _cli(capsys, *command)
        assert rc == 2 and f"{path}: row 2: 'val_accuracy' is 95.0; expected a number in [0, 1]" in err, err


def test_pick_refuses_a_model_file_that_would_run_code(tmp_path, capsys):
    root = tmp_path / "exp"
    write_fixture_experiment(root)
    model = root / "models" / "a1b2c_00002" / "model.pt2"
    with zipfile.ZipFile(model) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    cfg_name = next(n for n in entries if n.endswith("model_weights_config.json"))
    cfg = json.loads(entries[cfg_name])
    next(iter(cfg["config"].values()))["use_pickle"] = True
    entries[cfg_name] = json.dumps(cfg).encode()
    with zipfile.ZipFile(model, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    rc, err = _cli(capsys, "pick", root, "--max-drop", "2")
    assert rc == 2 and f"{model}: refused: " in err and "use_pickle" in err, err
