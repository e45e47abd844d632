"""Typed search configuration: YAML + ``--set`` overrides -> frozen, validated dataclasses.

Everything here is checked before Ray is touched, and nothing here imports Ray (a test
enforces it). The layout of the YAML file is documented key by key in
``configs/default.yaml``; this module is its single source of truth:

* :func:`load_config` reads a YAML file, applies ``--set a.b=value`` overrides and returns a
  :class:`SearchConfig`. Every problem raises :class:`ConfigError`, whose message is one
  line, ``<key>: <what is wrong>; <what is allowed>``.
* Searched values are described by :class:`Choice`, :class:`Range` and :class:`Fixed`; the
  Ray side turns them into ``tune.choice`` / ``tune.uniform`` / ``tune.loguniform`` /
  ``tune.grid_search`` (see :func:`flat_space`), and :func:`decode_trial` turns a sampled flat
  Tune config back into a typed :class:`TrialSettings`.
* ``SearchConfig.to_dict()`` is JSON-safe (it goes into ``experiment.json``) and
  ``SearchConfig.from_dict(cfg.to_dict()) == cfg``.

Names (criteria, granularities, scopes, threshold rules, schedules) are checked against the
``pruners`` registries, so a config can only name what the library implements.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ALGORITHMS",
    "DATASETS",
    "METRIC_KEYS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "SCHEDULE_PARAMS",
    "Choice",
    "ClusterSpec",
    "ConfigError",
    "DataConfig",
    "DenseConfig",
    "Fixed",
    "MetricsConfig",
    "ModelConfig",
    "OptimizerSettings",
    "Param",
    "Range",
    "ResourcesConfig",
    "SchedulerConfig",
    "SearchConfig",
    "SearchSettings",
    "SpaceConfig",
    "TrialSettings",
    "apply_overrides",
    "decode_trial",
    "default_output",
    "flat_space",
    "grid_size",
    "load_config",
    "method_key",
    "parse_method",
    "read_yaml",
    "schedule_kwargs",
    "valid_methods",
]


class ConfigError(ValueError):
    """A configuration problem, described in one line: what is wrong; what is allowed."""


# --------------------------------------------------------------------------------------
# Fixed vocabularies (the ones that are not pruners registries)
# --------------------------------------------------------------------------------------

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder")
ALGORITHMS: tuple[str, ...] = ("random", "grid", "optuna")
SCHEDULERS: tuple[str, ...] = ("asha", "moasha", "fifo")
MODES: tuple[str, ...] = ("max", "min")
# Mirrors of pruners.finetune's choices (a test keeps them equal): checking them here
# keeps the early, cheap validation free of the torch import.
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")

#: Metric keys a trial reports each epoch (design.md section 3); `epoch` is the time axis.
METRIC_KEYS: tuple[str, ...] = (
    "accuracy",
    "loss",
    "train_loss",
    "sparsity",
    "requested_sparsity",
    "flops",
    "flops_sparse",
    "params",
    "params_nonzero",
    "size_bytes",
    "latency_ms",
)

#: Schedule parameters in EPOCH units (converted to optimizer steps by `schedule_kwargs`,
#: because the number of steps per epoch depends on dataset size, batch size and workers).
#: Each maps to (default, validator description, validator). `None` defaults mean "derived".
SCHEDULE_PARAMS: dict[str, dict[str, Any]] = {
    "one_shot": {},
    "iterative": {"rounds": 3, "interval_epochs": 0.5},
    "gradual": {"start_epoch": 0.0, "end_epoch": 0.8, "interval_epochs": 0.2, "initial": 0.0},
    "dynamic": {"interval_epochs": 0.25, "regrow_fraction": 0.1, "end_epoch": None},
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# --------------------------------------------------------------------------------------
# The pruners registries (imported lazily: `pruners` imports torch, which takes seconds,
# and most malformed configs are caught before any name needs checking)
# --------------------------------------------------------------------------------------


def _pruners() -> Any:
    import pruners

    return pruners


def _criteria() -> list[str]:
    return list(_pruners().list_criteria())


def _criterion_granularities(name: str) -> tuple[str, ...]:
    return tuple(_pruners().criterion_granularities(name))


def _granularities() -> tuple[str, ...]:
    return tuple(_pruners().GRANULARITIES)


def _scopes() -> tuple[str, ...]:
    return tuple(_pruners().SCOPES)


def _threshold_rules() -> list[str]:
    return list(_pruners().list_threshold_rules())


def _schedules() -> list[str]:
    return list(_pruners().list_schedules())


def _schedule_granularities(name: str) -> tuple[str, ...]:
    from pruners.schedules import SCHEDULES

    # e.g. dynamic is unstructured-only: it regrows single weights.
    return tuple(SCHEDULES.get(name).granularities)


def _check_threshold_value(rule: str, value: float) -> str | None:
    """None if ``value`` is valid for threshold ``rule``, else what is allowed."""
    from pruners.thresholds import get_threshold_rule

    return get_threshold_rule(rule).check(float(value))


def _criterion_param_names(name: str) -> list[str] | None:
    """Keyword parameters criterion ``name`` accepts, or None if pruners does not say."""
    try:
        from pruners.criteria import CRITERIA
    except ImportError:  # pragma: no cover
        return None
    return sorted(CRITERIA.get(name).param_defaults)


# --------------------------------------------------------------------------------------
# Small typed-value helpers (every error names the dotted key)
# --------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    """A value as the user wrote it (YAML-ish), for messages."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _typename(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _need_int(key: str, v: Any, *, minimum: int | None = None, optional: bool = False) -> None:
    if v is None and optional:
        return
    if not _is_int(v):
        raise ConfigError(f"{key}: got {_typename(v)} {_fmt(v)}; expected an integer")
    if minimum is not None and v < minimum:
        raise ConfigError(f"{key}: {v} is too small; must be an integer >= {minimum}")


