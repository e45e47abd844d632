"""Multi-objective asynchronous successive halving (MO-ASHA) as a Ray Tune scheduler.

ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020)
judges a trial at each rung against the results other trials recorded at that rung and
keeps the top ``1/eta``. MO-ASHA (Schmucker et al., "Multi-objective Asynchronous
Successive Halving", 2021) does the same with several objectives, replacing "sorted by
the metric" with an order over objective vectors. We use the NSGA-II order (Deb et al.,
"A fast and elitist multiobjective genetic algorithm: NSGA-II", IEEE TEVC 2002):

1. Pareto rank first (rank 1 = not dominated by any result at the rung);
2. within a rank, larger crowding distance first, so the kept trials spread along the
   front rather than cluster at one end (the diversity rule).

Both keys are functions of the objective values alone, never of arrival: equal points
get equal crowding distances (duplicates share one), and points tied on one objective
are ordered by the others, not by when they were recorded.

Asynchronous like Ray's ``AsyncHyperBandScheduler``: a trial reaching a rung is judged at
once against the ``n`` results recorded there so far (its own included). The cut is the
key of the ``ceil(n / eta)``-th result in that order; the trial continues iff its key is
not worse than the cut, so a trial *tied* with a kept one continues, as Ray's ASHA
continues a trial whose metric equals its cutoff (it stops only results strictly below
the ``1 - 1/eta`` quantile of the earlier results at the rung). With one objective the
rank alone decides: the top ``ceil(n / eta)`` of the rung and everything tied with them.

The decision is a pure function (:func:`rung_decision`) over a points array, the
definition. The scheduler reaches the same verdicts without recomputing it: each rung keeps
an index of its results (:mod:`orchestrator.rung_index`; for two objectives the Pareto
layers as staircases, updated in place) that answers a new result's place in the order in
about ``O(log n)`` steps instead of ``O(n^2)``. A randomized test holds the two equal on
thousands of rung histories with ties. The scheduler is tested by driving
``on_trial_result`` with fake trials.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from orchestrator.rung_index import make_rung_index
from orchestrator.steps import rung_milestones
from reports.contract import SELECTION_METRIC, KeptEpoch
from reports.pareto import nondominated_sort

if TYPE_CHECKING:  # pragma: no cover
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

__all__ = ["MultiObjectiveASHA", "RungDecision", "crowding_distance", "rung_decision", "rung_keys", "rung_order"]

logger = logging.getLogger(__name__)

_DIRECTIONS = ("max", "min")


def crowding_distance(points: object, directions: Sequence[str]) -> np.ndarray:
    """NSGA-II crowding distance of each point within one front, order-independent.

    For every objective the distinct points are sorted by it (ties by the other
    objectives, so by value, never by position); the two extremes get an infinite distance
    and each other point adds the gap between its two neighbours divided by the
    objective's range over the front. Copies of one point share its distance; with at most
    two distinct points every distance is infinite.

    Args:
        points: ``(n_points, n_objectives)`` array-like (the members of one front).
        directions: ``"max"`` / ``"min"`` per objective (the distance does not depend on
            it, but it is checked so callers cannot mix up columns).

    Returns:
        Float array of length ``n_points`` (``inf`` for boundary points).
    """
    f = np.asarray(points, dtype=float)
    if f.ndim != 2 or f.shape[1] != len(directions):
        raise ValueError(f"points must be (n, {len(directions)}), got shape {f.shape}")
    if len(f) == 0:
        return np.zeros(0)
    uniq, inverse = np.unique(f, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    m = len(uniq)
    dist = np.zeros(m, dtype=float)
    if m <= 2:
        return np.full(len(f), np.inf)
    for j in range(f.shape[1]):
        others = [uniq[:, k] for k in range(f.shape[1]) if k != j]
        order = np.lexsort((*reversed(others), uniq[:, j]))  # primary: objective j
        col = uniq[order, j]
        dist[order[0]] = dist[order[-1]] = np.inf
        span = col[-1] - col[0]
        if span <= 0:
            continue
        dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist[inverse]


def rung_keys(points: object, directions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(Pareto rank, crowding distance within the rank) of every result at a rung."""
    f = np.asarray(points, dtype=float)
    if f.ndim != 2:
        raise ValueError(f"points must be 2-D (points x objectives), got {f.ndim}-D")
    ranks = nondominated_sort(f, directions)
    crowd = np.zeros(len(f), dtype=float)
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        crowd[members] = crowding_distance(f[members], directions)
    return ranks, crowd


