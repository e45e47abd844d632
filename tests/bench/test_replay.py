"""The search simulator of bench/search_efficiency.py on a hand-made table whose outcome is
known: which trials each scheduler stops, the epochs spent, the hypervolume found."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import replay  # noqa: E402

# config: [(val, test, flops, size) per epoch]; every epoch takes 1 s.
TABLE = {
    "A": [(0.90, 0.88, 100, 100), (0.92, 0.90, 100, 100)],
    "B": [(0.50, 0.50, 100, 100), (0.60, 0.60, 100, 100)],  # dominated by A
    "C": [(0.80, 0.79, 50, 50), (0.85, 0.84, 50, 50)],
    "D": [(0.30, 0.30, 50, 50), (0.40, 0.40, 50, 50)],  # dominated by C
}
REF = 200.0
ORDER = ["A", "B", "C", "D"]
# The validation front is A (epoch 2) and C (epoch 2), scored on test accuracy:
# 0.90 x (200 - 100) + 0.84 x (100 - 50).
FULL_HV = 0.90 * 100 + 0.84 * 50


def table() -> pd.DataFrame:
    rows = [
        {"config_id": c, "epoch": e + 1, "val_accuracy": v, "test_accuracy": t, "flops": f, "size_bytes": s,
         "sparsity": 0.5, "time_s": 1.0}
        for c, epochs in TABLE.items() for e, (v, t, f, s) in enumerate(epochs)
    ]
    return pd.DataFrame(rows)


def test_no_stopping_runs_everything_and_finds_the_whole_front():
    run = replay.simulate(table(), None, budget_epochs=float("inf"), workers=1, order=ORDER)
    assert run.epochs == 8 and run.stopped_early == 0 and run.wall_s == 8.0
    assert replay.front_hypervolume(run.kept, "flops", REF) == pytest.approx(FULL_HV)
    # Two workers: the same work in half the simulated time.
    assert replay.simulate(table(), None, budget_epochs=float("inf"), workers=2, order=ORDER).wall_s == 4.0


@pytest.mark.parametrize("name", ["moasha", "asha"])
def test_early_stopping_drops_the_dominated_trials_at_the_first_rung(name):
    sched = replay.make_scheduler(name, max_t=2, objectives={"val_accuracy": "max"}, grace=1, eta=2)
    run = replay.simulate(table(), sched, budget_epochs=float("inf"), workers=1, order=ORDER)
    # B (0.5 < A's 0.9) and D (0.3, the worst of four) stop after epoch 1; C (0.8) goes on.
    assert run.epochs == 6 and run.stopped_early == 2
    assert {c: r["epoch"] for c, r in run.kept.items()} == {"A": 2, "B": 1, "C": 2, "D": 1}
    assert replay.front_hypervolume(run.kept, "flops", REF) == pytest.approx(FULL_HV)


def test_the_budget_stops_the_search():
    run = replay.simulate(table(), None, budget_epochs=5, workers=1, order=ORDER)
    # A (2 epochs), B (2), C's first epoch: the budget is spent; D never starts.
    assert run.epochs == 5 and set(run.kept) == {"A", "B", "C"}
    assert run.kept["C"]["epoch"] == 1
    # The front chosen on validation is A (0.92) and C's epoch 1 (0.80), scored on test.
    assert replay.front_hypervolume(run.kept, "flops", REF) == pytest.approx(0.90 * 100 + 0.79 * 50)


def test_rung_rank_correlation_sees_a_rung_that_ranks_configurations_backwards():
    """Epoch 1 ranks the four configurations in the reverse of how they end (a learning rate
    that looks bad early and ends best), epoch 2 ranks them as they end."""
    rows = []
    for i, (first, last) in enumerate([(0.5, 0.6), (0.4, 0.7), (0.3, 0.8), (0.2, 0.9)]):
        for epoch, val in ((1, first), (2, last), (3, last)):
            rows.append({"config_id": f"c{i}", "epoch": epoch, "val_accuracy": val, "sparsity": 0.5, "lr": 0.1 * (i % 2)})
    corr = replay.rung_rank_correlation(pd.DataFrame(rows), [1, 2])
    assert corr.loc["all", 1] == pytest.approx(-1.0) and corr.loc["all", 2] == pytest.approx(1.0)
    by_lr = replay.rung_rank_correlation(pd.DataFrame(rows), [1], by="lr")
    assert list(by_lr.index) == [0.0, 0.1] and by_lr[1].tolist() == pytest.approx([-1.0, -1.0])


def test_paired_comparison_counts_seeds_and_tests_the_differences():
    ahead = replay.paired([0.9] * 10, [0.8] * 10)
    assert ahead["ahead"] == 10 and ahead["behind"] == 0 and ahead["median_diff"] == pytest.approx(0.1)
    assert ahead["p"] < 0.01
    tie = replay.paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert tie == {"median_diff": 0.0, "ahead": 0, "behind": 0, "seeds": 3, "p": 1.0}
    mixed = replay.paired([0.9, 0.1, 0.9, 0.1], [0.1, 0.9, 0.1, 0.9])
    assert mixed["ahead"] == 2 and mixed["behind"] == 2 and mixed["p"] > 0.5