def _need_number(
    key: str,
    v: Any,
    *,
    minimum: float | None = None,
    exclusive_min: bool = False,
    maximum: float | None = None,
    exclusive_max: bool = False,
    optional: bool = False,
) -> None:
    if v is None and optional:
        return
    if not _is_number(v):
        raise ConfigError(f"{key}: got {_typename(v)} {_fmt(v)}; expected a number")
    lo_bad = minimum is not None and (v <= minimum if exclusive_min else v < minimum)
    hi_bad = maximum is not None and (v >= maximum if exclusive_max else v > maximum)
    if lo_bad or hi_bad:
        lo = "" if minimum is None else ("(" if exclusive_min else "[") + _fmt(minimum)
        hi = "" if maximum is None else _fmt(maximum) + (")" if exclusive_max else "]")
        if minimum is not None and maximum is not None:
            allowed = f"in {lo}, {hi}"
        elif minimum is not None:
            allowed = f"{'>' if exclusive_min else '>='} {_fmt(minimum)}"
        else:
            allowed = f"{'<' if exclusive_max else '<='} {_fmt(maximum)}"
        raise ConfigError(f"{key}: {_fmt(v)} is out of range; must be {allowed}")


def _need_bool(key: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: got {_typename(v)} {_fmt(v)}; expected true or false")


def _need_str(key: str, v: Any, *, optional: bool = False) -> None:
    if v is None and optional:
        return
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{key}: got {_typename(v)} {_fmt(v)}; expected a non-empty string")


def _need_choice(key: str, v: Any, choices: Iterable[str]) -> None:
    choices = list(choices)
    if not isinstance(v, str) or v not in choices:
        raise ConfigError(f"{key}: unknown value {_fmt(v)}; valid choices: {', '.join(choices)}")


def _is_json_safe(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, (list, tuple)):
        return all(_is_json_safe(x) for x in v)
    if isinstance(v, Mapping):
        return all(isinstance(k, str) and _is_json_safe(x) for k, x in v.items())
    return False


def _to_json(v: Any) -> Any:
    """Tuples -> lists, mappings -> plain dicts (recursively)."""
    if isinstance(v, (list, tuple)):
        return [_to_json(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _to_json(x) for k, x in v.items()}
    return v


def _section(key: str, raw: Any, cls: type) -> dict[str, Any]:
    """Check that ``raw`` is a mapping whose keys are fields of ``cls``."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: got {_typename(raw)} {_fmt(raw)}; expected a mapping of keys")
    allowed = [f.name for f in fields(cls)]
    for k in raw:
        if k not in allowed:
            where = f"{key}.{k}" if key else str(k)
            raise ConfigError(f"{where}: unknown key; allowed keys: {', '.join(allowed)}")
    return dict(raw)


def _absolute(path: str | None) -> str | None:
    """Resolve a local path against the current directory (Ray workers run elsewhere)."""
    if path is None:
        return None
    return str(Path(path).expanduser().absolute())


# --------------------------------------------------------------------------------------
# Searched values
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """Pick one of ``values`` (``tune.choice``; ``tune.grid_search`` under grid search)."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise ConfigError("choice: the list is empty; give at least one value")

    def to_raw(self) -> list[Any]:
        return _to_json(list(self.values))


@dataclass(frozen=True)
class Range:
    """A number drawn from ``[low, high]``.

    ``log`` draws log-uniformly (``tune.loguniform``); ``integer`` draws integers with both
    ends included (``tune.randint(low, high + 1)`` / ``tune.lograndint(low, high + 1)``).
    """

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def to_raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            raw["log"] = True
        if self.integer:
            raw["int"] = True
        return raw


@dataclass(frozen=True)
class Fixed:
    """A value that is not searched."""

    value: Any

    def to_raw(self) -> Any:
        return _to_json(self.value)


Param = Choice | Range | Fixed

_RANGE_KEYS = ("low", "high", "log", "int")


def parse_param(key: str, raw: Any) -> Param:
    """Parse one searched entry: a list (choice), ``{low, high, log?, int?}`` (range) or a scalar.

    Raises:
        ConfigError: naming ``key`` when the entry is malformed.
    """
    if isinstance(raw, (Choice, Range, Fixed)):
        return raw
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise ConfigError(f"{key}: the choice list is empty; give at least one value")
        for v in raw:
            if isinstance(v, (list, tuple, Mapping)) or v is None:
                raise ConfigError(
                    f"{key}: choice value {_fmt(v)} is not a plain value; list numbers, strings or booleans"
                )
        if len(set(map(repr, raw))) != len(raw):
            raise ConfigError(f"{key}: the choice list {_fmt(list(raw))} repeats a value; list each once")
        return Choice(tuple(raw))
    if isinstance(raw, Mapping):
        unknown = [k for k in raw if k not in _RANGE_KEYS]
        if unknown or "low" not in raw or "high" not in raw:
            raise ConfigError(
                f"{key}: a range is {{low, high, log?, int?}}, got keys {', '.join(map(str, raw))}; "
                "use a list for a choice or a scalar for a fixed value"
            )
        low, high = raw["low"], raw["high"]
        log, integer = raw.get("log", False), raw.get("int", False)
        _need_number(f"{key}.low", low)
        _need_number(f"{key}.high", high)
        _need_bool(f"{key}.log", log)
        _need_bool(f"{key}.int", integer)
        if not low < high:
            raise ConfigError(
                f"{key}: low {_fmt(low)} must be < high {_fmt(high)}; use a scalar for a fixed value"
            )
        if log and low <= 0:
            raise ConfigError(f"{key}: a log range starts at {_fmt(low)}; it needs low > 0")
        if integer and not (_is_int(low) and _is_int(high)):
            raise ConfigError(f"{key}: int: true with non-integer bounds; give integer low and high")
        if not integer:
            low, high = float(low), float(high)
        return Range(low, high, log, integer)
    if raw is None:
        raise ConfigError(f"{key}: missing value; give a list, a {{low, high}} range or a scalar")
    return Fixed(raw)


def _values_of(p: Param) -> list[Any]:
    """The concrete values a param can take (a Range contributes its two ends)."""
    if isinstance(p, Choice):
        return list(p.values)
    if isinstance(p, Range):
        return [p.low, p.high]
    return [p.value]


def _check_names(key: str, p: Param, valid: Iterable[str]) -> None:
    valid = list(valid)
    if isinstance(p, Range):
        raise ConfigError(f"{key}: a range needs numbers; give a list of names from: {', '.join(valid)}")
    for v in _values_of(p):
        _need_choice(key, v, valid)


def _check_numbers(key: str, p: Param, check: Callable[[str, Any], None]) -> None:
    for v in _values_of(p):
        check(key, v)


def _names_in(p: Param) -> list[Any]:
    return _values_of(p) if not isinstance(p, Range) else []


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives and how it is batched (``data:`` section)."""

    dataset: str = "digits"
    root: str | None = None
    download: bool = False
    batch_size: int = 64
    eval_batch_size: int = 256
    train_subset: int | None = None
    eval_subset: int | None = None
    calibration_batches: int = 4
    num_workers: int = 0
    image_size: int | None = None
    augment: bool = True

    def __post_init__(self) -> None:
        _need_choice("data.dataset", self.dataset, DATASETS)
        _need_str("data.root", self.root, optional=True)
        _need_bool("data.download", self.download)
        _need_int("data.batch_size", self.batch_size, minimum=1)
        _need_int("data.eval_batch_size", self.eval_batch_size, minimum=1)
        _need_int("data.train_subset", self.train_subset, minimum=1, optional=True)
        _need_int("data.eval_subset", self.eval_subset, minimum=1, optional=True)
        _need_int("data.calibration_batches", self.calibration_batches, minimum=1)
        _need_int("data.num_workers", self.num_workers, minimum=0)
        _need_int("data.image_size", self.image_size, minimum=8, optional=True)
        _need_bool("data.augment", self.augment)
        if self.dataset == "imagefolder" and self.root is None:
            raise ConfigError(
                "data.root: imagefolder needs a root directory; it must hold train/ and val/ "
                "with one sub-directory per class"
            )
        object.__setattr__(self, "root", _absolute(self.root))


@dataclass(frozen=True)
class ModelConfig:
    """The model to prune (``model:`` section).

    ``name`` is a name of ``orchestrator.models.list_models()``, any torchvision classifier
    name, or ``package.module:factory`` (called as ``factory(num_classes=, in_channels=,
    **kwargs)``, dropping the two arguments it does not accept).
    """

    name: str = "small_cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _need_str("model.name", self.name)
        if not isinstance(self.kwargs, Mapping):
            raise ConfigError(f"model.kwargs: got {_typename(self.kwargs)}; expected a mapping of builder arguments")
        if not _is_json_safe(self.kwargs):
            raise ConfigError("model.kwargs: a value is not recordable as JSON; use numbers, strings, booleans, lists or mappings")
        for k in ("num_classes", "in_channels"):
            if k in self.kwargs:
                raise ConfigError(f"model.kwargs.{k}: set by the dataset; remove it")
        if ":" in self.name:
            module, _, attr = self.name.partition(":")
            if not module or not attr or not all(p.isidentifier() for p in module.split(".") + attr.split(".")):
                raise ConfigError(
                    f"model.name: {self.name!r} is not package.module:factory; "
                    "write e.g. mypkg.models:build"
                )
        object.__setattr__(self, "kwargs", dict(self.kwargs))


def _check_optimizer(key: str, raw: Mapping[str, Any]) -> None:
    _need_choice(f"{key}.name", raw["name"], OPTIMIZERS)
    _need_number(f"{key}.momentum", raw["momentum"], minimum=0.0, maximum=1.0, exclusive_max=True)
    _need_number(f"{key}.weight_decay", raw["weight_decay"], minimum=0.0)
    _need_bool(f"{key}.nesterov", raw["nesterov"])
    _need_choice(f"{key}.lr_schedule", raw["lr_schedule"], LR_SCHEDULES)
    if raw["nesterov"] and (raw["name"] != "sgd" or raw["momentum"] == 0):
        raise ConfigError(f"{key}.nesterov: true without SGD momentum; needs name sgd with momentum > 0")


@dataclass(frozen=True)
class OptimizerSettings:
    """Optimizer settings (``pruners.OptimizerConfig`` without the learning rate, which is
    configured, or searched, on its own).

    ``momentum`` is SGD's (Adam ignores it); ``lr_schedule`` is ``constant`` or ``cosine``
    (decay to 0 over all optimizer steps).
    """

    name: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        _check_optimizer("optimizer", self.__dict__)
        object.__setattr__(self, "momentum", float(self.momentum))
        object.__setattr__(self, "weight_decay", float(self.weight_decay))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def build(self, lr: float) -> Any:
        """The ``pruners.OptimizerConfig`` for learning rate ``lr``."""
        import pruners

        return pruners.OptimizerConfig(lr=float(lr), **self.to_dict())

    @classmethod
    def parse(cls, key: str, raw: Any) -> OptimizerSettings:
        """A name (``sgd``) or a mapping of the fields; errors name ``key``."""
        if isinstance(raw, OptimizerSettings):
            return raw
        if raw is None:
            raw = {}
        elif isinstance(raw, str):
            raw = {"name": raw}
        elif not isinstance(raw, Mapping):
            raise ConfigError(
                f"{key}: got {_typename(raw)}; expected a name ({', '.join(OPTIMIZERS)}) or a mapping "
                "{name, momentum, weight_decay, nesterov, lr_schedule}"
            )
        merged = {**cls().to_dict(), **_section(key, raw, cls)}
        _check_optimizer(key, merged)
        return cls(**merged)


@dataclass(frozen=True)
class DenseConfig:
    """The dense baseline every trial starts from (``dense:`` section).

    ``checkpoint`` is a state dict (``.pt``) or a ``pruners.save`` file; without one the
    dense model is trained once for ``epochs`` (0 = use the model as built, e.g. pretrained
    torchvision weights).
    """

    checkpoint: str | None = None
    epochs: int = 5
    lr: float = 0.05
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)

    def __post_init__(self) -> None:
        _need_str("dense.checkpoint", self.checkpoint, optional=True)
        _need_int("dense.epochs", self.epochs, minimum=0)
        _need_number("dense.lr", self.lr, minimum=0.0, exclusive_min=True)
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(
            self, "optimizer", OptimizerSettings.parse("dense.optimizer", self.optimizer)
        )
        object.__setattr__(self, "checkpoint", _absolute(self.checkpoint))

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "epochs": self.epochs, "lr": self.lr, "optimizer": self.optimizer.to_dict()}


_SPACE_DEFAULTS: dict[str, Any] = {
    "criterion": ["magnitude", "taylor", "random"],
    "granularity": ["unstructured", "structured"],
    "scope": ["global"],
    "threshold_rule": ["fraction"],
    "amount": {"low": 0.3, "high": 0.8},
    "schedule": ["one_shot", "gradual"],
    "lr": {"low": 0.001, "high": 0.05, "log": True},
}


def _default_param(name: str) -> Callable[[], Param]:
    return lambda: parse_param(f"search.space.{name}", _SPACE_DEFAULTS[name])


@dataclass(frozen=True)
class SpaceConfig:
    """What a trial's pruning method is drawn from (``search.space:`` section)."""

    criterion: Param = field(default_factory=_default_param("criterion"))
    granularity: Param = field(default_factory=_default_param("granularity"))
    scope: Param = field(default_factory=_default_param("scope"))
    threshold_rule: Param = field(default_factory=_default_param("threshold_rule"))
    amount: Param = field(default_factory=_default_param("amount"))
    schedule: Param = field(default_factory=_default_param("schedule"))
    lr: Param = field(default_factory=_default_param("lr"))

    def __post_init__(self) -> None:
        # Shape and number checks first, names last: names need `pruners` (torch, seconds).
        for f in fields(self):
            object.__setattr__(self, f.name, parse_param(f"search.space.{f.name}", getattr(self, f.name)))
        for key in ("criterion", "granularity", "scope", "threshold_rule", "schedule"):
            if isinstance(getattr(self, key), Range):
                raise ConfigError(f"search.space.{key}: a range needs numbers; give a list of names")
        if isinstance(self.amount, Range) and self.amount.integer:
            raise ConfigError("search.space.amount: must be a real number; drop int: true")
        _check_numbers("search.space.amount", self.amount, lambda k, v: _need_number(k, v))
        # lr 0 is allowed: prune without fine-tuning (the baseline fine-tuning must beat).
        # A log range cannot start at 0 (parse_param refuses it); list 0 as a choice instead.
        _check_numbers("search.space.lr", self.lr, lambda k, v: _need_number(k, v, minimum=0.0))
        _check_names("search.space.criterion", self.criterion, _criteria())
        _check_names("search.space.granularity", self.granularity, _granularities())
        _check_names("search.space.scope", self.scope, _scopes())
        _check_names("search.space.threshold_rule", self.threshold_rule, _threshold_rules())
        _check_names("search.space.schedule", self.schedule, _schedules())
        for v in _values_of(self.amount):
            for rule in _names_in(self.threshold_rule):
                problem = _check_threshold_value(rule, v)
                if problem is not None:
                    raise ConfigError(
                        f"search.space.amount: {_fmt(v)} is invalid for threshold_rule {rule}; {problem}"
                    )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name).to_raw() for f in fields(self)}


