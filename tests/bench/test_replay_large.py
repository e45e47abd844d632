"""The large-space replay of bench/replay.py without Syne Tune (CI installs ``.[test]`` only):
the stand-in model fitted to the recorded grid, the budgets read from one run, and the
large-space replay of ours, Ray's ASHA and random search end to end on a small space."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import replay  # noqa: E402
import stand_in  # noqa: E402

GRID = ROOT / "bench" / "data" / "search_grid_restarts.parquet"


@pytest.fixture(scope="module")
def grid() -> pd.DataFrame:
    return pd.read_parquet(GRID)


@pytest.fixture(scope="module")
def model(grid: pd.DataFrame) -> stand_in.StandIn:
    return stand_in.fit(grid)


def test_the_fitted_curves_pass_through_every_recorded_configuration(grid, model):
    """At a recorded (method, amount, lr) the noise-free curve is the recorded one, epoch by
    epoch; between the two learning rates it stays between them."""
    for cid, rows in grid.groupby("config_id"):
        rows = rows.sort_values("epoch")
        first = rows.iloc[0]
        curve = stand_in.mean_curve(model, first["method"], np.array([first["amount"]]), np.array([first["lr"]]))[0]
        np.testing.assert_allclose(curve, rows["val_accuracy"].to_numpy(), atol=1e-9, err_msg=str(cid))
    m = "magnitude+unstructured+one_shot"
    low, high, mid = (stand_in.mean_curve(model, m, np.array([0.7]), np.array([lr]))[0] for lr in (0.005, 0.03, 0.012))
    assert np.all(mid >= np.minimum(low, high) - 1e-12) and np.all(mid <= np.maximum(low, high) + 1e-12)


def test_a_sampled_space_is_seeded_and_shaped_like_the_grid(model):
    a, b, c = stand_in.sample(model, 300, seed=1), stand_in.sample(model, 300, seed=1), stand_in.sample(model, 300, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a["val_accuracy"].equals(c["val_accuracy"])
    assert len(a) == 300 * model.epochs and a["config_id"].nunique() == 300
    assert a["amount"].between(0.5, 0.9).all() and a["lr"].between(0.005, 0.03).all()
    assert a["val_accuracy"].between(0.1, 0.95).all() and a["test_accuracy"].notna().all()
    # Costs are functions of the amount: one sparsity per configuration (a trial's kept epoch
    # resets when its sparsity changes), and more pruning is a smaller file.
    assert a.groupby("config_id")["sparsity"].nunique().max() == 1
    one = a[a["method"] == a["method"].iloc[0]].groupby("config_id").first().sort_values("amount")
    assert one["size_bytes"].is_monotonic_decreasing
    recorded = set(np.concatenate([t for ts in model.times.values() for t in ts]))
    assert set(a["time_s"]) <= recorded


@pytest.mark.parametrize("method", ["moasha", "asha", "none"])
def test_budgets_read_from_one_run_equal_budget_limited_runs(model, method):
    """``snapshots`` hold exactly what a search stopped at that budget keeps (the trials'
    epochs interleave, so a trial's epochs are not consecutive in the order they start)."""
    by_config = replay.group(stand_in.sample(model, 120, seed=3))
    total = 120 * model.epochs
    make = replay.scheduler_factory(method, model.epochs, replay.LARGE_OBJECTIVES)
    long = replay.simulate(by_config, make(), budget_epochs=total / 3, workers=16, seed=5,
                           snapshots=[total / 8, total / 4])
    for b in (total / 8, total / 4):
        short = replay.simulate(by_config, make(), budget_epochs=b, workers=16, seed=5)
        assert long.snapshots[b] == short.kept


def test_the_large_space_replay_scores_every_method_at_every_budget(model):
    by_config = replay.group(stand_in.sample(model, 150, seed=0))
    costs = {"flops": 3847936.0, "size_bytes": 115176.0}
    got = replay.replay_space(by_config, ["moasha", "asha", "none"], replay.LARGE_OBJECTIVES, replay.LARGE_BUDGETS,
                              workers=8, seed=0, costs=costs)
    for method in ("moasha", "asha", "none"):
        for b in replay.LARGE_BUDGETS:
            s = got[(method, b)]
            # A share can pass 1: a front chosen on validation accuracy is scored on test accuracy.
            assert 0.5 < s["flops"] < 1.05 and 0.5 < s["size_bytes"] < 1.05
            assert s["epochs"] <= int(np.ceil(b * 150 * model.epochs))
    # Early stopping starts more configurations than random search on the same epochs.
    third = 1 / 3
    assert got[("moasha", third)]["started"] > got[("none", third)]["started"]
    # The smaller budgets are read from the largest one's run, not its end.
    assert got[("none", 1 / 8)]["started"] < got[("none", 1 / 4)]["started"] < got[("none", third)]["started"]
