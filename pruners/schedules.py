"""Pruning schedules: when to prune and to what cumulative sparsity.

A schedule is a frozen dataclass with two pure functions of the optimizer step, mirroring
``torch.optim.lr_scheduler``: ``sparsity_at(step)`` (the cumulative target in force after
``step``) and ``is_update_step(step)`` (prune, or for ``dynamic`` re-derive masks, at this
step). ``pruners.finetune`` drives them; they never touch a model.

* ``one_shot(target)``: everything at step 0.
* ``iterative(target, rounds, interval)``: round ``r`` at step ``r * interval`` to
  ``target * (r + 1) / rounds``.
* ``gradual(target, start_step, end_step, interval, initial=0.0)``: Zhu & Gupta, "To prune,
  or not to prune" (2017), ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3`` evaluated at
  the last update step ``t0 + k dt <= t``, with ``n dt = end_step - start_step``.
* ``dynamic(target, interval, regrow_fraction, end_step)``: prune to ``target`` at step 0,
  then every ``interval`` steps until ``end_step`` re-derive the mask from the dense weights'
  scores, regrowing up to ``regrow_fraction`` of the pruned weights (unstructured only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from pruners.registry import Registry

SCHEDULES: Registry[type["Schedule"]] = Registry("schedule")


def _check_target(name: str, target: float) -> None:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 <= target < 1.0:
        raise ValueError(f"schedule {name!r}: target must be in [0, 1), got {target!r}")


def _check_int(name: str, field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"schedule {name!r}: {field} must be an integer >= {minimum}, got {value!r}")


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step!r}")


@dataclass(frozen=True)
class Schedule:
    """Base of every schedule (subclasses are frozen dataclasses)."""

    name: ClassVar[str] = ""
    granularities: ClassVar[tuple[str, ...]] = ("unstructured", "structured")

    target: float

    def sparsity_at(self, step: int) -> float:
        """Cumulative target sparsity in force after optimizer step ``step`` (0-based)."""
        raise NotImplementedError

    def is_update_step(self, step: int) -> bool:
        """Whether to prune (or re-derive masks) at ``step``."""
        raise NotImplementedError

    def update_steps(self) -> list[int]:
        """Every update step, in order (finite for every schedule here)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Flat parameters (``schedule.<param>`` keys in result rows)."""
        return dataclasses.asdict(self)


def _register(cls: type[Schedule]) -> type[Schedule]:
    SCHEDULES.register(cls.name)(cls)
    return cls


@_register
@dataclass(frozen=True)
class OneShot(Schedule):
    """Prune once, at step 0, to ``target``."""

    name: ClassVar[str] = "one_shot"

    def __post_init__(self) -> None:
        _check_target(self.name, self.target)

    def sparsity_at(self, step: int) -> float:
        _check_step(step)
        return self.target

    def is_update_step(self, step: int) -> bool:
        _check_step(step)
        return step == 0

    def update_steps(self) -> list[int]:
        return [0]


@_register
@dataclass(frozen=True)
class Iterative(Schedule):
    """``rounds`` equal steps to ``target``, one every ``interval`` optimizer steps."""

    name: ClassVar[str] = "iterative"

    rounds: int = 3
    interval: int = 100

    def __post_init__(self) -> None:
        _check_target(self.name, self.target)
        _check_int(self.name, "rounds", self.rounds, 1)
        _check_int(self.name, "interval", self.interval, 1)

    def sparsity_at(self, step: int) -> float:
        _check_step(step)
        done = min(step // self.interval + 1, self.rounds)
        # done / rounds first: the last round is then exactly `target` (target * 3 / 3 is not
        # always target in floating point, and a fraction rule rounds target * n).
        return self.target * (done / self.rounds)

    def is_update_step(self, step: int) -> bool:
        _check_step(step)
        return step % self.interval == 0 and step // self.interval < self.rounds

    def update_steps(self) -> list[int]:
        return [r * self.interval for r in range(self.rounds)]


@_register
@dataclass(frozen=True)
class Gradual(Schedule):
    """Zhu & Gupta (2017) cubic ramp from ``initial`` at ``start_step`` to ``target`` at ``end_step``.

    Before ``start_step`` the sparsity is 0 (dense training); updates happen at
    ``start_step + k * interval`` up to ``end_step`` (``end_step`` itself is always an update
    so the ramp ends exactly on ``target``).
    """

    name: ClassVar[str] = "gradual"

    start_step: int = 0
    end_step: int = 1000
    interval: int = 100
    initial: float = 0.0

    def __post_init__(self) -> None:
        _check_target(self.name, self.target)
        _check_int(self.name, "start_step", self.start_step, 0)
        _check_int(self.name, "interval", self.interval, 1)
        _check_int(self.name, "end_step", self.end_step, self.start_step + 1)
        if not isinstance(self.initial, (int, float)) or not 0.0 <= self.initial <= self.target:
            raise ValueError(
                f"schedule 'gradual': initial must be in [0, target={self.target}], got {self.initial!r}"
            )

    def _ramp(self, t: int) -> float:
        frac = (t - self.start_step) / (self.end_step - self.start_step)
        return self.target + (self.initial - self.target) * (1.0 - frac) ** 3

    def sparsity_at(self, step: int) -> float:
        _check_step(step)
        if step < self.start_step:
            return 0.0
        if step >= self.end_step:
            return self.target
        # The value of the last update step at or before `step` stays in force until the next.
        last = self.start_step + (step - self.start_step) // self.interval * self.interval
        return self._ramp(last)

    def is_update_step(self, step: int) -> bool:
        _check_step(step)
        if step < self.start_step or step > self.end_step:
            return False
        return step == self.end_step or (step - self.start_step) % self.interval == 0

    def update_steps(self) -> list[int]:
        steps = list(range(self.start_step, self.end_step, self.interval))
        return steps + [self.end_step]


@_register
@dataclass(frozen=True)
class Dynamic(Schedule):
    """Prune to ``target`` at step 0, then re-derive masks every ``interval`` steps.

    Up to ``regrow_fraction`` of the pruned weights may come back at each update (those the
    dense scores now rank above the weakest survivors); the sparsity stays ``target``.
    Unstructured only: a removed channel has no dense weights left to score.
    """

    name: ClassVar[str] = "dynamic"
    granularities: ClassVar[tuple[str, ...]] = ("unstructured",)

    interval: int = 100
    regrow_fraction: float = 0.1
    end_step: int = 1000

    def __post_init__(self) -> None:
        _check_target(self.name, self.target)
        _check_int(self.name, "interval", self.interval, 1)
        _check_int(self.name, "end_step", self.end_step, 0)
        if not isinstance(self.regrow_fraction, (int, float)) or not 0.0 <= self.regrow_fraction <= 1.0:
            raise ValueError(
                f"schedule 'dynamic': regrow_fraction must be in [0, 1], got {self.regrow_fraction!r}"
            )

    def sparsity_at(self, step: int) -> float:
        _check_step(step)
        return self.target

    def is_update_step(self, step: int) -> bool:
        _check_step(step)
        return step <= self.end_step and step % self.interval == 0

    def update_steps(self) -> list[int]:
        return list(range(0, self.end_step + 1, self.interval))


def list_schedules() -> list[str]:
    """Names of the registered schedules."""
    return SCHEDULES.names()


def make_schedule(name: str, **params: Any) -> Schedule:
    """Build schedule ``name``; unknown keywords raise ``ValueError`` listing the allowed ones."""
    cls = SCHEDULES.get(name)
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"schedule {name!r} got unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    if "target" not in params:
        raise ValueError(f"schedule {name!r} needs target (the final sparsity in [0, 1))")
    return cls(**params)
