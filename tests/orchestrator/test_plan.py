"""Resource planning: refusals say what fits; accepted plans never starve a worker group."""

from __future__ import annotations

import math
import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from orchestrator.config import ConfigError, SearchConfig  # noqa: E402
from orchestrator.plan import MIN_DRIVER_CPUS, Cluster, NodeResources, make_plan, trial_count  # noqa: E402


def cfg(num_samples: int = 6, **resources) -> SearchConfig:
    return SearchConfig.from_dict(
        {
            "search": {"num_samples": num_samples, "space": {"criterion": ["magnitude"]}},
            "resources": resources,
        }
    )


def test_two_cpus_one_whole_cpu_worker_runs_one_trial_at_a_time():
    # Two trials would need 2 x (1 + 0.1) = 2.2 CPUs: the second driver would hold the
    # CPU the second worker group waits for, so only one trial may run.
    plan = make_plan(cfg(cpus_per_worker=1, driver_cpus=0.1), Cluster.uniform(1, 2))
    assert plan.max_concurrent_trials == 1
    assert plan.driver == {"CPU": 0.1}
    assert plan.worker == {"CPU": 1.0}
    assert any("cpus_per_worker: 0.9 would let 2 run" in n for n in plan.notes)


def test_fractional_workers_let_two_trials_share_two_cpus():
    plan = make_plan(cfg(cpus_per_worker=0.9, driver_cpus=0.1), Cluster.uniform(1, 2))
    assert plan.max_concurrent_trials == 2
    assert plan.driver == {"CPU": 0.1}
    assert plan.notes == ()


def test_driver_share_shrinks_to_what_worker_groups_leave():
    # 4 CPUs, 1-CPU workers: 4 groups leave nothing, 3 groups leave 1 CPU for 3 drivers.
    plan = make_plan(cfg(cpus_per_worker=1, driver_cpus=0.5), Cluster.uniform(1, 4))
    assert plan.max_concurrent_trials == 3
    assert plan.driver == {"CPU": 0.33}


def test_driver_share_lowered_without_losing_concurrency():
    # 3 CPUs, 2 groups of 1 CPU leave 1 CPU: two drivers of 0.5 instead of 0.8.
    plan = make_plan(cfg(cpus_per_worker=1, driver_cpus=0.8, max_concurrent_trials=2), Cluster.uniform(1, 3))
    assert plan.max_concurrent_trials == 2
    assert plan.driver == {"CPU": 0.5}
    assert any("driver_cpus=0.8 lowered to 0.5" in n for n in plan.notes)


def test_workers_that_never_fit_are_refused_saying_what_fits():
    with pytest.raises(ConfigError) as e:
        make_plan(cfg(workers=4, cpus_per_worker=1), Cluster.uniform(1, 2))
    assert str(e.value) == (
        "resources.workers=4 needs 4 CPUs per trial but the cluster has 2 CPUs; at most 2 worker(s) of 1 CPU fit"
    )


def test_workers_filling_the_cluster_leave_no_room_for_the_driver():
    with pytest.raises(ConfigError, match=r"at most 1 worker\(s\) of 1 CPU fit, or 2 of <= 0.99 CPU"):
        make_plan(cfg(workers=2, cpus_per_worker=1), Cluster.uniform(1, 2))


def test_worker_larger_than_any_node_is_refused():
    with pytest.raises(ConfigError, match=r"cpus_per_worker=8 does not fit on any node \(largest: 4 CPUs\)"):
        make_plan(cfg(cpus_per_worker=8), Cluster.uniform(3, 4))


def test_gpu_workers_on_a_cpu_cluster_are_refused():
    with pytest.raises(ConfigError, match="the cluster has no GPUs"):
        make_plan(cfg(use_gpu=True), Cluster.uniform(1, 8))


def test_gpu_bound_worker_count_names_gpus():
    with pytest.raises(ConfigError) as e:
        make_plan(cfg(use_gpu=True, workers=3, cpus_per_worker=1), Cluster.uniform(1, 16, 2))
    assert "needs 3 GPUs per trial but the cluster has 2 GPUs; at most 2 worker(s) of 1 GPU fit" in str(e.value)


def test_multi_node_gpu_plan_spreads_groups_and_keeps_room_for_drivers():
    # 2 nodes x (8 CPU, 4 GPU); a trial is 4 workers of (2 CPU, 1 GPU): one group fills a
    # node. Two groups would leave no CPU for drivers, so one trial runs at a time.
    plan = make_plan(cfg(use_gpu=True, workers=4, cpus_per_worker=2), Cluster.uniform(2, 8, 4))
    assert plan.max_concurrent_trials == 1
    assert plan.worker == {"CPU": 2.0, "GPU": 1.0}
    assert plan.bundles() == [{"CPU": 0.1}] + [{"CPU": 2.0, "GPU": 1.0}] * 4
    assert plan.dense == {"workers": 4, "worker": {"CPU": 2.0, "GPU": 1.0}}
    # With 7 CPUs per worker group (1.75 each) both nodes run a trial.
    plan = make_plan(cfg(use_gpu=True, workers=4, cpus_per_worker=1.75), Cluster.uniform(2, 8, 4))
    assert plan.max_concurrent_trials == 2


