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

Each registry entry also declares its parameters as a search config states them, in
*epochs* of fine-tuning (``epoch_params``: default, kind, meaning), how those become its step
parameters once the steps per epoch are known (``from_epochs``) and when it reaches its
target (``target_epoch``). A new schedule is one class here: the config, its checks, its
JSON schema and the conversion all follow from the declaration.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
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


#: Kinds of epoch-unit parameters: a point in fine-tuning (>= 0 epochs), a period (> 0
#: epochs), a count (integer >= 1), a fraction in [0, 1].
EPOCH_PARAM_KINDS = ("epoch", "interval", "count", "fraction")


@dataclass(frozen=True)
class EpochParam:
    """A schedule parameter as a search config states it.

    Attributes:
        default: Its value when the config leaves it out (None: derived, e.g. "to the end").
        kind: One of :data:`EPOCH_PARAM_KINDS`; fixes the check a config value gets.
        doc: What it means, for the config's JSON schema.
    """

    default: float | int | None
    kind: str
    doc: str

    def problem(self, value: Any) -> str | None:
        """None if ``value`` is valid for this parameter, else ``<what is wrong>; <allowed>``."""
        shown = repr(value)
        if value is None:
            return None if self.default is None else "null is not allowed here; give a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"got {shown}; expected a number"
        if self.kind == "count":
            if not isinstance(value, int):
                return f"got {shown}; expected an integer"
            return None if value >= 1 else f"{shown} is too small; must be an integer >= 1"
        if self.kind == "interval":
            return None if value > 0 else f"{shown} is out of range; must be > 0 (epochs)"
        if self.kind == "fraction":
            return None if 0 <= value <= 1 else f"{shown} is out of range; must be in [0, 1]"
        return None if value >= 0 else f"{shown} is out of range; must be >= 0 (epochs)"


def _epoch_steps(epochs: float, steps_per_epoch: int, total: int) -> int:
    # Rounded down (1e-9 absorbs float error, e.g. 0.29 * 100): a schedule that reaches its
    # target before the last epoch ends (what the config checks) then does so in steps too.
    return min(total, math.floor(float(epochs) * steps_per_epoch + 1e-9))


def _interval_steps(epochs: float, steps_per_epoch: int, total: int) -> int:
    return max(1, _epoch_steps(epochs, steps_per_epoch, total))


