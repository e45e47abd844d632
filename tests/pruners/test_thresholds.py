"""Threshold rules on hand-made scores (exact masks)."""

from __future__ import annotations

import pytest
import torch

import pruners
from pruners.thresholds import select

S = torch.tensor([0.5, 0.1, 0.4, 0.3, 0.2, 0.0, 0.9, 0.6], dtype=torch.float64)


def idx(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def test_names():
    assert pruners.list_threshold_rules() == ["absolute", "flops_cut", "fraction", "mean_std", "params_cut",
                                              "sensitivity"]


def test_fraction_removes_lowest_rounded_count():
    assert idx(select(S, "fraction", 0.0)) == []
    assert idx(select(S, "fraction", 0.25)) == [1, 5]
    assert idx(select(S, "fraction", 0.5)) == [1, 3, 4, 5]
    # 0.3 * 8 = 2.4 -> 2
    assert idx(select(S, "fraction", 0.3)) == [1, 5]
    # Halves round to even, as torch.nn.utils.prune counts: 2.5 -> 2, 3.5 -> 4.
    assert idx(select(S, "fraction", 0.3125)) == [1, 5]
    assert idx(select(S, "fraction", 0.4375)) == [1, 3, 4, 5]


def test_fraction_ties_break_by_position():
    s = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert idx(select(s, "fraction", 0.5)) == [0, 1]


def test_absolute_strictly_below():
    assert idx(select(S, "absolute", 0.3)) == [1, 4, 5]
    assert idx(select(S, "absolute", 0.0)) == []


def test_mean_std():
    # mean 0.375, population std sqrt(0.0753125...) ; mean - 1*std = 0.1006...
    s = torch.tensor([0.5, 0.1, 0.4, 0.3, 0.2, 0.0, 0.9, 0.6], dtype=torch.float64)
    thr = s.mean() - s.std(unbiased=False)
    assert 0.1 < thr < 0.11
    assert idx(select(S, "mean_std", 1.0)) == [1, 5]
    assert idx(select(S, "mean_std", 0.0)) == [1, 3, 4, 5]  # strictly below the mean 0.375


def test_sensitivity_cumulative_mass():
    # total 3.0; sorted 0.0, 0.1, 0.2, 0.3, ... cumulative mass 0, 1/30, 3/30, 6/30, 10/30
    assert idx(select(S, "sensitivity", 0.1)) == [1, 4, 5]  # mass 0.1 exactly, included
    assert idx(select(S, "sensitivity", 0.09)) == [1, 5]
    assert idx(select(S, "sensitivity", 0.2)) == [1, 3, 4, 5]
    assert idx(select(S, "sensitivity", 0.0)) == [5]  # zero-mass unit costs nothing


@pytest.mark.parametrize(
    "rule,value",
    [("fraction", 1.0), ("fraction", -0.1), ("sensitivity", 1.0), ("absolute", float("nan")), ("mean_std", "x")],
)
def test_invalid_values(rule, value):
    with pytest.raises(ValueError, match=rule):
        select(S, rule, value)


def test_unknown_rule_lists_choices():
    with pytest.raises(ValueError, match="absolute, flops_cut, fraction, mean_std, params_cut, sensitivity"):
        select(S, "percentile", 0.5)


def test_non_finite_scores_rejected():
    with pytest.raises(ValueError, match="NaN"):
        select(torch.tensor([0.1, float("nan")]), "fraction", 0.5)
