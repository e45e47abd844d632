"""Syne Tune's MOASHA (``syne-tune``, the optional extra ``.[syne]``) as a peer in the replay.

``make`` builds Syne Tune's own ``MOASHA`` and wraps it in the interface
``replay.simulate`` drives (``on_trial_add`` / ``on_trial_result`` / ``on_trial_complete``
with stand-in trials; Syne Tune's methods take no controller argument and real
``syne_tune.backend.trial_status.Trial`` objects, which the wrapper passes). Syne Tune's
MOASHA has one direction for every metric (``do_minimize``), so an objective to maximise is
reported negated (``-val_accuracy``).

Two variants:

* ``syne`` (as shipped): the default ``NonDominatedPriority``. It returns
  ``nondominated_sort(X)``, the *indices of the results in sorted order* (best first), but
  ``Bracket.on_result`` reads its output as *one priority per result* (lower is better) and
  judges the new result by the last entry, ``priorities[-1]``: the index of whichever result
  was sorted last, not the new result's place. A result better than every other at its rung
  is stopped when the worst one was recorded late (four results in a chain, then a fifth
  better than all of them: the worst, index 3, sits at place 3 of 5, 0.6 > 1/2: STOP).
* ``syne-fixed``: :class:`CorrectedPriority`, the one line corrected: the same order turned
  into each result's place in it (``ranks[order] = arange(n)``).

Speed: Syne Tune's bracket re-sorts every result at a rung on every arrival
(``O(n^2)`` numpy work per result, about 0.5 s at 4,000 results on this machine), which
makes a 10,000-configuration replay take hours. For two objectives :class:`FastBracket`
reaches the same decisions without the re-sort: the rung's Pareto layers are kept as
staircases (Prunefront's ``orchestrator.rung_index.StaircaseRung``), each member tagged with
its index at the rung, and only the one layer the decision needs is ordered by Syne Tune's
epsilon net (:func:`epsilon_net_ranks`, the same arithmetic as its ``compute_epsilon_net``).
``tests/bench/test_syne_peer.py`` holds the fast and the real bracket equal on random rung
histories. Three or more objectives (the recorded grid) run Syne Tune's own bracket.
"""

from __future__ import annotations

import datetime
from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

import numpy as np

try:
    from syne_tune.backend.trial_status import Trial
    from syne_tune.optimizer.schedulers.asha import Bracket
    from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA
    from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import NonDominatedPriority
    from syne_tune.optimizer.schedulers.multiobjective.non_dominated_priority import nondominated_sort
except ImportError:  # the optional extra is not installed: available() says so
    AVAILABLE = False
    Bracket = NonDominatedPriority = MOASHA = object  # type: ignore[misc,assignment]
else:
    AVAILABLE = True

from orchestrator.rung_index import StaircaseRung

VARIANTS = ("syne", "syne-fixed")
SKIP = "# skipped: Syne Tune's MOASHA (syne-tune is not installed; pip install -e '.[syne]')"


class CorrectedPriority(NonDominatedPriority):  # type: ignore[misc,valid-type]
    """Syne Tune's non-dominated priority with its one line corrected: each result's place
    in the sorted order (what ``Bracket.on_result`` expects), not the sorted indices."""

    def priority_unsafe(self, objectives: np.ndarray) -> np.ndarray:
        order = np.asarray(nondominated_sort(X=objectives, dim=self.dim, max_items=self.max_num_samples))
        ranks = np.empty(len(order), dtype=int)
        ranks[order] = np.arange(len(order))  # the corrected line
        return ranks


def epsilon_net_ranks(x: np.ndarray, dim: int | None = 0) -> np.ndarray:
    """``syne_tune...non_dominated_priority.compute_epsilon_net(x, dim)`` in ``O(k^2)``:
    the farthest-point order (its first point the smallest in ``dim``), returned as each
    item's rank. The same distances (``sqrt`` of the summed squares, as ``np.linalg.norm``),
    and the same ties (the lowest index among the farthest)."""
    k = x.shape[0]
    d = x[:, None, :] - x[None, :, :]
    dist = np.sqrt(np.add.reduce((d.conj() * d).real, axis=-1))  # (k, k), elementwise as Syne Tune's
    last = int(np.argmin(x, axis=0)[dim])
    order = [last]
    mind = np.full(k, np.inf)
    mind[last] = -np.inf  # chosen: never the farthest again
    for _ in range(k - 1):
        np.minimum(mind, dist[last], out=mind)
        last = int(mind.argmax())  # the first (lowest index) of the farthest, as Syne Tune's argmax
        order.append(last)
        mind[last] = -np.inf
    ranks = np.empty(k, dtype=int)
    ranks[np.asarray(order)] = np.arange(k)
    return ranks


class _Tagged(int):
    """A count of 1 in a staircase that carries its result's index at the rung."""

    index: int