@dataclass(frozen=True)
class Schedule:
    """Base of every schedule (subclasses are frozen dataclasses)."""

    name: ClassVar[str] = ""
    granularities: ClassVar[tuple[str, ...]] = ("unstructured", "structured")
    #: Parameters in epochs of fine-tuning, as a search config states them.
    epoch_params: ClassVar[dict[str, EpochParam]] = {}

    target: float

    @classmethod
    def from_epochs(cls, target: float, params: Mapping[str, Any], *, steps_per_epoch: int, epochs: int) -> Schedule:
        """The schedule for ``params`` in epoch units, once steps per epoch are known.

        Epochs are rounded down to optimizer steps; intervals are at least one step.
        """
        raise NotImplementedError

    @classmethod
    def target_epoch(cls, params: Mapping[str, Any]) -> tuple[float, str]:
        """When (in fine-tune epochs) the schedule reaches its target, and why then."""
        return 0.0, "it prunes to the target at the start"

    @classmethod
    def check_epochs(cls, params: Mapping[str, Any]) -> str | None:
        """A problem between parameters (each valid alone), or None."""
        return None

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

    @classmethod
    def from_epochs(cls, target: float, params: Mapping[str, Any], *, steps_per_epoch: int, epochs: int) -> Schedule:
        return cls(target=float(target))

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
    epoch_params: ClassVar[dict[str, EpochParam]] = {
        "rounds": EpochParam(3, "count", "pruning rounds, each to an equal share of the target"),
        "interval_epochs": EpochParam(0.3, "interval", "fine-tune epochs between rounds"),
    }

    rounds: int = 3
    interval: int = 100

    @classmethod
    def from_epochs(cls, target: float, params: Mapping[str, Any], *, steps_per_epoch: int, epochs: int) -> Schedule:
        total = steps_per_epoch * epochs
        return cls(target=float(target), rounds=int(params["rounds"]),
                   interval=_interval_steps(params["interval_epochs"], steps_per_epoch, total))

    @classmethod
    def target_epoch(cls, params: Mapping[str, Any]) -> tuple[float, str]:
        rounds, interval = int(params["rounds"]), float(params["interval_epochs"])
        at = (rounds - 1) * interval
        return at, f"its last round ((rounds {rounds} - 1) x interval_epochs {interval!r}) prunes at epoch {at!r}"

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
    epoch_params: ClassVar[dict[str, EpochParam]] = {
        "start_epoch": EpochParam(0.0, "epoch", "fine-tune epoch the ramp starts at"),
        "end_epoch": EpochParam(0.8, "epoch", "fine-tune epoch the ramp reaches the target at"),
        "interval_epochs": EpochParam(0.2, "interval", "fine-tune epochs between pruning steps"),
        "initial": EpochParam(0.0, "fraction", "sparsity at the start of the ramp"),
    }

    start_step: int = 0
    end_step: int = 1000
    interval: int = 100
    initial: float = 0.0

    @classmethod
    def from_epochs(cls, target: float, params: Mapping[str, Any], *, steps_per_epoch: int, epochs: int) -> Schedule:
        total = steps_per_epoch * epochs
        start = _epoch_steps(params["start_epoch"], steps_per_epoch, total)
        return cls(target=float(target), start_step=start,
                   end_step=max(start + 1, _epoch_steps(params["end_epoch"], steps_per_epoch, total)),
                   interval=_interval_steps(params["interval_epochs"], steps_per_epoch, total),
                   initial=float(params["initial"]))

    @classmethod
    def target_epoch(cls, params: Mapping[str, Any]) -> tuple[float, str]:
        end = float(params["end_epoch"])
        return end, f"its ramp ends at end_epoch {end!r}"

    @classmethod
    def check_epochs(cls, params: Mapping[str, Any]) -> str | None:
        start, end = params.get("start_epoch"), params.get("end_epoch")
        if start is not None and end is not None and not start < end:
            return f"start_epoch {start!r} is not before end_epoch {end!r}; start_epoch must be < end_epoch"
        return None

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
    epoch_params: ClassVar[dict[str, EpochParam]] = {
        "interval_epochs": EpochParam(0.25, "interval", "fine-tune epochs between mask revisions"),
        "regrow_fraction": EpochParam(0.1, "fraction", "share of the pruned weights that may come back per revision"),
        "end_epoch": EpochParam(None, "epoch", "last revision (null: until fine-tuning ends)"),
    }

    interval: int = 100
    regrow_fraction: float = 0.1
    end_step: int = 1000

    @classmethod
    def from_epochs(cls, target: float, params: Mapping[str, Any], *, steps_per_epoch: int, epochs: int) -> Schedule:
        total = steps_per_epoch * epochs
        end = params.get("end_epoch")
        return cls(target=float(target), interval=_interval_steps(params["interval_epochs"], steps_per_epoch, total),
                   regrow_fraction=float(params["regrow_fraction"]),
                   end_step=total if end is None else _epoch_steps(end, steps_per_epoch, total))

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


def schedule_from_epochs(
    name: str, params: Mapping[str, Any], *, target: float, steps_per_epoch: int, epochs: int
) -> Schedule:
    """Schedule ``name`` from its epoch-unit parameters (defaults filled in) in optimizer steps.

    Args:
        name: A registered schedule.
        params: Its ``epoch_params`` (missing ones take their defaults).
        target: Final sparsity.
        steps_per_epoch: Optimizer steps in one epoch on one worker.
        epochs: Fine-tune epochs.
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch}, {epochs}")
    cls = SCHEDULES.get(name)
    unknown = sorted(set(params) - set(cls.epoch_params))
    if unknown:
        raise ValueError(f"schedule {name!r} got unknown parameter(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(cls.epoch_params) or 'none'}")
    full = {k: p.default for k, p in cls.epoch_params.items()} | dict(params)
    return cls.from_epochs(target, full, steps_per_epoch=steps_per_epoch, epochs=epochs)


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
