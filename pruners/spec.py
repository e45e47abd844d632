"""What to prune and how to fine-tune: :class:`PruneSpec` and :class:`OptimizerConfig`.

Frozen dataclasses checked on construction (an unknown name or a bad value raises at once
with the valid choices), shared by :class:`pruners.Pruner` and :func:`pruners.finetune`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pruners.criteria import Criterion, list_criteria, make_criterion
from pruners.prune import GRANULARITIES, SCOPES
from pruners.registry import check_choice
from pruners.selection import min_keep_problem
from pruners.thresholds import get_threshold_rule, list_threshold_rules

__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "OptimizerConfig", "PruneSpec", "check_nesterov"]

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine", "cosine_restarts")


@dataclass(frozen=True)
class PruneSpec:
    """What to prune: criterion, granularity, threshold rule and value, scope.

    Attributes:
        criterion: Registered criterion name (``pruners.list_criteria()``).
        granularity: ``unstructured`` or ``structured``; the criterion must support it.
        amount: The threshold value in the rule's units. For ``fraction`` it is the final
            fraction of units removed and must equal the schedule's ``target`` (the schedule
            ramps towards it); for the other rules it is applied at every update step.
        threshold_rule: ``fraction``, ``absolute``, ``mean_std`` or ``sensitivity``.
        scope: ``global`` or ``layerwise``.
        ignore: Dotted module names never pruned.
        params: Keyword parameters of the criterion (e.g. ``{"penalty": 1e-4}``).
        min_keep: Fraction of its units every layer keeps, whatever the scope (0: one
            unit): a global ranking cannot empty a layer.
    """

    criterion: str
    granularity: str = "unstructured"
    amount: float = 0.5
    threshold_rule: str = "fraction"
    scope: str = "global"
    ignore: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    min_keep: float = 0.0

    def __post_init__(self) -> None:
        if (problem := min_keep_problem(self.min_keep)) is not None:
            raise ValueError(f"min_keep {problem}, got {self.min_keep!r}")
        check_choice("criterion", self.criterion, list_criteria())
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("threshold rule", self.threshold_rule, list_threshold_rules())
        check_choice("scope", self.scope, SCOPES)
        if isinstance(self.ignore, str) or not all(isinstance(n, str) for n in self.ignore):
            raise ValueError(f"ignore must be a sequence of module names, got {self.ignore!r}")
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if not isinstance(self.params, Mapping):
            raise ValueError(f"params must be a mapping of criterion parameters, got {self.params!r}")
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(
            self, "amount", get_threshold_rule(self.threshold_rule).validate(self.amount)
        )
        crit = self.make_criterion()  # unknown criterion parameters raise here, at once
        if self.granularity not in crit.granularities:
            raise ValueError(
                f"criterion {self.criterion!r} does not support {self.granularity} pruning; "
                f"it supports: {', '.join(crit.granularities)}"
            )

    def make_criterion(self) -> Criterion:
        """A fresh criterion instance with ``params``."""
        return make_criterion(self.criterion, **self.params)


@dataclass(frozen=True)
class OptimizerConfig:
    """The fine-tuning optimizer and its learning-rate schedule.

    Attributes:
        name: ``sgd``, ``adam`` or ``adamw``.
        lr: Peak learning rate (>= 0). 0 prunes without fine-tuning: no weight moves (not
            even by weight decay), though BatchNorm statistics still follow the training
            batches; the baseline a search compares real fine-tuning against.
        momentum: SGD momentum in [0, 1) (ignored by Adam).
        weight_decay: L2 / decoupled weight decay (>= 0).
        nesterov: SGD Nesterov momentum (needs momentum > 0).
        lr_schedule: ``constant``, ``cosine`` (cosine decay to 0 over all optimizer steps) or
            ``cosine_restarts``: cosine decay to 0 in cycles that end at ``cycle_ends``, the
            learning rate back at ``lr`` at the start of each (SGDR, Loshchilov & Hutter,
            ICLR 2017). With a cycle ending at each epoch a successive-halving rung judges
            the trial, every judged model is an annealed one, not an iterate taken mid-way
            at a high learning rate (which ranks trials of different learning rates
            wrongly: docs/benchmarks.md).
        warmup: Fraction of the optimizer steps over which the learning rate ramps linearly
            from 0 to ``lr`` before the schedule (0: none). Warm-up then cosine annealing is
            the one-cycle recipe short fine-tuning runs use.
        cycle_ends: ``cosine_restarts`` only: where each cycle but the last ends, as
            fractions in (0, 1) of the steps after warm-up, increasing (the last cycle ends
            with the run; none: plain ``cosine``).
    """

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    lr_schedule: str = "constant"
    warmup: float = 0.0
    cycle_ends: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_choice("optimizer", self.name, OPTIMIZERS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for key, ok, allowed in (
            ("lr", _is_number(self.lr) and self.lr >= 0, "a number >= 0 (0 = prune without fine-tuning)"),
            ("momentum", _is_number(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", _is_number(self.weight_decay) and self.weight_decay >= 0, ">= 0"),
            ("warmup", _is_number(self.warmup) and 0 <= self.warmup < 1, "a fraction of the steps in [0, 1)"),
        ):
            if not ok:
                raise ValueError(f"optimizer {key} must be {allowed}, got {getattr(self, key)!r}")
        check_nesterov(self.name, self.momentum, self.nesterov)
        ends = tuple(self.cycle_ends)
        if ends and self.lr_schedule != "cosine_restarts":
            raise ValueError(f"optimizer cycle_ends is for lr_schedule cosine_restarts, not {self.lr_schedule!r}")
        if not all(_is_number(e) and 0 < e < 1 for e in ends) or any(b <= a for a, b in zip(ends, ends[1:])):
            raise ValueError(f"optimizer cycle_ends must be increasing fractions in (0, 1), got {list(ends)!r}")
        object.__setattr__(self, "cycle_ends", tuple(float(e) for e in ends))

    def build(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """A fresh optimizer over ``params``."""
        params = list(params)
        if self.name == "sgd":
            return torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                nesterov=self.nesterov,
            )
        cls = torch.optim.Adam if self.name == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)

    def lr_at(self, step: int, total_steps: int | None) -> float:
        """Learning rate of optimizer step ``step`` (a pure function, like nanoGPT's)."""
        if not total_steps:
            return self.lr
        warm = int(self.warmup * total_steps)
        if step < warm:
            return self.lr * (step + 1) / warm
        if self.lr_schedule == "constant":
            return self.lr
        t = min(step - warm, total_steps - warm) / max(total_steps - warm, 1)
        start, end = 0.0, 1.0
        for e in self.cycle_ends:  # the cycle t falls in (cosine_restarts)
            if t < e:
                end = e
                break
            start = e
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * (t - start) / (end - start)))


def check_nesterov(name: str, momentum: float, nesterov: bool) -> None:
    """Nesterov momentum is SGD's, and needs momentum (``ValueError`` otherwise); the
    search config's ``optimizer`` sections apply this same rule."""
    if nesterov and (name != "sgd" or momentum == 0):
        raise ValueError("nesterov needs the sgd optimizer with momentum > 0")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