def _parse_param_table(
    key: str,
    raw: Any,
    names: Iterable[str],
    params_of: Callable[[str], Mapping[str, Any] | None],
    with_defaults: bool,
) -> dict[str, dict[str, Param]]:
    """``{name: {param: entry}}`` with names and parameter names checked."""
    names = list(names)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: got {_typename(raw)}; expected a mapping of name -> {{param: value}}")
    out: dict[str, dict[str, Param]] = {}
    for name, entries in raw.items():
        _need_choice(key, name, names)
        if entries is None:
            entries = {}
        if not isinstance(entries, Mapping):
            raise ConfigError(f"{key}.{name}: got {_typename(entries)}; expected a mapping of parameter -> value")
        allowed = params_of(name)
        table: dict[str, Param] = {}
        for p, v in entries.items():
            if allowed is not None and p not in allowed:
                choices = ", ".join(allowed) or "none"
                raise ConfigError(f"{key}.{name}.{p}: unknown parameter; allowed: {choices}")
            if v is None and allowed is not None and allowed.get(p, 0) is None:
                table[str(p)] = Fixed(None)  # "derived" (e.g. dynamic's end_epoch = the end)
            else:
                table[str(p)] = parse_param(f"{key}.{name}.{p}", v)
        out[str(name)] = table
    if with_defaults:
        for name in names:
            defaults = params_of(name) or {}
            merged = {p: Fixed(d) for p, d in defaults.items()}
            merged.update(out.get(name, {}))
            out[name] = merged
    return out


