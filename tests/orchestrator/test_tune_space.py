"""Config space -> Tune domains, search algorithms and schedulers (no Ray cluster needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search.sample import Categorical, Float, Integer

from orchestrator import tune_space
from orchestrator.config import Choice, Fixed, Range, SearchConfig
from orchestrator.space import parse_method
from orchestrator.moasha import MultiObjectiveASHA


def make(**sections) -> SearchConfig:
    return SearchConfig.from_dict(sections)


def test_domains_for_each_kind_of_entry() -> None:
    assert tune_space.to_domain(Fixed(3), grid=False) == 3
    assert isinstance(tune_space.to_domain(Choice((1, 2)), grid=False), Categorical)
    assert tune_space.to_domain(Choice((1, 2)), grid=True) == {"grid_search": [1, 2]}
    lr = tune_space.to_domain(Range(1e-3, 1e-1, log=True), grid=False)
    assert isinstance(lr, Float) and lr.lower == 1e-3 and lr.upper == 1e-1
    ints = tune_space.to_domain(Range(2, 4, integer=True), grid=False)
    # Integer ranges include `high` (Tune's randint excludes its upper bound).
    assert isinstance(ints, Integer) and (ints.lower, ints.upper) == (2, 5)
    with pytest.raises(ValueError, match="grid search cannot sample a range"):
        tune_space.to_domain(Range(0.1, 0.2), grid=True)


def test_sampled_trials_are_valid_combinations_only() -> None:
    import pruners

    cfg = make(search={"space": {"criterion": ["magnitude", "taylor", "random"],
                                 "granularity": ["unstructured", "structured"],
                                 "schedule": ["one_shot", "dynamic"]}})
    space = tune_space.param_space(cfg)
    domain = space["method"]
    for _ in range(200):
        c, g, s = parse_method(domain.sample())
        assert g in pruners.criterion_granularities(c)
        assert not (s == "dynamic" and g == "structured")  # dynamic is unstructured-only


def test_grid_search_expands_every_listed_value() -> None:
    cfg = make(search={"algorithm": "grid", "space": {"criterion": ["magnitude"], "granularity": ["unstructured"],
                                                      "schedule": ["one_shot"], "amount": [0.5, 0.7], "lr": [0.01, 0.1]}})
    space = tune_space.param_space(cfg)
    assert space["amount"] == {"grid_search": [0.5, 0.7]} and space["lr"] == {"grid_search": [0.01, 0.1]}
    assert space["method"] == "magnitude+unstructured+one_shot"


def test_schedulers_follow_the_config() -> None:
    asha = tune_space.make_scheduler(make(search={"epochs": 4}, scheduler={"name": "asha"}))
    assert isinstance(asha, tune_space.RecordingASHA) and asha._time_attr == "epoch" and asha._max_t == 4
    assert asha._metric == "val_accuracy"
    mo = tune_space.make_scheduler(make(scheduler={"name": "moasha", "objectives": {"val_accuracy": "max", "flops": "min"}}))
    assert isinstance(mo, MultiObjectiveASHA) and mo.objectives == {"val_accuracy": "max", "flops": "min"}
    assert type(tune_space.make_scheduler(make(scheduler={"name": "fifo"}))) is FIFOScheduler


def test_asha_records_why_it_stopped_a_trial() -> None:
    asha = tune_space.make_scheduler(make(search={"epochs": 3}, scheduler={"name": "asha"}))
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    for t in (a, b):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, a, {"epoch": 1, "val_accuracy": 0.9}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, b, {"epoch": 1, "val_accuracy": 0.1}) == TrialScheduler.STOP
    assert "epoch 1" in asha.stop_reason("b") and "0.1" in asha.stop_reason("b")
    assert asha.stop_reason("a") is None
    # Reaching max_t is the end of the trial, not an early stop.
    assert asha.on_trial_result(None, a, {"epoch": 3, "val_accuracy": 0.9}) == TrialScheduler.STOP
    assert asha.stop_reason("a") is None


def test_optuna_is_multi_objective_over_the_objectives() -> None:
    pytest.importorskip("optuna")
    cfg = make(search={"algorithm": "optuna"}, scheduler={"name": "moasha"})
    alg = tune_space.make_search_alg(cfg, max_concurrent=2)
    assert alg.metric == ["val_accuracy", "size_bytes"] and alg.mode == ["max", "min"]
    assert alg.set_search_properties(None, None, tune_space.param_space(cfg))
    suggested = alg.suggest("t0")
    parse_method(suggested["method"])
    assert 0.3 <= suggested["amount"] <= 0.8

