"""Pareto dominance, non-dominated sorting, 2-D hypervolume and knee points.

Pure numpy functions over a ``(n_points, n_objectives)`` array plus one direction
per objective (``"max"`` or ``"min"``). Internally every objective is turned into
a minimisation by negating the ``"max"`` columns, so one code path serves every
mix of directions.

Definitions used throughout (minimisation form):

* ``a`` dominates ``b`` when ``a`` is no worse in every objective and strictly
  better in at least one. Duplicates therefore never dominate each other and
  share a rank.
* Pareto rank 1 is the non-dominated set; rank ``k + 1`` is the non-dominated set
  once ranks ``1..k`` are removed (Deb et al., "A fast and elitist multiobjective
  genetic algorithm: NSGA-II", IEEE TEVC 2002).
* The hypervolume of a set is the area it dominates inside the box bounded by the
  reference point. A point not strictly better than the reference in both
  objectives bounds no area and adds nothing.
* A point's hypervolume contribution is exclusive: the area lost when that one
  point is removed. Two identical points each contribute 0 (either alone covers
  the same area), and a dominated point contributes 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DIRECTIONS = ("max", "min")


def _as_minimisation(values: object, directions: Sequence[str]) -> np.ndarray:
    """Validate ``values`` / ``directions`` and return a float copy in minimisation form."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1 and len(directions) == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(
            f"objective values must be a 2-D array (points x objectives), got {arr.ndim}-D"
        )
    if isinstance(directions, str):
        raise ValueError("directions must be a sequence such as ('max', 'min'), not a string")
    if arr.shape[1] != len(directions):
        raise ValueError(
            f"{arr.shape[1]} objective columns but {len(directions)} directions given"
        )
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"unknown direction {bad[0]!r}; valid choices: max, min")
    if not np.isfinite(arr).all():
        raise ValueError("objective values must be finite (drop NaN/inf rows first)")
    signs = np.array([-1.0 if d == "max" else 1.0 for d in directions])
    return arr * signs


def _dominance_matrix(f: np.ndarray) -> np.ndarray:
    """``D[i, j]`` is True when point ``i`` dominates point ``j`` (minimisation form)."""
    no_worse = (f[:, None, :] <= f[None, :, :]).all(axis=2)
    better = (f[:, None, :] < f[None, :, :]).any(axis=2)
    return no_worse & better


def pareto_mask(values: object, directions: Sequence[str]) -> np.ndarray:
    """Mark the non-dominated points.

    Args:
        values: ``(n_points, n_objectives)`` array-like of finite numbers.
        directions: One of ``"max"`` / ``"min"`` per objective column.

    Returns:
        Boolean array of length ``n_points``; True for points no other point
        dominates (duplicates of a non-dominated point are all True).
    """
    return nondominated_sort(values, directions) == 1


def nondominated_sort(values: object, directions: Sequence[str]) -> np.ndarray:
    """Pareto rank of every point, for any number of objectives.

    Args:
        values: ``(n_points, n_objectives)`` array-like of finite numbers.
        directions: One of ``"max"`` / ``"min"`` per objective column.

    Returns:
        Integer array of 1-based ranks (1 = on the Pareto front).
    """
    f = _as_minimisation(values, directions)
    n = f.shape[0]
    ranks = np.zeros(n, dtype=np.int64)
    if n == 0:
        return ranks
    if f.shape[1] == 2:
        return _sort_2d(f)
    dom = _dominance_matrix(f)
    # Deb's bookkeeping: how many points still dominate each point; a point joins
    # the next front when that count drops to zero.
    dominated_by = dom.sum(axis=0)
    current = dominated_by == 0
    rank = 1
    while current.any():
        ranks[current] = rank
        dominated_by = dominated_by - dom[current].sum(axis=0)
        dominated_by[ranks > 0] = -1  # already ranked, never picked again
        current = dominated_by == 0
        rank += 1
    return ranks