def _better(a: tuple[int, float], b: tuple[int, float]) -> bool:
    """Key ``a`` strictly ahead of ``b``: lower rank, or the same rank and more crowding."""
    return a[0] < b[0] or (a[0] == b[0] and a[1] > b[1])


def rung_decision(points: object, directions: Sequence[str], me: int, eta: float) -> tuple[bool, int, int, int]:
    """Does result ``me`` continue? The top ``ceil(n / eta)`` by (rank, crowding) and ties.

    Args:
        points: ``(n, n_objectives)`` results recorded at the rung (``me``'s included).
        directions: ``"max"`` / ``"min"`` per objective.
        me: Index of the result being judged.
        eta: Reduction factor (> 1).

    Returns:
        ``(continues, position, kept, rank)``: ``position`` is 1 + the number of results
        strictly ahead of ``me``; ``kept`` is ``ceil(n / eta)``; ``rank`` its Pareto rank.
    """
    ranks, crowd = rung_keys(points, directions)
    n = len(ranks)
    keys = [(int(r), float(c)) for r, c in zip(ranks, crowd)]
    kept = max(1, math.ceil(n / eta))
    ordered = sorted(keys, key=lambda k: (k[0], -k[1]))
    cut = ordered[kept - 1]
    mine = keys[me]
    position = 1 + sum(_better(k, mine) for k in keys)
    return not _better(cut, mine), position, kept, int(ranks[me])


