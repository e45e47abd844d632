"""Threshold rules on hand-made scores (exact masks)."""

from __future__ import annotations

import pytest
import torch

import pruners
from pruners.thresholds import select

S = torch.tensor([0.5, 0.1, 0.4, 0.3, 0.2, 0.0, 0.9, 0.6], dtype=torch.float64)


def idx(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def test_the_registry_holds_the_specified_rules():
    assert {"absolute", "flops_cut", "fraction", "mean_std", "params_cut", "sensitivity"} <= set(
        pruners.list_threshold_rules())


SCORE_RULES = [n for n in pruners.list_threshold_rules() if pruners.thresholds.get_threshold_rule(n).kind == "score"]


@pytest.mark.parametrize("name", SCORE_RULES)
def test_every_score_rule_keeps_the_rule_contract(name):
    """Any registered score rule: a boolean mask of the scores' shape, the same on the same
    scores, and it never removes a unit while keeping a lower-scoring one (ties aside)."""
    value = 0.3
    mask = select(S, name, value)
    assert mask.dtype == torch.bool and mask.shape == S.shape
    assert torch.equal(mask, select(S.clone(), name, value))
    if mask.any() and (~mask).any():
        assert S[mask].max() <= S[~mask].min()


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
    # Scores 1, 1, 3, 3: mean 2, population std exactly 1 (the sample std would be 1.155).
    s = torch.tensor([3.0, 1.0, 3.0, 1.0], dtype=torch.float64)
    assert idx(select(s, "mean_std", 0.9)) == [1, 3]  # below 2 - 0.9 = 1.1 (sample std: 0.96, none)
    assert idx(select(s, "mean_std", 1.0)) == []  # 1 is not strictly below 2 - 1 = 1
    assert idx(select(s, "mean_std", -1.5)) == [0, 1, 2, 3]  # below 3.5: every unit
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