def _sort_2d(f: np.ndarray) -> np.ndarray:
    """Pareto ranks of minimisation-form points with two objectives, in O(n log n).

    A point's rank is one more than the highest rank among the points that dominate it
    (the longest chain of dominance ending at it, which is what peeling fronts gives). In
    lexicographic order every dominator of a point comes before it, and among the points
    before it those with a second objective no larger are exactly its dominators (copies
    aside: identical points are ranked together, before any of them is recorded). The
    lowest second objective of each rank so far never decreases with the rank, so the
    highest rank below a point is a binary search (Jensen 2003, after Kung et al. 1975).
    """
    import bisect

    unique, inverse = np.unique(f, axis=0, return_inverse=True)  # sorted lexicographically
    lowest: list[float] = []  # per rank - 1: the lowest second objective seen at that rank
    unique_rank = np.empty(len(unique), dtype=np.int64)
    for u, x1 in enumerate(unique[:, 1].tolist()):
        r = bisect.bisect_right(lowest, x1)  # ranks holding a point with second objective <= x1
        if r == len(lowest):
            lowest.append(x1)
        elif x1 < lowest[r]:
            lowest[r] = x1
        unique_rank[u] = r + 1
    return unique_rank[inverse.reshape(-1)]


def _front_2d(
    points: object, reference: Sequence[float], directions: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimisation-form points, reference, and a mask of points inside the reference box."""
    if len(directions) != 2:
        raise ValueError(f"hypervolume_2d needs exactly 2 directions, got {len(directions)}")
    f = _as_minimisation(points, directions)
    ref = np.asarray(reference, dtype=float)
    if ref.shape != (2,) or not np.isfinite(ref).all():
        raise ValueError(f"reference must be 2 finite numbers, got {reference!r}")
    ref = ref * np.array([-1.0 if d == "max" else 1.0 for d in directions])
    inside = (f < ref).all(axis=1)
    return f, ref, inside


def hypervolume_2d(
    points: object,
    reference: Sequence[float],
    directions: Sequence[str] = ("max", "min"),
) -> float:
    """Area dominated by ``points`` inside the box bounded by ``reference``.

    Args:
        points: ``(n_points, 2)`` array-like of finite numbers.
        reference: The reference point, in the objectives' own units (for
            accuracy-up / cost-down: ``(0.0, dense_cost)``).
        directions: Direction of each of the two objectives.

    Returns:
        The hypervolume (0.0 when no point is strictly better than the reference).
    """
    f, ref, inside = _front_2d(points, reference, directions)
    return _hv_min(f[inside], ref)


def hv_contributions(
    points: object,
    reference: Sequence[float],
    directions: Sequence[str] = ("max", "min"),
) -> np.ndarray:
    """Exclusive 2-D hypervolume contribution of every point.

    ``contribution[i] = HV(points) - HV(points without i)``, computed exactly that way for
    every member of the front (removing a member can uncover points it dominated, so no
    closed form over the front alone is right). Dominated points contribute 0 (removing
    one changes nothing), and so does every copy of a duplicated point (the other copy
    still covers its area).

    Args:
        points: ``(n_points, 2)`` array-like of finite numbers.
        reference: The reference point, in the objectives' own units.
        directions: Direction of each of the two objectives.

    Returns:
        Float array of length ``n_points``; 0.0 for dominated points, points outside the
        reference box, and copies of a duplicated point.
    """
    f, ref, inside = _front_2d(points, reference, directions)
    out = np.zeros(len(f), dtype=float)
    if not inside.any():
        return out
    total = _hv_min(f[inside], ref)
    ranks = nondominated_sort(f[inside], ("min", "min"))
    members = np.flatnonzero(inside)[ranks == 1]
    # Without member i, the points left undominated are among ranks 1 and 2 (every deeper
    # point is dominated by a rank-2 point, which stays), and _hv_min adds nothing for a
    # dominated point: the same sum, over far fewer points.
    near = np.flatnonzero(inside)[ranks <= 2]
    for i in members:
        if ((f == f[i]).all(axis=1)).sum() > 1:
            continue  # a duplicate: the other copy covers the same area
        out[i] = total - _hv_min(f[near[near != i]], ref)
    return out


def _hv_min(f: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of minimisation-form points that are all inside the reference box."""
    if len(f) == 0:
        return 0.0
    f = f[np.lexsort((f[:, 1], f[:, 0]))]
    area = 0.0
    best_1 = ref[1]
    for x0, x1 in f:
        if x1 < best_1:
            area += (ref[0] - x0) * (best_1 - x1)
            best_1 = x1
    return float(area)


