"""The fast MO-ASHA decides exactly as the one it replaced, on random rung histories with ties.

``_moasha_reference.py`` is a verbatim copy of ``orchestrator/moasha.py`` before the rung
index (every result re-sorted the whole rung). Both schedulers get the same results and must
return the same actions and record the same decisions (rank, place, kept, recorded), across
several rungs, one to three objectives, both directions, copies and coordinate ties from
quantized values, completed trials and a save / restore midway.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import asdict
from types import SimpleNamespace

import _moasha_reference as reference  # tests/orchestrator/ is on sys.path (no package)
import pytest

from orchestrator.moasha import MultiObjectiveASHA
from orchestrator.rung_index import make_rung_index

METRICS = ("a", "b", "c")


def _points(rng: random.Random, n: int, dims: int) -> list[tuple[float, ...]]:
    """Quantized values: few levels give copies and ties in one coordinate; a trade-off
    (the second objective tracks the first) gives wide fronts, noise gives many layers."""
    levels = rng.choice((2, 3, 5, 10, 1000))
    out = []
    for _ in range(n):
        first = rng.randint(0, levels) / levels
        rest = [round(first * rng.uniform(0.5, 1.5) + rng.gauss(0, 0.2), rng.choice((1, 2))) for _ in range(dims - 1)]
        out.append((first, *rest))
    return out


def _directions(rng: random.Random, dims: int) -> tuple[str, ...]:
    return tuple(rng.choice(("max", "min")) for _ in range(dims))


def test_rung_index_places_arrivals_as_the_reference_does() -> None:
    """The core: 2,000 rung histories built one arrival at a time; the last arrival and
    one earlier one of each, (place, Pareto rank), against ``rung_decision`` over all the
    results recorded so far (the reference costs a millisecond a call: it sorts them all)."""
    rng = random.Random(20)
    checked = 0
    for case in range(2000):
        dims = (1, 2, 2, 2, 3)[case % 5]
        directions = _directions(rng, dims)
        index = make_rung_index(directions, reference.rung_decision)
        points = _points(rng, rng.randint(1, 40 if dims < 3 else 12), dims)
        probe = {len(points) - 1, rng.randrange(len(points))}
        for i, p in enumerate(points):
            got = index.add(p)
            if i in probe:
                eta = rng.choice((2, 3, 4))
                go, position, kept, rank = reference.rung_decision(points[: i + 1], directions, i, eta)
                assert got == (position, rank), (directions, points[: i + 1])
                assert (got[0] <= kept) == go
                checked += 1
    assert checked > 3000


def _drive(rng: random.Random, dims: int, restore_at: int | None):
    """One search through both schedulers: trials report epochs 1..max_t in random
    interleaving, some stop reporting (errored), some only report on completion."""
    directions = _directions(rng, dims)
    objectives = dict(zip(METRICS[:dims], directions))
    eta = rng.choice((2, 3))
    kw = dict(time_attr="epoch", max_t=9, grace_period=1, reduction_factor=eta, judge_kept=False)
    ours, ref = MultiObjectiveASHA(objectives, **kw), reference.MultiObjectiveASHA(objectives, **kw)
    n_trials = rng.randint(5, 40 if dims < 3 else 15)
    values = _points(rng, n_trials * 9, dims)
    running = {f"t{i}": 0 for i in range(n_trials)}
    step = 0
    while running:
        tid = rng.choice(sorted(running))
        running[tid] += rng.choice((1, 1, 2))
        vec = values.pop()
        result = {"epoch": running[tid], **dict(zip(METRICS, vec))}
        trial = SimpleNamespace(trial_id=tid)
        if rng.random() < 0.05:  # errored: never reports again
            del running[tid]
            continue
        if rng.random() < 0.05:  # reports only its end
            ours.on_trial_complete(None, trial, dict(result))
            ref.on_trial_complete(None, trial, dict(result))
            del running[tid]
            continue
        a, b = ours.on_trial_result(None, trial, dict(result)), ref.on_trial_result(None, trial, dict(result))
        assert a == b, (tid, result, ref.decisions[-1:])
        if a == "STOP":
            del running[tid]
        step += 1
        if step == restore_at:
            ours = pickle.loads(pickle.dumps(ours))
    return ours, ref


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_the_scheduler_decides_as_the_reference_over_whole_searches(dims: int) -> None:
    rng = random.Random(dims)
    for case in range(50 if dims < 3 else 15):
        ours, ref = _drive(rng, dims, restore_at=rng.randint(1, 60))
        assert [asdict(d) for d in ours.decisions] == [asdict(d) for d in ref.decisions]
        assert {r: ours.recorded(r) for r in ours.rungs} == {r: ref.recorded(r) for r in ref.rungs}
        stopped = {d.trial_id for d in ref.decisions if d.action == "STOP"}
        assert {t: ours.stop_reason(t) for t in stopped} == {t: ref.stop_reason(t) for t in stopped}


def test_the_checkpoint_holds_no_index() -> None:
    """The rung index is rebuilt from the recorded results on restore, not pickled."""
    ours, _ = _drive(random.Random(7), 2, restore_at=None)
    state = pickle.loads(pickle.dumps(ours)).__getstate__()
    assert not {"_index", "_judged_at", "_stops"} & set(state)