def rung_order(points: object, directions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Results at a rung, best first (rank, then crowding; equal keys keep their indices'
    order only for display), and every result's Pareto rank."""
    ranks, crowd = rung_keys(points, directions)
    return np.lexsort((np.arange(len(ranks)), -crowd, ranks)), ranks


@dataclass(frozen=True)
class RungDecision:
    """What MO-ASHA decided for one trial at one rung (kept for the ledger and tests)."""

    trial_id: str
    rung: float
    time: float
    action: str
    pareto_rank: int
    position: int  # 1-based place in the rung order
    kept: int  # how many of the recorded results continue
    recorded: int  # results recorded at the rung, this one included

    def reason(self) -> str:
        verdict = "continues" if self.action == TrialScheduler.CONTINUE else "stopped"
        return (
            f"moasha: {verdict} at rung {self.rung:g} (epoch {self.time:g}): place {self.position} "
            f"of {self.recorded} (Pareto rank {self.pareto_rank}), top {self.kept} continue"
        )


class MultiObjectiveASHA(FIFOScheduler):
    """Asynchronous successive halving on the Pareto rank of several objectives.

    Rungs sit at ``grace_period * reduction_factor**k`` (in ``time_attr`` units) below
    ``max_t``. When a trial first reports a ``time_attr`` at or past a rung it has not
    been judged at, its objective vector is recorded there and the trial continues iff it
    is among the first ``ceil(n / reduction_factor)`` of the ``n`` results recorded at
    that rung by (Pareto rank, crowding distance), or tied with the last of them
    (:func:`rung_decision`): the order depends on the values, never on arrival.
    A trial reaching ``max_t`` is stopped (it is done). Results without ``time_attr`` or
    one of the objectives, or with a non-finite objective, are not judged.

    Args:
        objectives: ``{metric: "max" | "min"}``, at least one (two or more for a Pareto
            front), e.g. ``{"accuracy": "max", "flops": "min"}``.
        time_attr: Result key that measures progress; must increase monotonically within
            a trial. Use ``"epoch"``: Tune's ``training_iteration`` restarts after a
            trial is restored.
        max_t: Trials are stopped once ``time_attr`` reaches this (the trial's epochs).
        grace_period: First rung; no trial is stopped before it.
        reduction_factor: ``eta``; about ``1/eta`` of the trials continue at each rung.
        stop_last_trials: Stop trials at ``max_t`` (as ``AsyncHyperBandScheduler``).
        judge_kept: Judge a trial at a rung on its kept epoch so far (the epoch the search
            would report for it if it stopped now: ``reports.contract.KeptEpoch``, on
            ``val_accuracy`` and ``sparsity``) rather than on its latest epoch. A trial's
            contribution to the front is its kept epoch, and a latest epoch trained at a high
            learning rate can dip below an earlier one (measured in docs/benchmarks.md).
            Results without ``val_accuracy`` are judged as reported.

    Raises:
        ValueError: any argument out of range, with what is allowed.
    """

    def __init__(
        self,
        objectives: Mapping[str, str],
        *,
        time_attr: str = "epoch",
        max_t: float = 100,
        grace_period: float = 1,
        reduction_factor: float = 2,
        stop_last_trials: bool = True,
        judge_kept: bool = True,
    ) -> None:
        if not isinstance(objectives, Mapping) or not objectives:
            raise ValueError("objectives must be a non-empty mapping {metric: 'max' | 'min'}")
        for metric, mode in objectives.items():
            if not isinstance(metric, str) or not metric:
                raise ValueError(f"objective names must be non-empty strings, got {metric!r}")
            if mode not in _DIRECTIONS:
                raise ValueError(f"objective {metric!r}: mode {mode!r} is invalid; valid choices: max, min")
        if not isinstance(time_attr, str) or not time_attr:
            raise ValueError(f"time_attr must be a result key, got {time_attr!r}")
        for name, value in (("max_t", max_t), ("grace_period", grace_period)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if grace_period > max_t:
            raise ValueError(f"grace_period ({grace_period}) must be <= max_t ({max_t})")
        if isinstance(reduction_factor, bool) or not isinstance(reduction_factor, (int, float)) or not reduction_factor > 1:
            raise ValueError(f"reduction_factor must be a number > 1, got {reduction_factor!r}")
        super().__init__()
        self._objectives = dict(objectives)
        self._directions = tuple(self._objectives.values())
        self._time_attr = time_attr
        self._max_t = max_t
        self._eta = float(reduction_factor)
        self._stop_last_trials = bool(stop_last_trials)
        self._judge_kept = bool(judge_kept)
        self._kept: dict[str, KeptEpoch] = {}  # trial_id -> its kept epoch so far
        self._rungs = rung_milestones(grace_period, self._eta, max_t)
        # rung -> [(trial_id, objective vector)] in recording order: the state; the rest is
        # derived from it (and rebuilt on restore instead of checkpointed).
        self._recorded: dict[float, list[tuple[str, tuple[float, ...]]]] = {r: [] for r in self._rungs}
        self.decisions: list[RungDecision] = []
        self._num_stopped = 0
        self._index_rungs()

    def _index_rungs(self) -> None:
        """The derived state: who was judged at each rung, each rung's index, early stops."""
        self._judged_at: dict[float, set[str]] = {r: {tid for tid, _ in self._recorded[r]} for r in self._rungs}
        self._index: dict[float, Any] = {}
        for r in self._rungs:
            self._index[r] = make_rung_index(self._directions, rung_decision)
            self._index[r].load([vec for _, vec in self._recorded[r]])
        self._stops = {d.trial_id: d for d in self.decisions if d.action == TrialScheduler.STOP}

    # -- properties -----------------------------------------------------------------------
    @property
    def rungs(self) -> tuple[float, ...]:
        """Rung milestones in ``time_attr`` units, ascending."""
        return self._rungs

    @property
    def objectives(self) -> dict[str, str]:
        return dict(self._objectives)

    def recorded(self, rung: float) -> list[tuple[str, tuple[float, ...]]]:
        """``(trial_id, objective vector)`` recorded at ``rung``, in recording order."""
        return list(self._recorded[rung])

    def stop_reason(self, trial_id: str) -> str | None:
        """Why the scheduler stopped ``trial_id`` early, or None if it did not."""
        d = self._stops.get(trial_id)
        return d.reason() if d is not None else None

    # -- Tune hooks -----------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # The objectives are the scheduler's own; a single Tune metric does not apply.
        return True

    def _judged(self, trial_id: str, result: Mapping[str, Any]) -> Mapping[str, Any]:
        """The row a rung judges: the trial's kept epoch so far (``judge_kept``), else ``result``."""
        if not self._judge_kept or SELECTION_METRIC not in result:
            return result
        rule = self._kept.setdefault(trial_id, KeptEpoch())
        rule.observe(result)
        return rule.kept or result

    def _vector(self, result: Mapping[str, Any]) -> tuple[float, ...] | None:
        try:
            vec = tuple(float(result[m]) for m in self._objectives)
        except (KeyError, TypeError, ValueError):
            return None
        if not all(math.isfinite(v) for v in vec):
            return None
        return vec

    def _judge(self, trial_id: str, t: float, vec: tuple[float, ...]) -> RungDecision | None:
        """Record ``vec`` at the highest rung <= ``t`` this trial was not judged at.

        Returns the decision (what :func:`rung_decision` gives over the rung's results, from
        the rung's index), or None if there is no such rung.
        """
        for rung in reversed(self._rungs):
            if t < rung or trial_id in self._judged_at[rung]:
                continue
            self._recorded[rung].append((trial_id, vec))
            self._judged_at[rung].add(trial_id)
            position, rank = self._index[rung].add(vec)
            n = len(self._recorded[rung])
            kept = max(1, math.ceil(n / self._eta))
            # Continues iff fewer than `kept` results are strictly ahead of it (the cut is not
            # strictly better), as in rung_decision.
            action = TrialScheduler.CONTINUE if position <= kept else TrialScheduler.STOP
            return RungDecision(trial_id, rung, t, action, rank, position, kept, n)
        return None

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        if self._time_attr not in result:
            return TrialScheduler.CONTINUE
        t = float(result[self._time_attr])
        judged = self._judged(trial.trial_id, result)
        if t >= self._max_t and self._stop_last_trials:
            return TrialScheduler.STOP
        vec = self._vector(judged)
        if vec is None:
            logger.warning(
                "MO-ASHA: result of trial %s lacks a finite value for one of %s; not judged",
                trial.trial_id, list(self._objectives),
            )
            return TrialScheduler.CONTINUE
        decision = self._judge(trial.trial_id, t, vec)
        if decision is None:
            return TrialScheduler.CONTINUE
        self.decisions.append(decision)
        if decision.action == TrialScheduler.STOP:
            self._num_stopped += 1
            self._stops[decision.trial_id] = decision
        return decision.action

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        # A finished trial's last result still informs later trials at the rungs it
        # reached (as in ASHA); the decision itself no longer matters.
        if not result or self._time_attr not in result:
            return
        # The trial reports no more: its kept-epoch rule is done with (the checkpoint stays
        # the size of the running trials, not of the search).
        rule = self._kept.pop(trial.trial_id, None)
        kept = rule.kept if self._judge_kept and rule is not None and rule.kept is not None else result
        vec = self._vector(kept)
        if vec is not None:
            self._judge(trial.trial_id, float(result[self._time_attr]), vec)

    def debug_string(self) -> str:
        rungs = " | ".join(f"rung {r:g}: {len(self._recorded[r])} recorded" for r in self._rungs)
        return f"Using MO-ASHA on {self._objectives}: num_stopped={self._num_stopped}; {rungs}"

    def decisions_as_dicts(self) -> list[dict[str, Any]]:
        return [asdict(d) for d in self.decisions]

    def __getstate__(self) -> dict[str, Any]:
        # The rungs' recorded results are the state; their indexes are rebuilt from them.
        state = dict(self.__dict__)
        for derived in ("_judged_at", "_index", "_stops"):
            state.pop(derived, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._index_rungs()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))