def _criterion_param_table(name: str) -> dict[str, Any] | None:
    names = _criterion_param_names(name)
    return None if names is None else dict.fromkeys(names)


def _check_criterion_values(params: Mapping[str, Mapping[str, Param]]) -> None:
    """Build each criterion with each value it may get (a range: both ends), so a bad value
    fails here, before Ray, with the criterion's own message rather than inside a trial."""
    make = _pruners().make_criterion
    for crit, table in params.items():
        for p, param in table.items():
            for v in _values_of(param):
                try:
                    make(crit, **{p: v})
                except (TypeError, ValueError) as e:
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
                    raise ConfigError(f"search.criterion_params.{crit}.{p}: {v!r} is invalid; {msg}") from None


def _check_schedule_params(params: Mapping[str, Mapping[str, Param]], max_epochs: float) -> None:
    """Range checks for the epoch-unit schedule parameters we know."""
    for sched, table in params.items():
        for p, param in table.items():
            key = f"search.schedule_params.{sched}.{p}"
            for v in _values_of(param):
                if v is None and SCHEDULE_PARAMS.get(sched, {}).get(p, 0) is None:
                    continue  # a derived default ("until the end of fine-tuning")
                if p == "rounds":
                    _need_int(key, v, minimum=1)
                elif p in ("initial", "regrow_fraction"):
                    _need_number(key, v, minimum=0.0, maximum=1.0, exclusive_max=(p == "initial"))
                elif p == "interval_epochs":
                    _need_number(key, v, minimum=0.0, exclusive_min=True)
                elif p == "end_epoch" and sched == "gradual":
                    _need_number(key, v, minimum=0.0)  # < epochs: _check_schedules_fit
                elif p in ("start_epoch", "end_epoch"):
                    _need_number(key, v, minimum=0.0, maximum=max_epochs)
        start, end = table.get("start_epoch"), table.get("end_epoch")
        if isinstance(start, Fixed) and isinstance(end, Fixed) and end.value is not None:
            if not start.value < end.value:
                raise ConfigError(
                    f"search.schedule_params.{sched}: start_epoch {_fmt(start.value)} is not before "
                    f"end_epoch {_fmt(end.value)}; start_epoch must be < end_epoch"
                )


