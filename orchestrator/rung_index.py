"""The results recorded at one MO-ASHA rung, indexed so a new result is judged fast.

:func:`orchestrator.moasha.rung_decision` defines the verdict: the Pareto rank of every
result at the rung (NSGA-II's non-dominated sort), the crowding distance within each rank,
and the new result's place in that order. Recomputed from scratch on every arrival that is
``O(n^2)`` per result (the dominance matrix), ``O(n^3)`` over a rung. This module keeps the
structure the verdict needs between arrivals and gives the *same* ``(position, rank)``:

* one objective (:class:`SortedRung`): ranks are the distinct values in order and every
  crowding distance is infinite (a rank holds one distinct value), so the place is
  1 + the number of results strictly better: two binary searches.
* two objectives (:class:`StaircaseRung`): each Pareto layer is a staircase, its distinct
  points sorted by the first objective (the second then runs the other way), with a count
  per point for copies. A new point's rank is found by a binary search over the layers
  (dominance by a layer is monotone in the layer's index), each test a binary search in a
  staircase (Kung, Luccio and Preparata 1975; Jensen 2003). The points of its layer it
  dominates form one contiguous run; they move one layer down and push out the run of
  that layer they dominate, and so on until nothing is pushed (Yakupov and Buzdalov,
  "Incremental non-dominated sorting with O(N) insertion for the two-dimensional case",
  CEC 2015). The results ahead of the new one are the sizes of the better layers plus the members of its own layer with a larger crowding distance, whose
  neighbours along a staircase are the same in both objectives. When a whole layer is
  dominated the rest of the cascade is known (every layer below moves down one), so a
  point that dominates a chain is one list insertion, not one step per layer.
* three or more (:class:`FullRung`): the reference computation over every recorded point.

Cost per result with two objectives: ``O(log^2 n)`` Python steps to find the rank and
``O(log n)`` per layer the new point pushes a partial run of, plus array work done in C
(numpy, ``memmove``, ``sum``) linear in the sizes involved: its layer's crowding distances,
the list splices and the sum of the better layers' sizes. Not a worst-case bound: a point
that pushes a partial run through every one of ``L`` layers costs ``O(L log n)``
(``bench/driver_scale.py`` measures the growth on stand-in searches). Arithmetic is
done exactly as :func:`~orchestrator.moasha.crowding_distance` does it (same differences,
same divisions, same order of the two sums), so equal keys stay equal and the verdicts
are identical, ties included.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["FullRung", "SortedRung", "StaircaseRung", "make_rung_index"]


def _minimisation_signs(directions: Sequence[str]) -> tuple[float, ...]:
    return tuple(-1.0 if d == "max" else 1.0 for d in directions)


class SortedRung:
    """One objective: sorted values (every result, and the distinct ones)."""

    def __init__(self, directions: Sequence[str]) -> None:
        (self._sign,) = _minimisation_signs(directions)
        self._all: list[float] = []
        self._distinct: list[float] = []

    def __len__(self) -> int:
        return len(self._all)

    def load(self, vecs: Sequence[Sequence[float]]) -> None:
        """Index results recorded earlier (a restored checkpoint)."""
        for vec in vecs:
            self.add(vec)

    def add(self, vec: Sequence[float]) -> tuple[int, int]:
        u = float(vec[0]) * self._sign
        position = 1 + bisect_left(self._all, u)
        self._all.insert(position - 1, u)
        i = bisect_left(self._distinct, u)
        if i == len(self._distinct) or self._distinct[i] != u:
            self._distinct.insert(i, u)
        return position, i + 1


class StaircaseRung:
    """Two objectives: the Pareto layers as staircases, updated in place (see the module)."""

    def __init__(self, directions: Sequence[str]) -> None:
        self._signs = _minimisation_signs(directions)
        # Per layer, its distinct points in minimisation form: first objective ascending
        # (xs), minus the second ascending (nys, i.e. the second descending), copies.
        self._xs: list[list[float]] = []
        self._nys: list[list[float]] = []
        self._counts: list[list[int]] = []
        self._sizes: list[int] = []  # results per layer (a C-speed sum gives the better ones)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def load(self, vecs: Sequence[Sequence[float]]) -> None:
        """Index results recorded earlier (a restored checkpoint). In lexicographic order
        (minimisation form) no point dominates one added before it: nothing moves."""
        for vec in sorted(vecs, key=lambda v: (float(v[0]) * self._signs[0], float(v[1]) * self._signs[1])):
            self.add(vec)

    def _dominated_by(self, k: int, x: float, ny: float) -> bool:
        """Does some point of layer ``k`` dominate ``(x, -ny)``?"""
        xs = self._xs[k]
        i = bisect_right(xs, x) - 1  # the point with the largest first objective <= x
        if i < 0:
            return False
        qny = self._nys[k][i]
        return qny >= ny and not (xs[i] == x and qny == ny)

    def _layer_of(self, x: float, ny: float) -> int:
        lo, hi = 0, len(self._xs)  # first layer that does not dominate the point
        while lo < hi:
            mid = (lo + hi) // 2
            if self._dominated_by(mid, x, ny):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _insert_layer(self, k: int, xs: list[float], nys: list[float], counts: list[int]) -> None:
        self._xs.insert(k, xs), self._nys.insert(k, nys), self._counts.insert(k, counts)
        self._sizes.insert(k, sum(counts))

    def _push_down(self, k: int, xs: list[float], nys: list[float], counts: list[int]) -> None:
        """Move the run ``(xs, nys, counts)`` (dominated in layer ``k - 1``) into layer ``k``,
        pushing the run of layer ``k`` it dominates further down."""
        while xs:
            if k == len(self._xs):
                self._insert_layer(k, xs, nys, counts)
                return
            lx, lny, lc = self._xs[k], self._nys[k], self._counts[k]
            lo, hi = bisect_left(lx, xs[0]), bisect_right(lny, nys[-1])
            if lo == 0 and hi == len(lx):
                # The whole layer is dominated, so it pushes the whole next one (each of
                # whose points some point of it dominates), and so on: the run is a new
                # layer and every layer from k on moves down one (a chain costs O(1) steps).
                self._insert_layer(k, xs, nys, counts)
                return
            out = (lx[lo:hi], lny[lo:hi], lc[lo:hi])
            lx[lo:hi], lny[lo:hi], lc[lo:hi] = xs, nys, counts
            self._sizes[k] += sum(counts) - sum(out[2])
            xs, nys, counts = out
            k += 1

    def add(self, vec: Sequence[float]) -> tuple[int, int]:
        x, ny = float(vec[0]) * self._signs[0], -(float(vec[1]) * self._signs[1])
        self._n += 1
        k = self._layer_of(x, ny)
        if k == len(self._xs):
            self._insert_layer(k, [x], [ny], [1])
            return 1 + sum(self._sizes[:k]), k + 1
        lx, lny, lc = self._xs[k], self._nys[k], self._counts[k]
        lo = bisect_left(lx, x)
        if lo < len(lx) and lx[lo] == x and lny[lo] == ny:  # a copy of a member: nothing moves
            lc[lo] += 1
            self._sizes[k] += 1
        else:
            hi = bisect_right(lny, ny)  # [lo, hi): the members this point dominates
            if lo == 0 and hi == len(lx):  # dominates its whole layer: see _push_down
                self._insert_layer(k, [x], [ny], [1])
                return 1 + sum(self._sizes[:k]), k + 1
            out = (lx[lo:hi], lny[lo:hi], lc[lo:hi])
            lx[lo:hi], lny[lo:hi], lc[lo:hi] = [x], [ny], [1]
            self._sizes[k] += 1 - sum(out[2])
            self._push_down(k + 1, *out)
        return 1 + sum(self._sizes[:k]) + self._more_crowded(k, lo), k + 1

    def _more_crowded(self, k: int, i: int) -> int:
        """Results in layer ``k`` whose crowding distance exceeds that of distinct point ``i``.

        The arithmetic of ``crowding_distance``: extremes infinite, each inner point the gap
        between its neighbours over the layer's span, first objective then second."""
        m = len(self._xs[k])
        if m <= 2 or i == 0 or i == m - 1:
            return 0  # every distance infinite, or the point is an extreme (nothing beats inf)
        x = np.asarray(self._xs[k])
        ny = np.asarray(self._nys[k])
        crowd = (x[2:] - x[:-2]) / (x[-1] - x[0]) + (ny[2:] - ny[:-2]) / (ny[-1] - ny[0])
        mine = crowd[i - 1]
        counts = np.asarray(self._counts[k])
        return int(counts[[0, m - 1]].sum() + counts[1:-1][crowd > mine].sum())


class FullRung:
    """Three or more objectives: the reference decision over every recorded point,
    ``O(n^2)`` per result (no incremental structure for d > 2 yet)."""

    def __init__(self, directions: Sequence[str], decide: Callable[..., tuple[bool, int, int, int]]) -> None:
        self._directions = tuple(directions)
        self._decide = decide
        self._points: list[tuple[float, ...]] = []

    def __len__(self) -> int:
        return len(self._points)

    def load(self, vecs: Sequence[Sequence[float]]) -> None:
        self._points.extend(tuple(v) for v in vecs)

    def add(self, vec: Sequence[float]) -> tuple[int, int]:
        self._points.append(tuple(vec))
        _, position, _, rank = self._decide(self._points, self._directions, len(self._points) - 1, 2.0)
        return position, rank


def make_rung_index(directions: Sequence[str], decide: Callable[..., tuple[bool, int, int, int]]):
    """The fastest exact index for ``len(directions)`` objectives."""
    if len(directions) == 1:
        return SortedRung(directions)
    if len(directions) == 2:
        return StaircaseRung(directions)
    return FullRung(directions, decide)
