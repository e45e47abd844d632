"""End to end on the shared local Ray: a tiny search writes every trial x epoch to Parquet,
and ASHA stops a hopeless trial (a learning rate of 0) at the first rung."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]

HOPELESS_LR = 0  # prune without fine-tuning: 90% of the weights gone, nothing recovers
LRS = [0.05, 0.02, HOPELESS_LR]


def tiny_config(path: Path, **overrides) -> Path:
    """3 trials (a grid over lr), 2 epochs, magnitude pruning to 90% in one shot."""
    cfg = {
        "name": "e2e",
        "data": {"dataset": "digits", "batch_size": 64},
        "model": {"name": "small_cnn"},
        "dense": {"epochs": 10, "lr": 0.05, "optimizer": {"name": "sgd", "lr_schedule": "cosine"}},
        "search": {
            "algorithm": "grid",
            "num_samples": 1,
            "space": {
                "criterion": ["magnitude"], "granularity": ["unstructured"], "scope": ["global"],
                "threshold_rule": ["fraction"], "amount": [0.9], "schedule": ["one_shot"], "lr": LRS,
                "quantize": ["none"],
            },
            "epochs": 2,
        },
        "scheduler": {"name": "asha", "metric": "val_accuracy", "mode": "max", "grace_period": 1, "reduction_factor": 2},
        "metrics": {"latency_repeats": 2},
        "resources": {"workers": 1, "cpus_per_worker": 0.9, "driver_cpus": 0.1},
    }
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def ledger(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def search_run(ray_session, tmp_path_factory):
    from orchestrator import search

    tmp = tmp_path_factory.mktemp("e2e")
    out = tmp / "exp"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = search.main(["--config", str(tiny_config(tmp / "tiny.yaml")), "--output", str(out)])
    return code, out, buf.getvalue()


def test_every_trial_epoch_lands_in_parquet_with_its_config(search_run) -> None:
    code, out, stdout = search_run
    print(stdout)
    assert code == 0, stdout
    results = [e for e in ledger(out) if e["type"] == "result"]
    trials = pd.read_parquet(out / "report" / "trials.parquet")
    trials = trials[trials["status"] != "reference"]
    # Every ledger (trial, epoch) is one Parquet row, nothing more.
    assert sorted(zip(trials["trial_id"], trials["epoch"])) == sorted((e["trial_id"], e["epoch"]) for e in results)
    assert trials["trial_id"].nunique() == 3
    for col in ("criterion", "granularity", "scope", "threshold_rule", "amount", "schedule", "lr", "epochs",
                "val_accuracy", "val_loss", "test_accuracy", "flops", "flops_sparse", "params", "sparsity",
                "requested_sparsity", "latency_ms", "latency_iqr_ms", "dense_latency_ms", "speedup", "size_bytes"):
        assert col in trials.columns, col
    assert set(trials["criterion"]) == {"magnitude"} and set(trials["schedule"]) == {"one_shot"}
    assert sorted(trials.groupby("trial_id")["lr"].first()) == sorted(LRS)
    # One-shot 90% magnitude pruning: the achieved sparsity is the requested one.
    assert trials["sparsity"].to_numpy() == pytest.approx(0.9, abs=0.01)
    # The dense baseline is the reference row, trained well above chance.
    dense = json.loads((out / "dense" / "metrics.json").read_text())
    assert dense["val_accuracy"] > 0.8 and dense["test_accuracy"] > 0.8 and dense["sparsity"] == 0.0
    assert dense["size_bytes"] == (out / "dense" / "model.pt2").stat().st_size
    # The per-trial overhead is measured apart from the wait for the dense job (which the
    # first trials start beside).
    assert all(e["startup_s"] > 0 and e["dense_wait_s"] >= 0 for e in results)
    assert "dense baseline: validation accuracy" in stdout
    assert str(out / "report") in stdout and str(out / "results.jsonl") in stdout


def test_asha_stops_the_hopeless_trial_at_the_first_rung(search_run) -> None:
    code, out, _ = search_run
    events = ledger(out)
    status = {e["trial_id"]: e for e in events if e["type"] == "status"}
    epochs = {}
    for e in events:
        if e["type"] == "result":
            epochs.setdefault(e["trial_id"], []).append(e["epoch"])
    by_lr = {e["config"]["lr"]: e["trial_id"] for e in events if e["type"] == "result"}
    hopeless = by_lr[HOPELESS_LR]
    assert epochs[hopeless] == [1]
    # Stopped because it was the worst at the rung, not by luck of arrival order.
    rung1 = {e["trial_id"]: e["val_accuracy"] for e in events if e["type"] == "result" and e["epoch"] == 1}
    assert rung1[hopeless] < min(a for t, a in rung1.items() if t != hopeless)
    assert status[hopeless]["status"] == "stopped" and "asha" in status[hopeless]["reason"]
    # The trials that learn may stop each other (the worse one at rung 1), but the one
    # that is best at rung 1 runs to the end.
    completed = [t for t, e in status.items() if e["status"] == "completed"]
    assert completed and all(epochs[t] == [1, 2] for t in completed)
    assert hopeless not in completed
    final = pd.read_parquet(out / "report" / "final.parquet").set_index("trial_id")
    assert final.loc[hopeless, "status"] == "stopped"


def test_each_trial_keeps_its_chosen_epoch_as_a_loadable_model(search_run) -> None:
    import torch

    import pruners

    _, out, _ = search_run
    final = pd.read_parquet(out / "report" / "final.parquet")
    final = final[final["status"] != "reference"]
    for _, row in final.iterrows():
        model_dir = out / "models" / row["trial_id"]
        saved = json.loads((model_dir / "row.json").read_text())
        # The model kept by the workers is the epoch the report chose (design.md section 4).
        assert saved["epoch"] == row["epoch"]
        model = pruners.load(model_dir / "model.pt2")
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        # What the report says is what ships: the file's size, validation and test figures,
        # and the config that produced it inside the file.
        assert row["size_bytes"] == (model_dir / "model.pt2").stat().st_size
        assert 0 < row["val_accuracy"] <= 1 and 0 < row["test_accuracy"] <= 1
        assert pruners.load_metadata(model_dir / "model.pt2")["user"]["config"] == saved["config"]


def test_no_trial_the_dense_model_dominates_is_on_a_front(search_run) -> None:
    _, out, _ = search_run
    fronts = pd.read_parquet(out / "report" / "fronts.parquet")
    trials = fronts[fronts["status"] != "reference"]
    assert not (trials["dominated_by_dense"] & (trials["pareto_rank"] == 1)).any()
    dense = fronts[fronts["status"] == "reference"]
    assert dense["pareto_rank"].notna().all()


@pytest.fixture(scope="module")
def int8_run(ray_session, tmp_path_factory):
    """One trial that ships int8, beside the dense model and dense-int8."""
    from orchestrator import search

    tmp = tmp_path_factory.mktemp("e2e-int8")
    out = tmp / "exp"
    cfg = tiny_config(tmp / "int8.yaml", name="e2e-int8", **{"search.space.lr": [0.05],
                                                              "search.space.quantize": ["int8"],
                                                              "search.quantize_calibration": 256})
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = search.main(["--config", str(cfg), "--output", str(out)])
    return code, out, buf.getvalue()


def test_an_int8_trial_ships_what_its_row_measured(int8_run, tmp_path) -> None:
    """The issue's "done when": the file loads in a process without Prunefront, holds integer
    weights, its size is size_bytes and it reproduces test_accuracy within 0.1 point."""
    import subprocess
    import sys

    import numpy as np

    from orchestrator import data
    from orchestrator.config import SearchConfig
    from pruners.quantize import weight_dtypes

    code, out, stdout = int8_run
    assert code == 0, stdout
    final = pd.read_parquet(out / "report" / "final.parquet").set_index("trial_id")
    assert set(final.index) >= {"dense", "dense-int8"}
    trial = final[final["status"] != "reference"].iloc[0]
    path = out / trial["model_file"]
    assert path.name == "model.onnx" and trial["quantize"] == "int8" and trial["latency_runtime"] == "onnxruntime"
    assert trial["size_bytes"] == path.stat().st_size
    assert set(weight_dtypes(path).values()) == {"int8"}
    cfg = SearchConfig.from_dict(json.loads((out / "experiment.json").read_text())["config"])
    test = data.load_datasets(cfg.data, seed=cfg.seed).test
    x = np.stack([test[i][0].numpy() for i in range(len(test))]).astype(np.float32)
    y = np.array([int(test[i][1]) for i in range(len(test))])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])\n"
        f"x, y = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'y.npy')!r})\n"
        "print(float((s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1) == y).mean()))\n"
        "assert not {'pruners', 'orchestrator', 'reports', 'torch'} & {m.split('.')[0] for m in sys.modules}\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert abs(float(run.stdout) - trial["test_accuracy"]) <= 0.001
    # dense-int8 competes on the fronts, and its file is there too.
    assert (out / final.at["dense-int8", "model_file"]).is_file()
    fronts = pd.read_parquet(out / "report" / "fronts.parquet")
    assert set(fronts["front"]) >= {"accuracy_latency", "accuracy_size"}
    assert (fronts["trial_id"] == "dense-int8").sum() == fronts["front"].nunique()