def _target_epoch(sched: str, table: Mapping[str, Param]) -> tuple[float, str] | None:
    """The latest fine-tune epoch at which ``sched`` may reach its target (over every value
    its parameters can take), and how that epoch comes about; None if not known here."""

    def most(p: str) -> float:
        return float(max(_values_of(table[p])))

    if sched in ("one_shot", "dynamic"):
        return 0.0, "it prunes to the target at the start"
    if sched == "iterative" and "rounds" in table and "interval_epochs" in table:
        rounds, interval = int(most("rounds")), most("interval_epochs")
        return (rounds - 1) * interval, (
            f"its last round ((rounds {rounds} - 1) x interval_epochs {_fmt(interval)}) prunes at epoch "
            f"{_fmt((rounds - 1) * interval)}"
        )
    if sched == "gradual" and "end_epoch" in table:
        end = most("end_epoch")
        return end, f"its ramp ends at end_epoch {_fmt(end)}"
    return None


def _check_schedules_fit(
    params: Mapping[str, Mapping[str, Param]], schedules: Iterable[str], min_epochs: int
) -> None:
    """Refuse a schedule that reaches its target only after fine-tuning ends.

    ``pruners.finetune`` refuses such a schedule inside the trial (after Ray has started);
    here the same rule is applied in epoch units, against the shortest fine-tuning any trial
    may draw. ``schedule_kwargs`` rounds epochs down to steps, so a schedule that fits here
    fits in steps too (barring intervals shorter than one step, or a criterion's warm-up
    steps, which are only known in the trial).
    """
    for sched in schedules:
        found = _target_epoch(sched, params.get(sched, {}))
        if found is None or found[0] < min_epochs:
            continue
        raise ConfigError(
            f"search.schedule_params.{sched}: {found[1]}, not before fine-tuning ends "
            f"(search.epochs {min_epochs}); the target must be reached before the last epoch ends, "
            "so shorten the schedule or raise search.epochs"
        )


@dataclass(frozen=True)
class SearchSettings:
    """The search (``search:`` section): algorithm, space, schedule/criterion parameters.

    ``schedule_params`` always holds every schedule's parameters (defaults filled in), in
    epoch units; ``criterion_params`` only what the config sets (criteria have their own
    defaults in ``pruners``).
    """

    num_samples: int = 6
    algorithm: str = "random"
    # None = the default space, built in __post_init__ after the cheap checks (building it
    # imports pruners, and with it torch).
    space: SpaceConfig = None  # type: ignore[assignment]
    schedule_params: dict[str, dict[str, Param]] = field(default_factory=dict)
    criterion_params: dict[str, dict[str, Param]] = field(default_factory=dict)
    epochs: Param = field(default_factory=lambda: Fixed(3))
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)

    def __post_init__(self) -> None:
        _need_int("search.num_samples", self.num_samples, minimum=1)
        _need_choice("search.algorithm", self.algorithm, ALGORITHMS)
        epochs = parse_param("search.epochs", self.epochs)
        if isinstance(epochs, Range) and not epochs.integer:
            raise ConfigError("search.epochs: a range of real numbers; epochs need int: true")
        _check_numbers("search.epochs", epochs, lambda k, v: _need_int(k, v, minimum=1))
        object.__setattr__(self, "epochs", epochs)
        object.__setattr__(self, "optimizer", OptimizerSettings.parse("search.optimizer", self.optimizer))
        if self.space is None or isinstance(self.space, Mapping):
            raw = _section("search.space", self.space, SpaceConfig)
            object.__setattr__(self, "space", SpaceConfig(**raw))
        elif not isinstance(self.space, SpaceConfig):
            raise ConfigError(f"search.space: got {_typename(self.space)}; expected a mapping of keys")

        schedules = _schedules()
        sp = _parse_param_table(
            "search.schedule_params",
            self.schedule_params,
            schedules,
            lambda s: SCHEDULE_PARAMS.get(s),
            with_defaults=True,
        )
        _check_schedule_params(sp, float(self.max_epochs))
        object.__setattr__(self, "schedule_params", sp)
        cp = _parse_param_table(
            "search.criterion_params",
            self.criterion_params,
            _criteria(),
            _criterion_param_table,
            with_defaults=False,
        )
        _check_criterion_values(cp)
        object.__setattr__(self, "criterion_params", cp)

        methods = valid_methods(self)  # raises when the space has no valid combination
        # Only the schedules the space can sample must fit (the others keep their defaults).
        _check_schedules_fit(sp, sorted({m[2] for m in methods}), int(min(_values_of(self.epochs))))
        if self.algorithm == "grid":
            for key, p in flat_space(self, methods).items():
                if isinstance(p, Range):
                    raise ConfigError(
                        f"search.{_space_key_to_config(key)}: grid search needs a list of values, "
                        "got a {low, high} range; list the grid points or use algorithm random"
                    )
        if self.algorithm == "optuna" and importlib.util.find_spec("optuna") is None:
            raise ConfigError(
                "search.algorithm: optuna is not installed; pip install 'prunefront[optuna]' "
                "(or optuna), or use random | grid"
            )

    @property
    def max_epochs(self) -> int:
        """The most fine-tune epochs any trial runs (ASHA's ``max_t``)."""
        return int(max(_values_of(self.epochs)))

    def to_dict(self) -> dict[str, Any]:
        def table(t: Mapping[str, Mapping[str, Param]]) -> dict[str, Any]:
            return {n: {p: v.to_raw() for p, v in ps.items()} for n, ps in t.items()}

        return {
            "num_samples": self.num_samples,
            "algorithm": self.algorithm,
            "space": self.space.to_dict(),
            "schedule_params": table(self.schedule_params),
            "criterion_params": table(self.criterion_params),
            "epochs": self.epochs.to_raw(),
            "optimizer": self.optimizer.to_dict(),
        }


