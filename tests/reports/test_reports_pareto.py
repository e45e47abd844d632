"""Pareto ranks, hypervolumes, contributions and knees on hand-made tables.

Values are binary fractions so the expected hypervolumes are exact floats.
"""

from __future__ import annotations

import numpy as np
import pytest

from reports.pareto import (
    hv_contributions,
    hypervolume_2d,
    knee_point,
    nondominated_sort,
    pareto_mask,
)

# accuracy (max), cost (min). B and C are duplicates; E ties D on accuracy and is
# cheaper, so E dominates D; B dominates D too.
FIVE = np.array(
    [
        [0.875, 4.0],  # A
        [0.75, 2.0],  # B
        [0.75, 2.0],  # C = B
        [0.5, 3.0],  # D
        [0.5, 1.0],  # E
    ]
)
REF = (0.0, 8.0)


def test_ranks_and_mask_with_ties_and_duplicates():
    assert nondominated_sort(FIVE, ("max", "min")).tolist() == [1, 1, 1, 2, 1]
    assert pareto_mask(FIVE, ("max", "min")).tolist() == [True, True, True, False, True]


def test_ranks_of_a_chain_and_of_identical_points():
    chain = [[0.9, 1], [0.8, 2], [0.7, 3], [0.6, 4], [0.5, 5]]
    assert nondominated_sort(chain, ("max", "min")).tolist() == [1, 2, 3, 4, 5]
    same = [[0.5, 2]] * 5
    assert nondominated_sort(same, ("max", "min")).tolist() == [1, 1, 1, 1, 1]


def test_three_objectives_mixed_directions():
    # accuracy max, flops min, latency min
    pts = [
        [0.9, 10, 5],
        [0.9, 10, 5],  # duplicate of the first
        [0.8, 5, 5],
        [0.8, 10, 6],  # dominated by rows 0 and 2
        [0.7, 12, 7],  # dominated by row 3
    ]
    assert nondominated_sort(pts, ("max", "min", "min")).tolist() == [1, 1, 1, 2, 3]
    # Flipping every direction: row 4 dominates all; then row 3 dominates rows 0-2.
    assert nondominated_sort(pts, ("min", "max", "max")).tolist() == [3, 3, 3, 2, 1]


def test_hypervolume_exact():
    # Slabs along accuracy: A 0.875*(8-4) + B 0.75*(4-2) + E 0.5*(2-1).
    assert hypervolume_2d(FIVE, REF) == 5.5
    assert hypervolume_2d(FIVE[[0]], REF) == 0.875 * 4.0
    assert hypervolume_2d(np.empty((0, 2)), REF) == 0.0


def test_hypervolume_ignores_points_outside_the_reference_box():
    outside = np.vstack([FIVE, [[0.96875, 8.0]], [[0.9375, 9.0]]])  # cost == / > reference
    assert hypervolume_2d(outside, REF) == 5.5
    assert hypervolume_2d(FIVE, (0.625, 8.0)) == (0.875 - 0.625) * 4 + (0.75 - 0.625) * 2


def test_hypervolume_any_directions():
    # The same geometry written as (error min, cost min) instead of (accuracy max, cost min).
    err = np.column_stack([1.0 - FIVE[:, 0], FIVE[:, 1]])
    assert hypervolume_2d(err, (1.0, 8.0), ("min", "min")) == 5.5


def test_contributions_exact():
    # A owns (0.875-0.75) x (8-4); E owns 0.5 x (2-1); duplicates B, C own nothing
    # alone; D is dominated.
    assert hv_contributions(FIVE, REF).tolist() == [0.5, 0.0, 0.0, 0.0, 0.5]
    # Each is exactly the area lost when the point is removed.
    for i in range(len(FIVE)):
        rest = np.delete(FIVE, i, axis=0)
        assert hv_contributions(FIVE, REF)[i] == hypervolume_2d(FIVE, REF) - hypervolume_2d(rest, REF)


def test_contribution_counts_the_points_a_removed_member_uncovers():
    """(0.5, 1) dominates (0.25, 1); removing it uncovers the second, so it adds only
    (0.5 - 0.25) x (8 - 1) = 1.75, not its whole rectangle (3.5)."""
    assert hv_contributions([[0.5, 1.0], [0.25, 1.0]], (0.0, 8.0)).tolist() == [1.75, 0.0]


def _brute_hv(points: np.ndarray, ref: tuple[int, int]) -> int:
    """Area dominated inside the box, by counting unit cells (integer coordinates)."""
    area = 0
    for acc in range(ref[0], 10):
        for cost in range(0, ref[1]):
            # Cell [acc, acc+1] x [cost, cost+1] is covered if a point has accuracy >= acc+1
            # and cost <= cost.
            if any(p[0] >= acc + 1 and p[1] <= cost for p in points):
                area += 1
    return area


@pytest.mark.parametrize("seed", range(25))
def test_contributions_equal_brute_force_on_random_sets_with_ties_and_duplicates(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    pts = rng.integers(0, 6, size=(n, 2)).astype(float)  # a coarse grid: many ties
    if n > 2:
        pts[1] = pts[0]  # and a duplicate
    ref = (0, 7)
    contrib = hv_contributions(pts, ref)
    total = _brute_hv(pts, ref)
    assert hypervolume_2d(pts, ref) == total
    for i in range(n):
        assert contrib[i] == total - _brute_hv(np.delete(pts, i, axis=0), ref), (pts.tolist(), i)


def test_contributions_without_duplicate():
    pts = FIVE[[0, 1, 3, 4]]  # A, B, D, E
    # B now owns (0.75-0.5) x (4-2).
    assert hv_contributions(pts, REF).tolist() == [0.5, 0.5, 0.0, 0.5]


def test_knee_is_the_front_member_farthest_from_the_extremes_line():
    # Normalised front: A (0, 1), B (1/3, 1/3), E (1, 0); B and C tie, lowest index wins.
    assert knee_point(FIVE) == 1
    assert knee_point(FIVE[[0, 3, 4]]) == 2  # A, D, E: D dominated, tie at 0 -> cheaper E


def test_knee_of_tiny_fronts():
    assert knee_point([[0.9, 5.0]]) == 0
    assert knee_point([[0.9, 5.0], [0.8, 2.0]]) == 1  # two extremes: the cheaper one
    assert knee_point(np.empty((0, 2))) is None


def test_knee_prefers_the_bulge_over_a_dent():
    # Front with one point above the chord (bulge) and one below (dent).
    pts = [[0.5, 1.0], [0.875, 2.0], [0.90625, 6.0], [1.0, 8.0]]
    assert knee_point(pts) == 1


@pytest.mark.parametrize(
    ("values", "directions", "message"),
    [
        ([[1, 2]], ("max",), "2 objective columns but 1 directions"),
        ([[1, 2]], ("max", "up"), "unknown direction 'up'; valid choices: max, min"),
        ([[1, float("nan")]], ("max", "min"), "must be finite"),
        ([1, 2, 3], ("max", "min"), "must be a 2-D array"),
        ([[1, 2]], "maxmin", "not a string"),
    ],
)
def test_bad_input_raises_a_clear_value_error(values, directions, message):
    with pytest.raises(ValueError, match=message):
        nondominated_sort(values, directions)


def test_hypervolume_needs_two_objectives_and_a_finite_reference():
    with pytest.raises(ValueError, match="exactly 2 directions"):
        hypervolume_2d([[1, 2, 3]], (0, 0, 0), ("max", "min", "min"))
    with pytest.raises(ValueError, match="reference must be 2 finite numbers"):
        hypervolume_2d(FIVE, (0.0, float("inf")))
