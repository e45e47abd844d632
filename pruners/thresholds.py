"""Threshold rules: how many units a set of scores loses.

A rule maps ``(scores, value)`` to a boolean mask over ``scores`` (``True`` = remove). The
number ``value`` is a trial's ``amount``; its meaning is the rule's:

* ``fraction``: remove ``round(value * n)`` lowest-scoring units (a percentile cut, rounded
  like ``torch.nn.utils.prune``); ``value`` in ``[0, 1)``.
* ``absolute``: remove every unit whose score is strictly below ``value``.
* ``mean_std``: remove every unit strictly below ``mean - value * std`` (population std).
* ``sensitivity``: normalise the scores to sum to one and remove the lowest-scoring units
  while their cumulative normalised mass stays ``<= value``; ``value`` in ``[0, 1)``.
* ``flops_cut``, ``params_cut`` (*cost* rules): remove as few units as it takes for FLOPs
  (sparsity-aware FLOPs for unstructured pruning) or nonzero parameters to fall by the
  factor ``value`` > 1 (``pruners.targets``): the cut a user asks for, whatever the number
  of channels it takes.

Ties are broken by position (a stable sort), so the same scores always give the same mask,
which keeps every DDP rank identical. Rules never see the structure of a model: ``prune``
applies them to the scores of one scope (all layers, or one layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pruners.registry import Registry

Rule = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class ThresholdRule:
    """A registered rule: the mask function and the valid range of its value.

    ``kind`` is ``score`` (a mask over one scope's scores) or ``cost`` (a target on the
    whole model's cost, which ``pruners.prune`` meets by bisection: no mask function).
    """

    name: str
    fn: Rule | None
    check: Callable[[float], str | None]
    kind: str = "score"

    def validate(self, value: float) -> float:
        """Return ``value`` as a float, or raise ``ValueError`` saying what is allowed."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"threshold {self.name!r} needs a number, got {value!r}") from None
        problem = self.check(v)
        if problem is not None:
            raise ValueError(f"threshold {self.name!r} value {value!r} is invalid: {problem}")
        return v

    def __call__(self, scores: torch.Tensor, value: float) -> torch.Tensor:
        if self.fn is None:
            raise ValueError(f"threshold {self.name!r} targets the model's cost; pruners.prune applies it")
        v = self.validate(value)
        s = _as_scores(scores)
        return self.fn(s, v)


THRESHOLD_RULES: Registry[ThresholdRule] = Registry("threshold rule")


def _register(name: str, check: Callable[[float], str | None]) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        THRESHOLD_RULES.register(name)(ThresholdRule(name, fn, check))
        return fn

    return deco


def _as_scores(scores: torch.Tensor) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1:
        raise ValueError("threshold rules need a 1-D tensor of scores")
    s = scores.detach().cpu()
    if not s.is_floating_point():
        s = s.to(torch.float64)
    if s.numel() and not bool(torch.isfinite(s).all()):
        raise ValueError("scores contain NaN or infinite values; the criterion is broken")
    return s


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` lowest scores, ties broken by position (deterministic)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, stable=True).indices
        mask[order[:k]] = True
    return mask


def _finite(v: float) -> str | None:
    return None if math.isfinite(v) else "must be a finite number"


def _unit_interval(v: float) -> str | None:
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


def fraction_count(n: int, value: float) -> int:
    """Units ``fraction`` removes out of ``n`` (round half to even, like torch's prune)."""
    return int(round(value * n))


@_register("fraction", _unit_interval)
def fraction(scores: torch.Tensor, value: float) -> torch.Tensor:
    """Remove the ``round(value * n)`` lowest-scoring units."""
    return lowest(scores, fraction_count(scores.numel(), value))


@_register("absolute", _finite)
def absolute(scores: torch.Tensor, value: float) -> torch.Tensor:
    """Remove units scoring strictly below ``value``."""
    return scores < value


@_register("mean_std", _finite)
def mean_std(scores: torch.Tensor, value: float) -> torch.Tensor:
    """Remove units strictly below ``mean - value * std`` (population standard deviation)."""
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    scores = scores.to(torch.float64)
    mean = scores.mean()
    std = scores.std(unbiased=False)
    return scores < mean - value * std


@_register("sensitivity", _unit_interval)
def sensitivity(scores: torch.Tensor, value: float) -> torch.Tensor:
    """Remove the lowest units while their cumulative normalised score mass is ``<= value``.

    Scores are normalised by their sum (``S_i = s_i / sum_j s_j``); negative scores are an
    error because a mass must be non-negative.
    """
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    scores = scores.to(torch.float64)
    if bool((scores < 0).any()):
        raise ValueError("threshold 'sensitivity' needs non-negative scores")
    total = scores.sum()
    if total <= 0:
        # Every unit carries zero mass: removing all of them removes no mass, but keeping the
        # model alive matters more; remove nothing rather than everything.
        return torch.zeros(scores.numel(), dtype=torch.bool)
    order = torch.sort(scores, stable=True).indices
    cum = torch.cumsum(scores[order] / total, dim=0)
    # Tolerance so that a mass that is exactly `value` up to rounding counts as <= value.
    k = int((cum <= value + 1e-9).sum())
    return lowest(scores, k)


def _factor(v: float) -> str | None:
    return None if math.isfinite(v) and v > 1 else "must be a reduction factor > 1 (e.g. 4 for 4x fewer)"


for _cost_rule in ("flops_cut", "params_cut"):
    THRESHOLD_RULES.register(_cost_rule)(ThresholdRule(_cost_rule, None, _factor, kind="cost"))


def schedule_target(rule: str, amount: float) -> float:
    """The sparsity a schedule ramps to for ``rule`` at ``amount``: the fraction itself, the
    share of the cost a cost rule removes (``1 - 1/factor``), or 0 for the other rules
    (they apply ``amount`` at every update; the schedule only times the updates)."""
    r = get_threshold_rule(rule)
    if r.kind == "cost":
        return 1.0 - 1.0 / float(amount)
    return float(amount) if rule == "fraction" else 0.0


def list_threshold_rules() -> list[str]:
    """Names of the registered threshold rules."""
    return THRESHOLD_RULES.names()


def get_threshold_rule(name: str) -> ThresholdRule:
    """The rule registered under ``name`` (``ValueError`` listing the choices otherwise)."""
    return THRESHOLD_RULES.get(name)


def select(scores: torch.Tensor, rule: str, value: float) -> torch.Tensor:
    """Boolean mask (``True`` = remove) of ``scores`` under threshold ``rule`` at ``value``."""
    return get_threshold_rule(rule)(scores, value)
