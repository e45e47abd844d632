"""Schedules: exact sparsity and update steps at each step."""

from __future__ import annotations

import pytest

import pruners
from pruners.schedules import Dynamic, Gradual, Iterative, OneShot


def test_the_registry_holds_the_specified_schedules():
    assert {"dynamic", "gradual", "iterative", "one_shot"} <= set(pruners.list_schedules())


@pytest.mark.parametrize("name", pruners.list_schedules())
def test_every_schedule_keeps_the_schedule_contract(name):
    """Built from its declared defaults, any registered schedule reaches its target by its
    last update step and stays there, never lowers the sparsity, and lists exactly the
    steps it says are update steps (what Pruner and the epoch checks rely on)."""
    steps_per_epoch, epochs, target = 10, 3, 0.6
    sched = pruners.schedules.schedule_from_epochs(name, {}, target=target, steps_per_epoch=steps_per_epoch,
                                                   epochs=epochs)
    horizon = steps_per_epoch * epochs
    updates = sched.update_steps()
    # (the last update may sit at the horizon itself: dynamic's end_step "to the end")
    assert updates and updates == [t for t in range(horizon + 1) if sched.is_update_step(t)], name
    values = [sched.sparsity_at(t) for t in range(horizon + 5)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:])), name
    assert values[updates[-1]] == pytest.approx(target) and values[-1] == pytest.approx(target), name
    assert 0 <= values[0] <= target


def test_one_shot():
    s = pruners.make_schedule("one_shot", target=0.7)
    assert isinstance(s, OneShot)
    assert [s.sparsity_at(t) for t in (0, 1, 50)] == [0.7, 0.7, 0.7]
    assert [s.is_update_step(t) for t in (0, 1, 2)] == [True, False, False]
    assert s.update_steps() == [0]


def test_iterative_exact_values():
    s = pruners.make_schedule("iterative", target=0.6, rounds=3, interval=10)
    assert isinstance(s, Iterative)
    expect = {0: 0.2, 9: 0.2, 10: 0.4, 19: 0.4, 20: 0.6, 29: 0.6, 30: 0.6, 100: 0.6}
    for step, value in expect.items():
        assert s.sparsity_at(step) == pytest.approx(value, abs=1e-12), step
    assert [t for t in range(60) if s.is_update_step(t)] == [0, 10, 20]
    assert s.update_steps() == [0, 10, 20]


@pytest.mark.parametrize("target", [0.003, 0.7, 0.9])
@pytest.mark.parametrize("rounds", [3, 6, 7])
def test_iterative_last_round_is_exactly_the_target(target, rounds):
    s = Iterative(target=target, rounds=rounds, interval=2)
    assert s.sparsity_at(2 * (rounds - 1)) == target
    assert s.sparsity_at(10_000) == target


def test_gradual_cubic_exact_values():
    s = pruners.make_schedule("gradual", target=0.8, start_step=10, end_step=40, interval=10, initial=0.2)
    assert isinstance(s, Gradual)
    # s_t = 0.8 + (0.2 - 0.8) * (1 - (t - 10) / 30) ** 3 at t = 10, 20, 30, 40
    ramp = {10: 0.2, 20: 0.8 - 0.6 * (2 / 3) ** 3, 30: 0.8 - 0.6 * (1 / 3) ** 3, 40: 0.8}
    assert s.sparsity_at(0) == 0.0 and s.sparsity_at(9) == 0.0
    for t, v in ramp.items():
        assert s.sparsity_at(t) == pytest.approx(v, abs=1e-12)
        # constant until the next update
        if t < 40:
            assert s.sparsity_at(t + 9) == pytest.approx(v, abs=1e-12)
    assert s.sparsity_at(1000) == pytest.approx(0.8)
    assert [t for t in range(100) if s.is_update_step(t)] == [10, 20, 30, 40]


def test_gradual_end_not_on_interval_is_still_an_update():
    s = Gradual(target=0.5, start_step=0, end_step=25, interval=10)
    assert s.update_steps() == [0, 10, 20, 25]
    assert [t for t in range(40) if s.is_update_step(t)] == [0, 10, 20, 25]
    assert s.sparsity_at(24) == pytest.approx(0.5 - 0.5 * (1 - 20 / 25) ** 3)
    assert s.sparsity_at(25) == 0.5


def test_dynamic_is_unstructured_only_and_constant():
    s = pruners.make_schedule("dynamic", target=0.5, interval=5, regrow_fraction=0.2, end_step=12)
    assert isinstance(s, Dynamic)
    assert s.granularities == ("unstructured",)
    assert all(s.sparsity_at(t) == 0.5 for t in range(20))
    assert [t for t in range(20) if s.is_update_step(t)] == [0, 5, 10]


def test_unknown_keyword_lists_allowed():
    with pytest.raises(ValueError, match="allowed: target, rounds, interval"):
        pruners.make_schedule("iterative", target=0.5, round=3)
    with pytest.raises(ValueError, match="valid choices: dynamic, gradual, iterative, one_shot"):
        pruners.make_schedule("cosine", target=0.5)


@pytest.mark.parametrize(
    "name,params",
    [
        ("one_shot", {"target": 1.0}),
        ("one_shot", {"target": -0.1}),
        ("iterative", {"target": 0.5, "rounds": 0}),
        ("gradual", {"target": 0.5, "start_step": 10, "end_step": 10}),
        ("gradual", {"target": 0.5, "initial": 0.6}),
        ("dynamic", {"target": 0.5, "regrow_fraction": 1.5}),
        ("one_shot", {}),
    ],
)
def test_invalid_values_raise(name, params):
    with pytest.raises(ValueError):
        pruners.make_schedule(name, **params)


def test_frozen():
    s = OneShot(target=0.5)
    with pytest.raises(Exception):
        s.target = 0.6  # type: ignore[misc]
