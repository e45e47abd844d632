"""Rung placement has one owner (``orchestrator.steps.rung_milestones``): MO-ASHA uses it,
and it must say where Ray's own ASHA judges trials. Held against Ray's ``ASHAScheduler``
on real decisions: fake trials driven through ``on_trial_result`` (no cluster), the epochs
at which it stops a trial early compared with ``rung_epochs``."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from orchestrator.moasha import MultiObjectiveASHA
from orchestrator.steps import rung_epochs, rung_milestones

CASES = [(1, 2, 8), (1, 3, 9), (2, 2, 12), (1, 1.5, 6), (3, 2, 20)]


def _ray_stop_epochs(grace: int, eta: float, max_t: int, n_trials: int = 60) -> set[int]:
    """Epochs below ``max_t`` at which Ray's ASHA stops some trial. The trials' scores are a
    fixed shuffle, so at every rung some arrive below the cutoff of those before them."""
    asha = ASHAScheduler(time_attr="epoch", metric="acc", mode="max", max_t=max_t, grace_period=grace,
                         reduction_factor=eta)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={}) for i in range(n_trials)]
    for t in trials:
        asha.on_trial_add(None, t)
    scores = random.Random(0).sample(range(n_trials), n_trials)
    alive = list(range(n_trials))
    stops: set[int] = set()
    for epoch in range(1, max_t):
        for i in list(alive):
            action = asha.on_trial_result(None, trials[i], {"epoch": epoch, "acc": scores[i] / n_trials})
            if action == TrialScheduler.STOP:
                stops.add(epoch)
                alive.remove(i)
    return stops


@pytest.mark.parametrize("grace,eta,max_t", CASES)
def test_rung_epochs_are_where_rays_asha_stops_trials(grace, eta, max_t):
    # A rung's epoch at max_t itself ends the trial either way: not an early stop.
    assert _ray_stop_epochs(grace, eta, max_t) == {e for e in rung_epochs(grace, eta, max_t) if e < max_t}


@pytest.mark.parametrize("grace,eta,max_t", CASES)
def test_moasha_judges_at_the_same_rungs(grace, eta, max_t):
    sched = MultiObjectiveASHA({"val_accuracy": "max", "flops": "min"}, time_attr="epoch", max_t=max_t,
                               grace_period=grace, reduction_factor=eta)
    assert tuple(sched._rungs) == rung_milestones(grace, eta, max_t)
