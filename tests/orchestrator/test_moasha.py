"""MO-ASHA decisions, driven through ``on_trial_result`` with fake trials (no cluster)."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from orchestrator.moasha import MultiObjectiveASHA, crowding_distance, rung_decision, rung_order

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
OBJ = {"accuracy": "max", "flops": "min"}  # any result keys: the scheduler is generic


def trial(tid: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid)


def report(s: MultiObjectiveASHA, tid: str, epoch: float, accuracy: float, flops: float) -> str:
    return s.on_trial_result(None, trial(tid), {"epoch": epoch, "accuracy": accuracy, "flops": flops})


def test_rungs_are_grace_times_powers_of_eta_below_max_t() -> None:
    assert MultiObjectiveASHA(OBJ, max_t=8, grace_period=1, reduction_factor=2).rungs == (1, 2, 4)
    assert MultiObjectiveASHA(OBJ, max_t=3, grace_period=1, reduction_factor=2).rungs == (1, 2)
    assert MultiObjectiveASHA(OBJ, max_t=10, grace_period=2, reduction_factor=3).rungs == (2, 6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"objectives": {}}, "non-empty mapping"),
        ({"objectives": {"accuracy": "up"}}, "valid choices: max, min"),
        ({"objectives": OBJ, "max_t": 0}, "max_t must be a number > 0"),
        ({"objectives": OBJ, "grace_period": 5, "max_t": 3}, "grace_period (5) must be <= max_t (3)"),
        ({"objectives": OBJ, "reduction_factor": 1}, "reduction_factor must be a number > 1"),
        ({"objectives": OBJ, "time_attr": ""}, "time_attr"),
    ],
)
def test_bad_arguments_are_refused_up_front(kwargs: dict, message: str) -> None:
    objectives = kwargs.pop("objectives")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MultiObjectiveASHA(objectives, **kwargs)


def test_pareto_rank_decides_then_crowding_distance_at_the_cut() -> None:
    s = MultiObjectiveASHA(OBJ, max_t=4, grace_period=1, reduction_factor=2)
    # Alone at the rung: nothing to compare with.
    assert report(s, "t1", 1, 0.90, 100) == CONTINUE
    # Dominated by t1 (less accurate, more FLOPs): rank 2 of 2, top 1 continues.
    assert report(s, "t2", 1, 0.80, 200) == STOP
    # Trades accuracy for FLOPs with t1: both rank 1, three recorded, top 2 continue;
    # the front has two members, both boundary points (infinite crowding): t1 and t3 tie.
    assert report(s, "t3", 1, 0.70, 50) == CONTINUE
    # Also on the front (rank 1 of {t1, t3, t4}), but it is the interior point: crowding
    # distance 2 < inf of the two extremes, so it is third of four and only 2 continue.
    assert report(s, "t4", 1, 0.85, 80) == STOP
    d = s.decisions[-1]
    assert (d.pareto_rank, d.position, d.kept, d.recorded) == (1, 3, 2, 4)
    assert s.stop_reason("t4") is not None and "place 3 of 4" in s.stop_reason("t4")
    assert s.stop_reason("t1") is None


def test_diversity_keeps_the_point_that_fills_a_gap_in_the_front() -> None:
    s = MultiObjectiveASHA(OBJ, max_t=4, grace_period=1, reduction_factor=2)
    assert report(s, "a", 1, 1.00, 100) == CONTINUE
    # A two-point front: both extremes, tied (rank 1, infinite crowding); the cut is at 1 of
    # 2, and a trial tied with a kept one continues, whatever the order they came in.
    assert report(s, "b", 1, 0.00, 0) == CONTINUE
    assert report(s, "c", 1, 0.95, 97) == STOP  # interior, third of three, top 2 continue
    assert report(s, "e", 1, 0.90, 90) == STOP  # 4 recorded, top 2: the two extremes
    # Five recorded, top 3 continue. All five are on the front; d sits in the big gap
    # between b and e, so its crowding distance (0.9/1 + 90/100 = 1.8) beats e's
    # (0.45 + 0.47 = 0.92) and c's (0.1 + 0.1 = 0.2): third place, it continues,
    # although it arrived last.
    assert report(s, "d", 1, 0.50, 50) == CONTINUE
    assert s.decisions[-1].position == 3


def test_rung_order_by_hand() -> None:
    pts = [[1.0, 100], [0.0, 0], [0.95, 97], [0.9, 90], [0.5, 50], [0.4, 60]]
    order, ranks = rung_order(pts, ("max", "min"))
    # [0.4, 60] is dominated by [0.5, 50]: rank 2, last. The front's interior points in
    # decreasing crowding distance: d (1.8), e (0.92), c (0.2).
    assert ranks.tolist() == [1, 1, 1, 1, 1, 2]
    assert order.tolist() == [0, 1, 4, 3, 2, 5]
    dist = crowding_distance([[1.0, 100], [0.0, 0], [0.95, 97], [0.9, 90], [0.5, 50]], ("max", "min"))
    assert np.isinf(dist[:2]).all()
    assert dist[2:] == pytest.approx([0.1 + 0.1, 0.45 + 0.47, 0.9 + 0.9])


def test_rungs_are_judged_separately_and_once() -> None:
    s = MultiObjectiveASHA(OBJ, max_t=8, grace_period=1, reduction_factor=2)
    assert report(s, "x", 1, 0.5, 100) == CONTINUE
    assert report(s, "y", 1, 0.6, 90) == CONTINUE  # dominates x at rung 1
    # y at epoch 2 is alone at rung 2 (x's rung-1 result does not count there).
    assert report(s, "y", 2, 0.1, 500) == CONTINUE
    # Epoch 3 is past rung 2 (already judged) and below rung 4: no new judgement.
    assert report(s, "y", 3, 0.0, 900) == CONTINUE
    assert [tid for tid, _ in s.recorded(1)] == ["x", "y"]
    assert [tid for tid, _ in s.recorded(2)] == ["y"]
    # x reaches rung 2 after y: it dominates y's rung-2 result and continues...
    assert report(s, "x", 2, 0.7, 80) == CONTINUE
    # ...and a third trial worse than both at rung 2 is stopped.
    assert report(s, "z", 1, 0.9, 10) == CONTINUE
    assert report(s, "z", 2, 0.05, 600) == STOP


def test_max_t_stops_and_incomplete_results_are_not_judged() -> None:
    s = MultiObjectiveASHA(OBJ, max_t=2, grace_period=1, reduction_factor=2)
    assert s.on_trial_result(None, trial("a"), {"accuracy": 0.5, "flops": 1.0}) == CONTINUE  # no epoch
    assert s.on_trial_result(None, trial("a"), {"epoch": 1, "accuracy": 0.5}) == CONTINUE  # no flops
    assert s.on_trial_result(None, trial("a"), {"epoch": 1, "accuracy": math.nan, "flops": 1.0}) == CONTINUE
    assert s.recorded(1) == []
    assert report(s, "a", 2, 0.1, 1e9) == STOP  # done: reached max_t
    assert s.stop_reason("a") is None  # finishing is not an early stop


def test_completed_trials_inform_later_ones() -> None:
    s = MultiObjectiveASHA(OBJ, max_t=4, grace_period=1, reduction_factor=2)
    # A trial that only reports when it ends (epoch 3) is recorded at rung 2 on completion.
    s.on_trial_complete(None, trial("done"), {"epoch": 3, "accuracy": 0.9, "flops": 10})
    assert [tid for tid, _ in s.recorded(2)] == ["done"]
    assert s.decisions == []
    assert report(s, "late", 2, 0.8, 20) == STOP


def test_one_objective_keeps_the_top_ceil_n_over_eta() -> None:
    # With one objective the order is the plain order: a trial continues iff it is among
    # the best ceil(n / eta) results recorded at the rung, itself included.
    s = MultiObjectiveASHA({"accuracy": "max"}, max_t=4, grace_period=1, reduction_factor=3)
    decisions = [
        s.on_trial_result(None, trial(f"t{i}"), {"epoch": 1, "accuracy": a})
        for i, a in enumerate([0.5, 0.6, 0.4, 0.55, 0.7, 0.3, 0.65])
    ]
    # n=1 keep 1: 0.5 first; n=2 keep 1: 0.6 first; n=3 keep 1: 0.4 third; n=4 keep 2:
    # 0.55 second; n=5 keep 2: 0.7 first; n=6 keep 2: 0.3 sixth; n=7 keep 3: 0.65 second.
    assert decisions == [CONTINUE, CONTINUE, STOP, CONTINUE, CONTINUE, STOP, CONTINUE]


def test_the_two_point_front_continues_both_whatever_the_arrival_order() -> None:
    """The issue's case: eta 2, A (0.90, 100 FLOPs) and B (0.95, 200), both on the front.
    Deciding by arrival stopped B; both continue, in either order."""
    for first, second in (("A", "B"), ("B", "A")):
        s = MultiObjectiveASHA(OBJ, max_t=4, grace_period=1, reduction_factor=2)
        pts = {"A": (0.90, 100), "B": (0.95, 200)}
        assert report(s, first, 1, *pts[first]) == CONTINUE
        assert report(s, second, 1, *pts[second]) == CONTINUE


def test_decisions_never_depend_on_arrival_among_equals() -> None:
    """Every permutation of a rung gives the same verdict for each point judged last."""
    import itertools

    pts = [(0.9, 100), (0.9, 100), (0.8, 50), (0.7, 40), (0.95, 300), (0.8, 50)]
    verdicts = {}
    for perm in itertools.permutations(range(len(pts))):
        ordered = [pts[i] for i in perm]
        verdicts.setdefault(pts[perm[-1]], set()).add(rung_decision(ordered, ("max", "min"), len(pts) - 1, 2)[0])
    assert all(len(v) == 1 for v in verdicts.values()), verdicts


def test_one_objective_continues_ties_at_the_cut_as_rays_asha_does() -> None:
    ours = MultiObjectiveASHA({"accuracy": "max"}, max_t=4, grace_period=1, reduction_factor=2)
    ray_asha = AsyncHyperBandScheduler(time_attr="epoch", metric="accuracy", mode="max", max_t=4,
                                       grace_period=1, reduction_factor=2)
    for tid, acc in (("a", 0.5), ("b", 0.5), ("c", 0.5), ("d", 0.4)):
        t = trial(tid)
        ray_asha.on_trial_add(None, t)
        res = {"epoch": 1, "accuracy": acc}
        assert ours.on_trial_result(None, t, dict(res)) == ray_asha.on_trial_result(None, t, dict(res)), tid
    assert [d.action for d in ours.decisions] == [CONTINUE, CONTINUE, CONTINUE, STOP]


def test_stops_no_more_than_rays_asha_for_eta_2() -> None:
    # Ray's ASHA stops a trial below the median of the *earlier* results at the rung; ours
    # ranks it among all results including itself. For eta = 2 and distinct values ours
    # never stops a trial Ray's would continue.
    rng = random.Random(0)
    for _ in range(20):
        ours = MultiObjectiveASHA({"accuracy": "max"}, max_t=8, grace_period=1, reduction_factor=2)
        ray_asha = AsyncHyperBandScheduler(
            time_attr="epoch", metric="accuracy", mode="max", max_t=8, grace_period=1, reduction_factor=2
        )
        for i, v in enumerate(rng.sample(range(1000), 12)):
            t = trial(f"t{i}")
            ray_asha.on_trial_add(None, t)
            res = {"epoch": 1, "accuracy": v / 1000}
            a, b = ours.on_trial_result(None, t, dict(res)), ray_asha.on_trial_result(None, t, dict(res))
            assert not (a == STOP and b == CONTINUE)


def test_save_and_restore_keep_the_rungs(tmp_path) -> None:
    s = MultiObjectiveASHA(OBJ, max_t=4, grace_period=1, reduction_factor=2)
    report(s, "t1", 1, 0.9, 100)
    s.save(str(tmp_path / "s.pkl"))
    r = MultiObjectiveASHA(OBJ, max_t=4, grace_period=1, reduction_factor=2)
    r.restore(str(tmp_path / "s.pkl"))
    assert report(r, "t2", 1, 0.8, 200) == STOP


def test_a_rung_judges_the_kept_epoch_not_a_later_dip() -> None:
    # A's epoch 2 dips (trained at a high lr) below its epoch 1; the search would keep A's
    # epoch 1 (0.90) if it stopped A now, which beats B's best (0.70): A continues.
    def run(judge_kept: bool) -> str:
        s = MultiObjectiveASHA({"val_accuracy": "max"}, max_t=4, grace_period=1, reduction_factor=2,
                               judge_kept=judge_kept)
        row = lambda e, a: {"epoch": e, "val_accuracy": a, "sparsity": 0.5}  # noqa: E731
        s.on_trial_result(None, trial("B"), row(1, 0.70))
        s.on_trial_result(None, trial("A"), row(1, 0.90))
        s.on_trial_result(None, trial("B"), row(2, 0.70))
        return s.on_trial_result(None, trial("A"), row(2, 0.60))

    assert run(judge_kept=True) == TrialScheduler.CONTINUE
    assert run(judge_kept=False) == TrialScheduler.STOP
    # A new sparsity is a new model: its earlier, less pruned epochs are never the result.
    s = MultiObjectiveASHA({"val_accuracy": "max"}, max_t=4, grace_period=1, reduction_factor=2)
    s.on_trial_result(None, trial("B"), {"epoch": 1, "val_accuracy": 0.70, "sparsity": 0.5})
    s.on_trial_result(None, trial("A"), {"epoch": 1, "val_accuracy": 0.90, "sparsity": 0.2})
    s.on_trial_result(None, trial("B"), {"epoch": 2, "val_accuracy": 0.70, "sparsity": 0.5})
    assert s.on_trial_result(None, trial("A"), {"epoch": 2, "val_accuracy": 0.60, "sparsity": 0.5}) == TrialScheduler.STOP