@dataclass(frozen=True)
class SchedulerConfig:
    """Trial scheduler (``scheduler:`` section).

    ``asha`` stops trials early on ``metric``/``mode``; ``moasha`` on the Pareto rank of
    ``objectives`` (at least two); ``fifo`` runs every trial to the end. ``objectives`` are
    also the axes of the reported Pareto fronts, whatever the scheduler.
    """

    name: str = "asha"
    metric: str = "accuracy"
    mode: str = "max"
    objectives: dict[str, str] = field(default_factory=lambda: {"accuracy": "max", "flops": "min"})
    grace_period: int = 1
    reduction_factor: float = 2

    def __post_init__(self) -> None:
        _need_choice("scheduler.name", self.name, SCHEDULERS)
        _need_choice("scheduler.metric", self.metric, METRIC_KEYS)
        _need_choice("scheduler.mode", self.mode, MODES)
        if not isinstance(self.objectives, Mapping) or not self.objectives:
            raise ConfigError(
                "scheduler.objectives: expected a mapping metric -> max|min, e.g. {accuracy: max, flops: min}"
            )
        for metric, mode in self.objectives.items():
            _need_choice("scheduler.objectives", metric, METRIC_KEYS)
            _need_choice(f"scheduler.objectives.{metric}", mode, MODES)
        if self.name == "moasha" and len(self.objectives) < 2:
            raise ConfigError(
                "scheduler.objectives: moasha needs at least two objectives; use asha for one metric"
            )
        _need_int("scheduler.grace_period", self.grace_period, minimum=1)
        _need_number("scheduler.reduction_factor", self.reduction_factor, minimum=1.0, exclusive_min=True)
        object.__setattr__(self, "objectives", dict(self.objectives))


@dataclass(frozen=True)
class ClusterSpec:
    """The cluster ``--dry-run`` plans for when it cannot ask Ray (per node)."""

    nodes: int = 1
    cpus: float = 1
    gpus: float = 0

    def __post_init__(self) -> None:
        _need_int("resources.cluster.nodes", self.nodes, minimum=1)
        _need_number("resources.cluster.cpus", self.cpus, minimum=0.0, exclusive_min=True)
        _need_number("resources.cluster.gpus", self.gpus, minimum=0.0)


@dataclass(frozen=True)
class ResourcesConfig:
    """What one trial needs (``resources:`` section).

    A trial is a Tune function trainable (the "driver", ``driver_cpus``) that runs a Ray
    Train job of ``workers`` DDP workers. ``gpus_per_worker`` defaults to 1 when ``use_gpu``.
    ``cluster`` only describes the cluster ``--dry-run`` assumes; a real run asks Ray.
    """

    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1
    gpus_per_worker: float | None = None
    driver_cpus: float = 0.1
    max_concurrent_trials: int | None = None
    cluster: ClusterSpec | None = None

    def __post_init__(self) -> None:
        _need_int("resources.workers", self.workers, minimum=1)
        _need_bool("resources.use_gpu", self.use_gpu)
        _need_number("resources.cpus_per_worker", self.cpus_per_worker, minimum=0.0, exclusive_min=True)
        _need_number("resources.gpus_per_worker", self.gpus_per_worker, minimum=0.0, optional=True)
        # Tune cannot reserve nothing for a trial whose workers live in their own group.
        _need_number("resources.driver_cpus", self.driver_cpus, minimum=0.01)
        _need_int("resources.max_concurrent_trials", self.max_concurrent_trials, minimum=1, optional=True)
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1 if self.use_gpu else 0
        if not self.use_gpu and gpus > 0:
            raise ConfigError(
                f"resources.gpus_per_worker: {_fmt(gpus)} GPUs without use_gpu; set use_gpu: true or gpus_per_worker: 0"
            )
        if self.use_gpu and gpus <= 0:
            raise ConfigError("resources.gpus_per_worker: 0 with use_gpu: true; use_gpu needs gpus_per_worker > 0")
        object.__setattr__(self, "gpus_per_worker", gpus)
        if isinstance(self.cluster, Mapping):
            object.__setattr__(self, "cluster", ClusterSpec(**_section("resources.cluster", self.cluster, ClusterSpec)))
        elif self.cluster is not None and not isinstance(self.cluster, ClusterSpec):
            raise ConfigError(f"resources.cluster: got {_typename(self.cluster)}; expected a mapping {{nodes, cpus, gpus}}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cluster"}
        d["cluster"] = None if self.cluster is None else {"nodes": self.cluster.nodes, "cpus": self.cluster.cpus, "gpus": self.cluster.gpus}
        return d


@dataclass(frozen=True)
class MetricsConfig:
    """How metrics are measured (``metrics:`` section)."""

    latency_batch_size: int = 1
    latency_repeats: int = 10

    def __post_init__(self) -> None:
        _need_int("metrics.latency_batch_size", self.latency_batch_size, minimum=1)
        _need_int("metrics.latency_repeats", self.latency_repeats, minimum=1)


# --------------------------------------------------------------------------------------
# The whole config
# --------------------------------------------------------------------------------------


def default_output(name: str) -> str:
    """Where an experiment goes without ``output``/``--output``: ./prunefront-results/<name>."""
    return str(Path("prunefront-results", name).absolute())


def _check_storage(storage: str | None) -> str | None:
    if storage is None:
        return None
    _need_str("storage", storage)
    if _URI_RE.match(storage):
        if storage.startswith("file://") and not storage[len("file://"):].startswith("/"):
            raise ConfigError(f"storage: {storage!r} is not an absolute file:// URI; write file:///abs/path")
        return storage
    if not os.path.isabs(os.path.expanduser(storage)):
        raise ConfigError(
            f"storage: {storage!r} is relative; give an absolute path or a URI (s3://..., gs://..., file:///...)"
        )
    return os.path.normpath(os.path.expanduser(storage))


_SECTIONS: dict[str, type] = {}  # filled below (name -> dataclass)


