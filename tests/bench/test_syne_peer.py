"""Syne Tune's MOASHA in bench/replay.py (the optional extra ``.[syne]``): the bug of its
default priority, the one-line correction, and the fast bracket that must decide exactly
as Syne Tune's own."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("syne_tune")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import syne_peer  # noqa: E402
from syne_tune.optimizer.schedulers.asha import Bracket  # noqa: E402
from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import NonDominatedPriority  # noqa: E402
from syne_tune.optimizer.schedulers.multiobjective.non_dominated_priority import compute_epsilon_net  # noqa: E402

OBJECTIVES = {"val_accuracy": "max", "size_bytes": "min"}
# Four results in a chain (each dominates the next), then a fifth better than all of them.
CHAIN = [(0.80, 100), (0.70, 110), (0.60, 120), (0.50, 130), (0.90, 90)]


def decisions(variant: str, fast: bool) -> list[str]:
    sched = syne_peer.make(variant, max_t=8, objectives=OBJECTIVES, fast=fast)
    out = []
    for i, (acc, size) in enumerate(CHAIN):
        trial = SimpleNamespace(trial_id=f"t{i}")
        sched.on_trial_add(None, trial)
        out.append(sched.on_trial_result(None, trial, {"epoch": 1, "val_accuracy": acc, "size_bytes": size}))
    return out


@pytest.mark.parametrize("fast", [False, True])
def test_shipped_priority_stops_a_result_better_than_every_other_and_the_fix_does_not(fast):
    """As shipped the fifth is judged by the index of the worst result (3 of 5: 0.6 > 1/2)
    and stopped; corrected, its place is first (0 of 5) and it continues."""
    assert decisions("syne", fast)[-1] == "STOP"
    assert decisions("syne-fixed", fast)[-1] == "CONTINUE"
    # Both agree on the chain itself: the third and fourth are worse than half the rung.
    assert decisions("syne", fast)[:4] == decisions("syne-fixed", fast)[:4] == ["CONTINUE", "CONTINUE", "STOP", "STOP"]


def test_corrected_priority_is_each_result_place_in_the_shipped_order():
    x = np.array([[-0.8, 100], [-0.7, 110], [-0.6, 120], [-0.5, 130], [-0.9, 90]], dtype=float)
    order = NonDominatedPriority()(x)
    assert list(order) == [4, 0, 1, 2, 3]  # Syne Tune's sorted indices: the fifth first
    assert list(syne_peer.CorrectedPriority()(x)) == [1, 2, 3, 4, 0]  # each result's place


def test_epsilon_net_ranks_equal_syne_tunes_ties_included():
    rng = np.random.default_rng(0)
    for case in range(200):
        k = int(rng.integers(1, 25))
        x = rng.integers(0, 4, size=(k, 2)).astype(float) if case % 2 else rng.normal(size=(k, 2))
        assert list(syne_peer.epsilon_net_ranks(x, dim=0)) == list(compute_epsilon_net(x, dim=0)), x


@pytest.mark.parametrize("priority", [NonDominatedPriority, syne_peer.CorrectedPriority])
def test_fast_bracket_decides_as_syne_tunes_bracket(priority):
    """Random rung histories (trials reporting epoch after epoch, some results equal):
    every decision of the staircase bracket equals Syne Tune's own."""
    rng = np.random.default_rng(1)
    compared = 0
    for history in range(12):
        real, fast = Bracket(1, 8, 2, 0, priority()), syne_peer.FastBracket(1, 8, 2, 0, priority())
        ties = history % 3 == 0
        for trial in range(int(rng.integers(10, 50))):
            for epoch in range(1, 9):
                v = rng.integers(0, 5, size=2).astype(float) if ties else rng.normal(size=2)
                metrics = {"err": float(v[0]), "size": float(v[1])}
                a, b = real.on_result(trial, epoch, dict(metrics)), fast.on_result(trial, epoch, dict(metrics))
                assert a == b, (history, trial, epoch)
                compared += 1
                if a == "STOP":
                    break
    assert compared > 400