class _Rung:
    """One rung's results as Pareto-layer staircases, each member tagged with its index."""

    def __init__(self) -> None:
        self.stairs = StaircaseRung(("min", "min"))
        self.exact = True  # False once two results are equal (a count > 1 loses its tags)

    def add(self, index: int, vec: list[float]) -> int:
        """Add the result; its layer (0-based)."""
        _, rank = self.stairs.add(vec)
        k = rank - 1
        xs, counts = self.stairs._xs[k], self.stairs._counts[k]
        i = bisect_left(xs, float(vec[0]))
        if counts[i] != 1:
            self.exact = False
            return k
        tag = _Tagged(1)
        tag.index = index
        counts[i] = tag
        return k

    def order(self, k: int) -> np.ndarray:
        """Layer ``k``'s indices in the order Syne Tune's ``nondominated_sort`` puts them:
        the members ascending, permuted by their epsilon-net ranks (used as indices, as
        ``nondominated_sort`` uses ``compute_epsilon_net``'s output)."""
        s = self.stairs
        members = sorted(zip((c.index for c in s._counts[k]), s._xs[k], s._nys[k]))
        front = np.array([m[0] for m in members], dtype=int)
        x = np.array([[m[1], -m[2]] for m in members], dtype=float)
        return front[epsilon_net_ranks(x, dim=0)]


class FastBracket(Bracket):  # type: ignore[misc,valid-type]
    """Syne Tune's ``Bracket`` for two objectives and a non-dominated priority (as shipped or
    corrected), deciding from :class:`_Rung` staircases instead of re-sorting the rung."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._index: dict[float, _Rung] = {}
        exact_type = type(self.priority) in (NonDominatedPriority, CorrectedPriority)
        self._fast = exact_type and self.priority.dim == 0 and self.priority.max_num_samples is None

    def on_result(self, trial_id: int, cur_iter: int, metrics: dict | None) -> str:
        if not self._fast or len(metrics) != 2:
            return super().on_result(trial_id, cur_iter, metrics)
        action = "CONTINUE"
        for milestone, recorded in self.rungs:
            if cur_iter < milestone or trial_id in recorded:
                continue
            rung = self._index.setdefault(milestone, _Rung())
            layer = rung.add(len(recorded), [float(v) for v in metrics.values()])
            if recorded and self._place(rung, layer, recorded, metrics) / (len(recorded) + 1) > 1 / self.rf:
                action = "STOP"
            recorded[trial_id] = metrics
            break
        return action

    def _place(self, rung: _Rung, layer: int, recorded: Mapping, metrics: Mapping) -> int:
        """``priorities[-1]`` ranked among the priorities, as ``Bracket.on_result`` computes it."""
        n = len(recorded) + 1
        if not rung.exact:  # equal results: Syne Tune's own computation
            x = np.array([list(v.values()) for v in recorded.values()] + [list(metrics.values())])
            p = self.priority(x)
            return int(np.searchsorted(sorted(p), p)[-1])
        if isinstance(self.priority, CorrectedPriority):  # the new result's place in the order
            before = sum(rung.stairs._sizes[:layer])
            return before + int(np.flatnonzero(rung.order(layer) == n - 1)[0])
        return int(rung.order(len(rung.stairs._xs) - 1)[-1])  # as shipped: the last-sorted index


class _Wrapped:
    """Syne Tune's MOASHA behind the interface ``replay.simulate`` drives."""

    def __init__(self, scheduler: Any, objectives: Mapping[str, str]) -> None:
        self.scheduler = scheduler
        self.objectives = dict(objectives)
        self._ids: dict[str, int] = {}
        self._trials: dict[str, Any] = {}

    def _trial(self, trial: Any) -> Any:
        key = str(trial.trial_id)
        if key not in self._trials:
            self._ids[key] = len(self._ids)
            self._trials[key] = Trial(trial_id=self._ids[key], config={}, creation_time=datetime.datetime.now())
        return self._trials[key]

    def _result(self, result: Mapping[str, Any]) -> dict[str, Any]:
        out = {"epoch": int(result["epoch"])}
        for name, mode in self.objectives.items():
            out[metric_name(name, mode)] = -float(result[name]) if mode == "max" else float(result[name])
        return out

    def on_trial_add(self, _controller: Any, trial: Any) -> None:
        self.scheduler.on_trial_add(self._trial(trial))

    def on_trial_result(self, _controller: Any, trial: Any, result: Mapping[str, Any]) -> str:
        return self.scheduler.on_trial_result(self._trial(trial), self._result(result))

    def on_trial_complete(self, _controller: Any, trial: Any, result: Mapping[str, Any]) -> None:
        self.scheduler.on_trial_complete(self._trial(trial), self._result(result))


def metric_name(name: str, mode: str) -> str:
    return f"-{name}" if mode == "max" else name


def make(variant: str, max_t: int, objectives: Mapping[str, str], grace: int = 1, eta: float = 2,
         fast: bool = True) -> _Wrapped:
    """Syne Tune's MOASHA, ``syne`` (as shipped) or ``syne-fixed`` (one line corrected), on
    ``objectives`` with the replay's rungs; ``fast``: :class:`FastBracket` (same decisions)."""
    if not AVAILABLE:
        raise RuntimeError(SKIP)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid choices: {', '.join(VARIANTS)}")
    priority = NonDominatedPriority() if variant == "syne" else CorrectedPriority()
    metrics = [metric_name(n, m) for n, m in objectives.items()]
    sched = MOASHA(config_space={}, metrics=metrics, do_minimize=True, time_attr="epoch", multiobjective_priority=priority,
                   max_t=max_t, grace_period=grace, reduction_factor=eta, brackets=1, random_seed=0)
    if fast:
        sched.brackets = [FastBracket(grace, max_t, eta, 0, priority)]
    return _Wrapped(sched, objectives)