@dataclass(frozen=True)
class SearchConfig:
    """A validated search configuration (the whole YAML file)."""

    name: str = "digits-default"
    seed: int = 0
    output: str | None = None
    storage: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    search: SearchSettings = field(default_factory=SearchSettings)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        _need_str("name", self.name)
        if not _NAME_RE.match(self.name):
            raise ConfigError(
                f"name: {self.name!r} is not usable as a directory name; use letters, digits, '.', '_' and '-'"
            )
        _need_int("seed", self.seed, minimum=0)
        _need_str("output", self.output, optional=True)
        object.__setattr__(self, "output", _absolute(self.output))
        object.__setattr__(self, "storage", _check_storage(self.storage))
        for key, cls in _SECTIONS.items():
            if not isinstance(getattr(self, key), cls):
                raise ConfigError(f"{key}: got {_typename(getattr(self, key))}; expected a mapping of keys")
        if self.scheduler.grace_period > self.search.max_epochs and self.scheduler.name != "fifo":
            raise ConfigError(
                f"scheduler.grace_period: {self.scheduler.grace_period} exceeds search.epochs "
                f"({self.search.max_epochs}); must be <= the fine-tune epochs"
            )

    # -- derived ------------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        """Local directory of the experiment (``output`` or ./prunefront-results/<name>)."""
        return Path(self.output if self.output is not None else default_output(self.name))

    @property
    def storage_path(self) -> str:
        """Tune's ``storage_path``: ``storage`` when set, else the experiment directory
        (run Tune with ``name="tune"`` so its files land in ``<output>/tune``)."""
        return self.storage if self.storage is not None else str(self.output_dir)

    # -- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every value, JSON-safe, in the YAML layout (``from_dict`` reads it back)."""
        out: dict[str, Any] = {"name": self.name, "seed": self.seed, "output": self.output, "storage": self.storage}
        for key in _SECTIONS:
            sec = getattr(self, key)
            if hasattr(sec, "to_dict"):
                out[key] = sec.to_dict()
            else:
                out[key] = {f.name: _to_json(getattr(sec, f.name)) for f in fields(sec)}
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> SearchConfig:
        """Validate a YAML-layout mapping (missing keys take their defaults).

        Raises:
            ConfigError: one line naming the offending key.
        """
        top = _section("", raw, cls)
        kwargs: dict[str, Any] = {k: top[k] for k in ("name", "seed", "output", "storage") if k in top}
        _check_storage(kwargs.get("storage"))  # cheap; __post_init__ checks it again
        # Cheap sections first: most malformed configs fail before `pruners` (and torch)
        # has to be imported for the search section's names.
        for key in ("data", "model", "dense", "scheduler", "resources", "metrics", "search"):
            section_cls = _SECTIONS[key]
            kwargs[key] = section_cls(**_section(key, top.get(key), section_cls))
        return cls(**kwargs)


_SECTIONS.update(
    data=DataConfig,
    model=ModelConfig,
    dense=DenseConfig,
    search=SearchSettings,
    scheduler=SchedulerConfig,
    resources=ResourcesConfig,
    metrics=MetricsConfig,
)


# --------------------------------------------------------------------------------------
# Reading files and overrides
# --------------------------------------------------------------------------------------


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a config file into a mapping (empty file -> ``{}``).

    Raises:
        ConfigError: missing/unreadable file, invalid YAML, or a top level that is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: {str(p)!r} does not exist or is not a file; give a path to a YAML config")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config: cannot read {str(p)!r} ({e.__class__.__name__}); give a readable UTF-8 YAML file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise ConfigError(f"{p.name}: invalid YAML{where}: {problem}; fix the file's syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p.name}: the top level is {_typename(raw)}; it must be a mapping of keys (see configs/default.yaml)")
    return raw


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a copy of ``raw``.

    Raises:
        ConfigError: an override that is not ``KEY=VALUE`` or goes through a non-mapping.
    """
    out = _copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or any(not p for p in parts):
            raise ConfigError(f"--set {item!r}: not KEY=VALUE; write a dotted key and a value, e.g. --set search.num_samples=4")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML; quote strings, write lists as [a, b]") from None
        node = out
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"--set {item!r}: {'.'.join(parts[: i + 1])} is {_typename(child)}, not a section; "
                    "set it directly"
                )
            node = child
        node[parts[-1]] = value
    return out


def _copy(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def load_config(path: str | os.PathLike[str] | None, overrides: Iterable[str] = ()) -> SearchConfig:
    """Read ``path`` (None = all defaults), apply ``--set`` overrides, validate."""
    raw = read_yaml(path) if path is not None else {}
    return SearchConfig.from_dict(apply_overrides(raw, overrides))


# --------------------------------------------------------------------------------------
# The search space, as the Ray side consumes it
# --------------------------------------------------------------------------------------

_METHOD_SEP = "+"


def method_key(criterion: str, granularity: str, schedule: str) -> str:
    """Encode a (criterion, granularity, schedule) combination as one searchable string.

    ``+`` rather than ``/``: Tune puts config values into trial directory names.
    """
    return _METHOD_SEP.join((criterion, granularity, schedule))


def parse_method(key: str) -> tuple[str, str, str]:
    """Inverse of :func:`method_key`."""
    parts = key.split(_METHOD_SEP)
    if len(parts) != 3:
        raise ValueError(f"method {key!r} is not criterion+granularity+schedule")
    return parts[0], parts[1], parts[2]


def valid_methods(search: SearchSettings) -> list[tuple[str, str, str]]:
    """All (criterion, granularity, schedule) combinations the space may sample.

    A criterion only pairs with the granularities it supports
    (``pruners.criterion_granularities``) and ``dynamic`` only with unstructured pruning.
    Searching these as one combined choice means no trial is ever sampled that cannot run.

    Raises:
        ConfigError: a listed criterion, granularity or schedule is in no valid combination
            (the user asked for it, so dropping it silently would mislead).
    """
    space = search.space
    crits, grans, scheds = _names_in(space.criterion), _names_in(space.granularity), _names_in(space.schedule)
    crit_g = {c: _criterion_granularities(c) for c in crits}
    sched_g = {s: _schedule_granularities(s) for s in scheds}
    # Constraints only involve the granularity, so pairwise checks find every dead value.
    for key, table in (("criterion", crit_g), ("schedule", sched_g)):
        for name, supported in table.items():
            if not any(g in supported for g in grans):
                raise ConfigError(
                    f"search.space.{key}: {name} supports {'/'.join(supported)} only but granularity is "
                    f"{_fmt(list(grans))}; add {supported[0]} to granularity or remove {name}"
                )
    for g in grans:
        for key, table in (("criterion", crit_g), ("schedule", sched_g)):
            if not any(g in supported for supported in table.values()):
                raise ConfigError(
                    f"search.space.granularity: {g} is supported by no {key} in {_fmt(list(table))}; "
                    f"add one that supports it or remove {g}"
                )
    return [(c, g, s) for c in crits for g in grans for s in scheds if g in crit_g[c] and g in sched_g[s]]


def _space_key_to_config(flat_key: str) -> str:
    """Flat Tune key -> the config key that defines it (for error messages)."""
    if flat_key == "method":
        return "space.criterion"
    if flat_key == "epochs":
        return "epochs"
    head, _, rest = flat_key.partition(".")
    if head == "schedule" and rest:
        return f"schedule_params.{rest}"
    if head == "criterion" and rest:
        return f"criterion_params.{rest}"
    return f"space.{flat_key}"


def flat_space(search: SearchSettings, methods: list[tuple[str, str, str]] | None = None) -> dict[str, Param]:
    """The search space as flat Tune keys -> :class:`Param`.

    Keys: ``method`` (a :func:`method_key` string, always a :class:`Choice` or
    :class:`Fixed`), ``scope``, ``threshold_rule``, ``amount``, ``lr``, ``epochs``,
    ``schedule.<schedule>.<param>`` for the schedules in the space, and
    ``criterion.<criterion>.<param>`` for the criteria in the space. The Ray side maps each
    Param to a Tune domain (Choice -> ``tune.choice`` or ``tune.grid_search``, Range ->
    ``tune.uniform``/``loguniform``/``randint``, Fixed -> the plain value) and hands a
    sampled config to :func:`decode_trial`.
    """
    methods = valid_methods(search) if methods is None else methods
    keys = [method_key(*m) for m in methods]
    space = search.space
    out: dict[str, Param] = {"method": Choice(tuple(keys)) if len(keys) > 1 else Fixed(keys[0])}
    for name in ("scope", "threshold_rule", "amount", "lr"):
        out[name] = getattr(space, name)
    out["epochs"] = search.epochs
    used_scheds = sorted({m[2] for m in methods})
    used_crits = sorted({m[0] for m in methods})
    for s in used_scheds:
        for p, v in search.schedule_params.get(s, {}).items():
            out[f"schedule.{s}.{p}"] = v
    for c in used_crits:
        for p, v in search.criterion_params.get(c, {}).items():
            out[f"criterion.{c}.{p}"] = v
    return {k: (Fixed(v.values[0]) if isinstance(v, Choice) and len(v.values) == 1 else v) for k, v in out.items()}


def grid_size(search: SearchSettings) -> int:
    """Points in one pass of the grid: the product of the sizes of every searched choice."""
    n = 1
    for p in flat_space(search).values():
        if isinstance(p, Choice):
            n *= len(p.values)
    return n


@dataclass(frozen=True)
class TrialSettings:
    """One trial's concrete pruning method, decoded from a sampled flat Tune config."""

    criterion: str
    granularity: str
    scope: str
    threshold_rule: str
    amount: float
    schedule: str
    schedule_params: dict[str, Any]
    criterion_params: dict[str, Any]
    lr: float
    epochs: int

    def record(self) -> dict[str, Any]:
        """The flat config keys a result row carries (design.md section 3)."""
        row: dict[str, Any] = {
            "criterion": self.criterion,
            "granularity": self.granularity,
            "scope": self.scope,
            "threshold_rule": self.threshold_rule,
            "amount": self.amount,
            "schedule": self.schedule,
            "lr": self.lr,
            "epochs": self.epochs,
        }
        row.update({f"schedule.{k}": v for k, v in self.schedule_params.items()})
        row.update({f"criterion.{k}": v for k, v in self.criterion_params.items()})
        return row


