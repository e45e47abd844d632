"""Searched values of a config: a list (choice), ``{low, high, log?, int?}`` (range), a scalar.

:class:`Choice`, :class:`Range` and :class:`Fixed` are what the config holds for every
searched key; :data:`Searched` is the pydantic field type that parses, serialises and
describes them (JSON schema). The Ray side maps them onto Tune domains
(``orchestrator.tune_space``). :class:`Section` is the pydantic base of every config
section. Nothing here imports torch or Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, WithJsonSchema

from orchestrator.errors import fmt, typename

__all__ = ["check_names", "Choice", "Fixed", "Param", "Range", "Searched", "SearchedNames", "Section", "names_in", "parse_param",
           "values_of"]


class Section(BaseModel):
    """A config section: unknown keys refused, no type coercion, frozen, no inf / nan."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _json(v: Any) -> Any:
    """Tuples -> lists, mappings -> plain dicts (recursively)."""
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _json(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class Choice:
    """Pick one of ``values`` (``tune.choice``; ``tune.grid_search`` under grid search)."""

    values: tuple[Any, ...]

    def to_raw(self) -> list[Any]:
        return _json(list(self.values))


@dataclass(frozen=True)
class Range:
    """A number drawn from ``[low, high]``: ``log`` draws log-uniformly, ``integer`` draws
    integers with both ends included."""

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
        return _json(self.value)


Param = Choice | Range | Fixed

_RANGE_KEYS = ("low", "high", "log", "int")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_param(raw: Any) -> Param:
    """Parse one searched entry.

    Raises:
        ValueError: the entry is malformed (the message is relative to the entry's key).
    """
    if isinstance(raw, (Choice, Range, Fixed)):
        return raw
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise ValueError("the choice list is empty; give at least one value")
        for v in raw:
            if isinstance(v, (list, tuple, Mapping)) or v is None:
                raise ValueError(f"choice value {fmt(v)} is not a plain value; list numbers, strings or booleans")
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"choice value {fmt(v)} is not a finite number")
        if len(set(map(repr, raw))) != len(raw):
            raise ValueError(f"the choice list {fmt(list(raw))} repeats a value; list each once")
        return Choice(tuple(raw))
    if isinstance(raw, Mapping):
        unknown = [k for k in raw if k not in _RANGE_KEYS]
        if unknown or "low" not in raw or "high" not in raw:
            raise ValueError(
                f"a range is {{low, high, log?, int?}}, got keys {', '.join(map(str, raw))}; "
                "use a list for a choice or a scalar for a fixed value"
            )
        low, high = raw["low"], raw["high"]
        log, integer = raw.get("log", False), raw.get("int", False)
        for name, v in (("low", low), ("high", high)):
            if not _is_number(v):
                raise ValueError(f"{name}: got {typename(v)} {fmt(v)}; expected a number")
        for name, v in (("log", log), ("int", integer)):
            if not isinstance(v, bool):
                raise ValueError(f"{name}: got {typename(v)} {fmt(v)}; expected true or false")
        if not low < high:
            raise ValueError(f"low {fmt(low)} must be < high {fmt(high)}; use a scalar for a fixed value")
        if log and low <= 0:
            raise ValueError(f"a log range starts at {fmt(low)}; it needs low > 0")
        if integer and not (_is_int(low) and _is_int(high)):
            raise ValueError("int: true with non-integer bounds; give integer low and high")
        if not integer:
            low, high = float(low), float(high)
        return Range(low, high, log, integer)
    if raw is None:
        raise ValueError("missing value; give a list, a {low, high} range or a scalar")
    if isinstance(raw, float) and not math.isfinite(raw):
        raise ValueError(f"{fmt(raw)} is not a finite number")
    return Fixed(raw)


def values_of(p: Param) -> list[Any]:
    """The concrete values a param can take (a Range contributes its two ends)."""
    if isinstance(p, Choice):
        return list(p.values)
    if isinstance(p, Range):
        return [p.low, p.high]
    return [p.value]


def names_in(p: Param) -> list[Any]:
    """The names a choice or fixed entry lists (a range lists none)."""
    return values_of(p) if not isinstance(p, Range) else []


_SCALAR = {"type": ["number", "string", "boolean"]}
_SCHEMA = {
    "anyOf": [
        {"type": "array", "items": _SCALAR, "minItems": 1, "description": "a choice: one value per trial"},
        {
            "type": "object",
            "properties": {"low": {"type": "number"}, "high": {"type": "number"},
                           "log": {"type": "boolean"}, "int": {"type": "boolean"}},
            "required": ["low", "high"],
            "additionalProperties": False,
            "description": "a range: a number drawn from [low, high]",
        },
        {**_SCALAR, "description": "a fixed value"},
    ]
}
_NAMES_SCHEMA = {"anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "string"}]}

#: A searched entry: parsed into Choice / Range / Fixed, written back in the YAML form.
Searched = Annotated[
    Param,
    PlainValidator(parse_param),
    PlainSerializer(lambda p: p.to_raw(), return_type=Any),
    WithJsonSchema(_SCHEMA),
]
#: A searched entry of names (criteria, schedules, ...): a list or one name.
SearchedNames = Annotated[
    Param,
    PlainValidator(parse_param),
    PlainSerializer(lambda p: p.to_raw(), return_type=Any),
    WithJsonSchema(_NAMES_SCHEMA),
]


def check_names(key: str, p: Param, valid: list[str]) -> None:
    """A searched choice of names: every value one of ``valid`` (a range is refused)."""
    from orchestrator.errors import ConfigError

    if isinstance(p, Range):
        raise ConfigError(f"{key}: a range needs numbers; give a list of names from: {', '.join(valid)}")
    for v in values_of(p):
        if not isinstance(v, str) or v not in valid:
            raise ConfigError(f"{key}: unknown value {fmt(v)}; valid choices: {', '.join(valid)}")
