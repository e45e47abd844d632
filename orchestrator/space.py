"""The search-space compiler: a validated config -> the flat space Tune samples, and back.

* :func:`flat_space` lists what a trial is drawn from under flat keys: ``method`` (the
  combined ``criterion+granularity+schedule`` choice, valid combinations only), ``scope``,
  ``threshold_rule``, ``amount``, ``lr``, ``epochs``, ``schedule.<schedule>.<param>`` and
  ``criterion.<criterion>.<param>``, each a :class:`~orchestrator.params.Choice` /
  ``Range`` / ``Fixed``. ``orchestrator.tune_space`` maps them onto Tune domains.
* :func:`decode_trial` turns a sampled flat config back into :class:`TrialSettings`, whose
  ``record()`` is the config part of every result row.

A searched key is declared in two places: its field in ``config.SpaceConfig`` (name, default,
documentation, validation: the schema and configs follow) and its field in
:class:`TrialSettings` (the type a trial reads it as). Everything here follows from the two:
:func:`flat_space` lists every ``SpaceConfig`` field, :func:`decode_trial` reads every
``TrialSettings`` field by its type, ``record()`` writes them in declaration order (the
column order of every report). ``tests/orchestrator/test_searched_keys.py`` adds a throwaway
key that way and follows it to a report.

Pure functions: no Ray, and ``pruners`` only for its registries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from orchestrator.errors import ConfigError, fmt
from orchestrator.params import Choice, Fixed, Param, Range, names_in

__all__ = [
    "METHOD_PARTS", "TrialSettings", "check_grid", "decode_trial", "flat_space", "grid_size", "method_key", "parse_method",
    "valid_methods",
]

_METHOD_SEP = "+"
#: Space fields searched together as the combined ``method`` choice (valid combinations only).
METHOD_PARTS = ("criterion", "granularity", "schedule")
#: TrialSettings fields that are not flat searched keys: the method's parts and their parameters.
_NOT_FLAT = (*METHOD_PARTS, "schedule_params", "criterion_params")
_CASTS = {"float": float, "int": int, "str": str, "bool": bool}


def method_key(criterion: str, granularity: str, schedule: str) -> str:
    """One searchable string for a (criterion, granularity, schedule) combination.

    ``+`` rather than ``/``: Tune puts config values into trial directory names.
    """
    return _METHOD_SEP.join((criterion, granularity, schedule))


def parse_method(key: str) -> tuple[str, str, str]:
    """Inverse of :func:`method_key`."""
    parts = key.split(_METHOD_SEP)
    if len(parts) != 3:
        raise ValueError(f"method {key!r} is not criterion+granularity+schedule")
    return parts[0], parts[1], parts[2]


def valid_methods(search: Any) -> list[tuple[str, str, str]]:
    """All (criterion, granularity, schedule) combinations the space may sample.

    A criterion pairs only with the granularities it supports and a schedule with the
    granularities it supports (``dynamic``: unstructured), so no trial is ever sampled that
    cannot run.

    Raises:
        ConfigError: a listed criterion, granularity or schedule is in no valid combination
            (the user asked for it, so dropping it silently would mislead).
    """
    import pruners
    from pruners.schedules import SCHEDULES

    space = search.space
    crits, grans, scheds = names_in(space.criterion), names_in(space.granularity), names_in(space.schedule)
    crit_g = {c: tuple(pruners.criterion_granularities(c)) for c in crits}
    sched_g = {s: tuple(SCHEDULES.get(s).granularities) for s in scheds}
    for key, table in (("criterion", crit_g), ("schedule", sched_g)):
        for name, supported in table.items():
            if not any(g in supported for g in grans):
                raise ConfigError(
                    f"search.space.{key}: {name} supports {'/'.join(supported)} only but granularity is "
                    f"{fmt(list(grans))}; add {supported[0]} to granularity or remove {name}"
                )
    for g in grans:
        for key, table in (("criterion", crit_g), ("schedule", sched_g)):
            if not any(g in supported for supported in table.values()):
                raise ConfigError(
                    f"search.space.granularity: {g} is supported by no {key} in {fmt(list(table))}; "
                    f"add one that supports it or remove {g}"
                )
    return [(c, g, s) for c in crits for g in grans for s in scheds if g in crit_g[c] and g in sched_g[s]]


def _config_key(flat_key: str) -> str:
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


def flat_space(search: Any, methods: list[tuple[str, str, str]] | None = None) -> dict[str, Param]:
    """The search space as flat Tune keys -> :class:`~orchestrator.params.Param`.

    Only the parameters of schedules and criteria the space can sample are listed; a
    choice of one value is a fixed value.
    """
    methods = valid_methods(search) if methods is None else methods
    keys = [method_key(*m) for m in methods]
    space = search.space
    out: dict[str, Param] = {"method": Choice(tuple(keys)) if len(keys) > 1 else Fixed(keys[0])}
    for name in type(space).model_fields:  # every declared searched key but the method's parts
        if name not in METHOD_PARTS:
            out[name] = getattr(space, name)
    out["epochs"] = search.epochs
    for s in sorted({m[2] for m in methods}):
        for p, v in search.schedule_params.get(s, {}).items():
            out[f"schedule.{s}.{p}"] = v
    for c in sorted({m[0] for m in methods}):
        for p, v in search.criterion_params.get(c, {}).items():
            out[f"criterion.{c}.{p}"] = v
    return {k: (Fixed(v.values[0]) if isinstance(v, Choice) and len(v.values) == 1 else v) for k, v in out.items()}


def check_grid(search: Any, methods: list[tuple[str, str, str]]) -> None:
    """Grid search takes lists only: name the first range."""
    for key, p in flat_space(search, methods).items():
        if isinstance(p, Range):
            raise ConfigError(
                f"search.{_config_key(key)}: grid search needs a list of values, got a {{low, high}} range; "
                "list the grid points or use algorithm random"
            )


def grid_size(search: Any) -> int:
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
    distill: float = 0.0
    min_keep: float = 0.0
    #: After pruning and fine-tuning: ``none``, ``int8`` or ``int8_qat`` (pruners.quantize).
    quantize: str = "none"

    @property
    def method(self) -> str:
        return method_key(self.criterion, self.granularity, self.schedule)

    def record(self) -> dict[str, Any]:
        """The flat config keys a result row carries: the fields in declaration order (the
        reports' column order), then ``schedule.<param>`` and ``criterion.<param>``."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("schedule_params", "criterion_params")}
        row.update({f"schedule.{k}": v for k, v in self.schedule_params.items()})
        row.update({f"criterion.{k}": v for k, v in self.criterion_params.items()})
        return row


def decode_trial(flat: Mapping[str, Any], settings: type[TrialSettings] = TrialSettings) -> TrialSettings:
    """A sampled flat config (keys of :func:`flat_space`) -> :class:`TrialSettings`.

    Every field is read from its flat key as the type it declares (a field with a default
    may be missing: a config recorded before the key existed). Only the chosen schedule's
    and criterion's parameters are kept. ``settings``: a subclass declaring more keys.
    """
    criterion, granularity, schedule = parse_method(str(flat["method"]))
    sprefix, cprefix = f"schedule.{schedule}.", f"criterion.{criterion}."
    values: dict[str, Any] = {}
    for f in fields(settings):
        if f.name in _NOT_FLAT or (f.name not in flat and f.default is not MISSING):
            continue
        values[f.name] = _CASTS[str(f.type)](flat[f.name])
    return settings(
        criterion=criterion, granularity=granularity, schedule=schedule,
        schedule_params={k[len(sprefix):]: v for k, v in flat.items() if k.startswith(sprefix)},
        criterion_params={k[len(cprefix):]: v for k, v in flat.items() if k.startswith(cprefix)},
        **values,
    )