def test_user_concurrency_is_honoured_or_lowered_with_a_note():
    assert make_plan(cfg(cpus_per_worker=0.5, driver_cpus=0.1, max_concurrent_trials=2), Cluster.uniform(1, 8)).max_concurrent_trials == 2
    plan = make_plan(cfg(cpus_per_worker=1, max_concurrent_trials=50, num_samples=100), Cluster.uniform(1, 4))
    assert plan.max_concurrent_trials == 3
    assert any("max_concurrent_trials=50 lowered to 4" in n for n in plan.notes)


def test_concurrency_never_exceeds_the_number_of_trials():
    plan = make_plan(cfg(num_samples=2, cpus_per_worker=1), Cluster.uniform(1, 64))
    assert plan.trials == 2 and plan.max_concurrent_trials == 2


def test_grid_trial_count_is_samples_times_grid_points():
    c = SearchConfig.from_dict(
        {
            "search": {
                "algorithm": "grid",
                "num_samples": 2,
                "space": {
                    "criterion": ["magnitude", "random"],
                    "granularity": ["unstructured"],
                    "schedule": ["one_shot"],
                    "amount": [0.5, 0.7, 0.9],
                    "lr": 0.01,
                },
            }
        }
    )
    # 2 methods x 2 scopes (both by default) x 3 amounts x 2 quantize (none, int8 by default), twice.
    assert trial_count(c) == 48
    assert make_plan(c, Cluster.uniform(1, 2)).trials == 48


def test_from_ray_nodes_skips_dead_nodes():
    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0, "memory": 1e9}},
        {"Alive": False, "Resources": {"CPU": 64.0}},
        {"Alive": True, "Resources": {"CPU": 4.0}},
    ]
    c = Cluster.from_ray_nodes(nodes)
    assert c.nodes == (NodeResources(8.0, 2.0), NodeResources(4.0, 0.0))
    assert (c.cpus, c.gpus) == (12.0, 2.0)


def _placeable(plan, cluster) -> bool:
    """Place max_concurrent_trials worker groups, then their drivers, all at once."""
    free = [[n.cpus, n.gpus] for n in cluster.nodes]
    k = plan.max_concurrent_trials
    bundles = [plan.worker] * (plan.workers * k) + [plan.driver] * k
    for bundle in bundles:
        c, g = bundle.get("CPU", 0.0), bundle.get("GPU", 0.0)
        fits = [f for f in free if f[0] + 1e-9 >= c and f[1] + 1e-9 >= g]
        if not fits:
            return False
        f = min(fits, key=lambda f: f[0])  # best fit
        f[0] -= c
        f[1] -= g
    return True


def test_random_plans_always_place_every_concurrent_trial():
    rng = random.Random(0)
    checked = 0
    for _ in range(300):
        nodes = rng.randint(1, 4)
        cpus, gpus = rng.choice([1, 2, 4, 8, 16]), rng.choice([0, 0, 1, 2, 4])
        cluster = Cluster.uniform(nodes, cpus, gpus)
        use_gpu = gpus > 0 and rng.random() < 0.5
        res = {
            "workers": rng.randint(1, 6),
            "cpus_per_worker": rng.choice([0.5, 0.9, 1, 2, 3]),
            "driver_cpus": rng.choice([0.01, 0.1, 0.5, 1]),
            "use_gpu": use_gpu,
        }
        try:
            plan = make_plan(cfg(num_samples=rng.randint(1, 20), **res), cluster)
        except ConfigError:
            continue
        checked += 1
        assert 1 <= plan.max_concurrent_trials <= plan.trials
        assert plan.driver["CPU"] >= MIN_DRIVER_CPUS - 1e-12
        assert plan.driver["CPU"] <= res["driver_cpus"] + 1e-12
        assert _placeable(plan, cluster), (res, cluster, plan)
        total = plan.max_concurrent_trials * (plan.driver["CPU"] + plan.workers * plan.worker["CPU"])
        assert total <= cluster.cpus + 1e-6
    assert checked > 100


def test_describe_lists_the_numbers_a_dry_run_shows():
    text = make_plan(cfg(cpus_per_worker=0.9), Cluster.uniform(1, 2)).describe()
    assert "trials:      6" in text
    assert "driver 0.1 CPU + 1 worker(s) x (0.9 CPU) = 1 CPU, 0 GPU" in text
    assert "max_concurrent_trials = 2" in text
    assert math.isclose(0.1 + 0.9, 1.0)
