"""Schedules in epochs: the config's checks, built from each schedule's registry entry.

A search config states schedule timing in *epochs* of fine-tuning (steps per epoch depend on
the dataset, batch size and number of DDP workers); ``pruners.schedules`` declares, with each
schedule, its epoch parameters (``epoch_params``), their conversion to optimizer steps
(``from_epochs``) and when the schedule reaches its target (``target_epoch``). This module
applies those declarations to a config: parameter checks, the rule that a schedule must reach
its target before fine-tuning ends, and the rule that no scheduler rung judges a model before
its schedule did. Nothing here is written per schedule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.errors import ConfigError, fmt
from orchestrator.params import Fixed, Param, parse_param, values_of

__all__ = [
    "build_schedule",
    "check_rungs_after_targets",
    "rung_epochs",
    "rung_milestones",
    "check_schedules_fit",
    "complete_schedule_params",
    "schedule_params_schema",
    "target_epoch",
]

KEY = "search.schedule_params"


def _registry() -> Any:
    from pruners.schedules import SCHEDULES

    return SCHEDULES


def complete_schedule_params(table: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Param]]:
    """Check every schedule's parameters against its declaration; fill in the defaults.

    Raises:
        ConfigError: an unknown schedule or parameter, a value its kind does not allow, or
            parameters that contradict each other (e.g. a ramp that ends before it starts).
    """
    registry = _registry()
    names = registry.names()
    out: dict[str, dict[str, Param]] = {}
    for sched, params in table.items():
        if sched not in names:
            raise ConfigError(f"{KEY}: unknown value {fmt(sched)}; valid choices: {', '.join(names)}")
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"{KEY}.{sched}: expected a mapping of parameter -> value")
        declared = registry.get(sched).epoch_params
        for name, value in params.items():
            if name not in declared:
                raise ConfigError(f"{KEY}.{sched}.{name}: unknown parameter; allowed: {', '.join(declared) or 'none'}")
            if value is None and declared[name].default is None:
                continue
            try:
                param = parse_param(value)
            except ValueError as e:
                raise ConfigError(f"{KEY}.{sched}.{name}: {e}") from None
            for v in values_of(param):
                problem = declared[name].problem(v)
                if problem is not None:
                    raise ConfigError(f"{KEY}.{sched}.{name}: {problem}")
    for sched in names:
        declared = registry.get(sched).epoch_params
        given = dict(table.get(sched) or {})
        params = {}
        for name, decl in declared.items():
            params[name] = Fixed(decl.default) if given.get(name) is None else parse_param(given[name])
        fixed = {n: p.value for n, p in params.items() if isinstance(p, Fixed)}
        problem = registry.get(sched).check_epochs(fixed)
        if problem is not None:
            raise ConfigError(f"{KEY}.{sched}: {problem}")
        out[sched] = params
    return out


def target_epoch(sched: str, params: Mapping[str, Param]) -> tuple[float, str]:
    """The latest fine-tune epoch at which ``sched`` reaches its target over every value its
    parameters can take (each at its largest), and how that comes about."""
    worst = {n: (max(v for v in values_of(p) if v is not None) if any(v is not None for v in values_of(p)) else None)
             for n, p in params.items()}
    return _registry().get(sched).target_epoch(worst)


def check_schedules_fit(params: Mapping[str, Mapping[str, Param]], schedules: Iterable[str], min_epochs: int) -> None:
    """Refuse a schedule that reaches its target only when (or after) fine-tuning ends.

    ``pruners.Pruner`` refuses such a schedule inside the trial, after Ray has started; here
    the same rule is applied in epoch units against the shortest fine-tuning a trial may draw
    (``from_epochs`` rounds epochs down to steps, so a schedule that fits here fits in steps
    too, barring a criterion's warm-up steps, which only the trial knows).
    """
    for sched in schedules:
        at, how = target_epoch(sched, params.get(sched, {}))
        if at < min_epochs:
            continue
        raise ConfigError(
            f"{KEY}.{sched}: {how}, not before fine-tuning ends (search.epochs {min_epochs}); the target "
            "must be reached before the last epoch ends, so shorten the schedule or raise search.epochs"
        )


def check_qat_fits(search: Any, schedules: list[str]) -> None:
    """An int8_qat trial prunes and fine-tunes first, then trains ``search.qat_epochs``
    through fake quantization: its shortest trial must hold both, and every schedule it may
    draw must finish pruning before QAT starts (``pruners.train_epochs(qat=...)``)."""
    if "int8_qat" not in values_of(search.space.quantize):
        return
    if search.min_epochs <= search.qat_epochs:
        raise ConfigError(
            f"search.space.quantize: int8_qat needs trials longer than search.qat_epochs ({search.qat_epochs}), "
            f"but the shortest has search.epochs {search.min_epochs}; raise search.epochs above "
            f"{search.qat_epochs}, lower search.qat_epochs, or drop int8_qat")
    try:
        check_schedules_fit(search.schedule_params, schedules, search.min_epochs - search.qat_epochs)
    except ConfigError as e:
        raise ConfigError(f"{e} (with int8_qat, pruning must end before the last search.qat_epochs "
                          f"= {search.qat_epochs} epoch(s) of quantization-aware training)") from None


def rung_milestones(grace_period: float, reduction_factor: float, max_t: float) -> tuple[float, ...]:
    """Where asynchronous successive halving judges trials: ``grace_period * eta**k`` below
    ``max_t`` (the rungs of ``MultiObjectiveASHA`` and of Ray's ``AsyncHyperBandScheduler``)."""
    rungs: list[float] = []
    while grace_period * reduction_factor ** len(rungs) < max_t:
        rungs.append(grace_period * reduction_factor ** len(rungs))
    return tuple(rungs)


def rung_epochs(grace_period: float, reduction_factor: float, max_t: float) -> list[int]:
    """The epochs whose results the rungs judge: a rung at ``r`` judges the first epoch >= ``r``."""
    return sorted({math.ceil(r) for r in rung_milestones(grace_period, reduction_factor, max_t)})


def check_rungs_after_targets(cfg: Any) -> None:
    """Refuse a scheduler whose first rung comes before a schedule reaches its target.

    A rung compares the results trials report at one epoch; a gradual or iterative trial
    still on its way to its target would be judged, half pruned, against one-shot trials that
    are done. So every schedule the space samples must reach its target before the first rung
    (``scheduler.grace_period``): it is refused with the epoch that would work.
    """
    from orchestrator.space import valid_methods

    grace = cfg.scheduler.grace_period
    for sched in sorted({m[2] for m in valid_methods(cfg.search)}):
        at, how = target_epoch(sched, cfg.search.schedule_params.get(sched, {}))
        if at >= grace:
            raise ConfigError(
                f"scheduler.grace_period: the first rung judges trials after epoch {grace}, but schedule {sched} "
                f"reaches its target only then or later ({how}); a rung must not compare a half-pruned model with "
                f"finished ones, so raise grace_period above {at:g} or end the schedule earlier"
            )


def build_schedule(sched: str, params: Mapping[str, Any], *, target: float, steps_per_epoch: int, epochs: int) -> Any:
    """The ``pruners`` schedule of one trial (its sampled epoch parameters, in steps)."""
    from pruners.schedules import schedule_from_epochs

    return schedule_from_epochs(sched, params, target=target, steps_per_epoch=steps_per_epoch, epochs=epochs)


def schedule_params_schema() -> dict[str, Any]:
    """JSON schema of ``search.schedule_params``, one object per registered schedule."""
    props = {}
    for name in _registry().names():
        cls = _registry().get(name)
        props[name] = {
            "type": "object",
            "additionalProperties": False,
            "description": (cls.__doc__ or name).strip().splitlines()[0],
            "properties": {
                p: {"description": f"{d.doc} ({d.kind}; default {d.default!r}; a value, a list or a range)"}
                for p, d in cls.epoch_params.items()
            },
        }
    return {"type": "object", "additionalProperties": False, "properties": props,
            "description": "per schedule, its parameters in epochs of fine-tuning (fixed or searched)"}