def dominates(point: object, points: object, directions: Sequence[str]) -> np.ndarray:
    """Whether ``point`` dominates each of ``points`` (no worse everywhere, better once)."""
    f = _as_minimisation(points, directions)
    p = _as_minimisation(np.asarray(point, dtype=float)[None, :], directions)[0]
    return (p <= f).all(axis=1) & (p < f).any(axis=1)


def knee_point(points: object, directions: Sequence[str] = ("max", "min")) -> int | None:
    """Index of the knee of the Pareto front of ``points``.

    Rule (after Das, "On characterizing the 'knee' of the Pareto curve based on
    normal-boundary intersection", Structural Optimization 1999): scale each
    objective of the front members to [0, 1] (0 = best), draw the line through
    the two extreme members (best in objective 0, best in objective 1), and take
    the member with the largest signed distance from it towards the ideal point
    (0, 0). That is the point where trading one objective for the other stops
    paying. Ties (for example a front of one or two distinct points, where every
    distance is 0, or duplicated points) go to the member best in objective 1
    (the cost, for accuracy-up / cost-down), then to the lowest index.

    Args:
        points: ``(n_points, 2)`` array-like of finite numbers; dominated points
            are allowed and ignored.
        directions: Direction of each of the two objectives.

    Returns:
        Index into ``points`` of the knee, or None when ``points`` is empty.
    """
    if len(directions) != 2:
        raise ValueError(f"knee_point needs exactly 2 directions, got {len(directions)}")
    f = _as_minimisation(points, directions)
    if len(f) == 0:
        return None
    members = np.flatnonzero(nondominated_sort(f, ("min", "min")) == 1)
    front = f[members]
    lo, hi = front.min(axis=0), front.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    z = (front - lo) / span
    # Extremes: best objective 0 (ties: best objective 1) and vice versa.
    a = z[np.lexsort((z[:, 1], z[:, 0]))[0]]
    b = z[np.lexsort((z[:, 0], z[:, 1]))[0]]
    d = b - a
    norm = float(np.hypot(d[0], d[1]))
    if norm == 0.0:
        dist = np.zeros(len(z))
    else:
        # Signed distance to the chord, positive on the ideal point's side.
        cross = d[0] * (z[:, 1] - a[1]) - d[1] * (z[:, 0] - a[0])
        ideal_side = np.sign(d[0] * (0.0 - a[1]) - d[1] * (0.0 - a[0])) or 1.0
        dist = ideal_side * cross / norm
    best = dist.max()
    tied = np.flatnonzero(np.isclose(dist, best, rtol=0.0, atol=1e-12))
    winner = tied[np.lexsort((members[tied], front[tied, 1]))[0]]
    return int(members[winner])


def knee_among(points: object, references: object, directions: Sequence[str] = ("max", "min")) -> int | None:
    """Index into ``points`` of the knee of the trials' front when reference models compete.

    The one rule the report (``reports.tables``) and the live monitor (``reports.live``)
    share: the knee is :func:`knee_point` of the points that neither another point nor
    any reference (the dense model, the dense model in int8) dominates. None when there
    is no such point.

    Args:
        points: ``(n, 2)`` finite objective values of the trials.
        references: ``(m, 2)`` finite objective values of the reference models (m may be 0).
        directions: Direction of each of the two objectives.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    refs = np.asarray(references, dtype=float).reshape(-1, 2)
    if len(pts) == 0:
        return None
    members = np.flatnonzero(nondominated_sort(np.vstack([pts, refs]), directions)[: len(pts)] == 1)
    if len(members) == 0:
        return None
    return int(members[knee_point(pts[members], directions)])