def decode_trial(flat: Mapping[str, Any]) -> TrialSettings:
    """Turn a sampled flat config (keys of :func:`flat_space`) into :class:`TrialSettings`.

    Only the chosen schedule's and criterion's parameters are kept.
    """
    criterion, granularity, schedule = parse_method(str(flat["method"]))
    sprefix, cprefix = f"schedule.{schedule}.", f"criterion.{criterion}."
    sparams = {k[len(sprefix):]: v for k, v in flat.items() if k.startswith(sprefix)}
    cparams = {k[len(cprefix):]: v for k, v in flat.items() if k.startswith(cprefix)}
    return TrialSettings(
        criterion=criterion,
        granularity=granularity,
        scope=str(flat["scope"]),
        threshold_rule=str(flat["threshold_rule"]),
        amount=float(flat["amount"]),
        schedule=schedule,
        schedule_params=sparams,
        criterion_params=cparams,
        lr=float(flat["lr"]),
        epochs=int(flat["epochs"]),
    )


def schedule_kwargs(
    schedule: str, params: Mapping[str, Any], *, target: float, steps_per_epoch: int, epochs: int
) -> dict[str, Any]:
    """Keyword arguments of ``pruners.make_schedule(schedule, **kw)`` in optimizer steps.

    The config states schedule timing in epochs (``interval_epochs``, ``end_epoch``) because
    steps per epoch depend on the dataset, batch size and number of DDP workers; this turns
    them into steps once those are known (rounded down). Intervals are at least one step.

    Args:
        schedule: Schedule name.
        params: The schedule's parameters in epoch units (``TrialSettings.schedule_params``).
        target: Final sparsity (the trial's ``amount``).
        steps_per_epoch: Optimizer steps in one epoch on one worker.
        epochs: Fine-tune epochs of the trial.
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch}, {epochs}")
    total = steps_per_epoch * epochs

    def steps(e: float) -> int:
        # Rounded down (1e-9 absorbs float error, e.g. 0.29 * 100): a schedule that reaches its
        # target before the last epoch ends (what the config checks) then does so in steps too.
        return min(total, math.floor(float(e) * steps_per_epoch + 1e-9))

    def interval(e: float) -> int:
        return max(1, steps(e))

    kw: dict[str, Any] = {"target": float(target)}
    if schedule == "one_shot":
        pass
    elif schedule == "iterative":
        kw.update(rounds=int(params["rounds"]), interval=interval(params["interval_epochs"]))
    elif schedule == "gradual":
        start = steps(params["start_epoch"])
        end = max(start + 1, steps(params["end_epoch"]))
        kw.update(start_step=start, end_step=end, interval=interval(params["interval_epochs"]),
                  initial=float(params["initial"]))
    elif schedule == "dynamic":
        end_epoch = params.get("end_epoch")
        kw.update(
            interval=interval(params["interval_epochs"]),
            regrow_fraction=float(params["regrow_fraction"]),
            end_step=total if end_epoch is None else steps(end_epoch),
        )
    else:
        # A schedule registered in pruners after this table was written: pass its
        # parameters through unchanged (pruners validates them).
        kw.update(params)
    return kw
