"""Errors users see, and the process's exit codes: one line, what is wrong and what is allowed.

Every problem a user can cause (a bad config, a missing dataset, a cluster too small) ends
in :func:`fail`: ``error: <key>: <what is wrong>; <what is allowed>`` on stderr, one line,
no traceback, and the exit code of :data:`EXIT`. Configuration problems are
:class:`ConfigError`; pydantic's validation errors are turned into the same one-line form by
:func:`format_validation_error`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

__all__ = ["EXIT", "ConfigError", "ErrorExit", "fail", "fmt", "format_validation_error", "one_line", "typename"]

#: Exit codes of ``orchestrator/search.py``.
EXIT = {
    "ok": 0,
    "failed": 1,  # the search ran but failed (the dense job, every trial errored)
    "usage": 2,  # bad command line or config: nothing was started
    "interrupted": 130,  # Ctrl-C / SIGTERM: continue with --resume
}


class ConfigError(ValueError):
    """A configuration problem, described in one line: what is wrong; what is allowed."""


class ErrorExit(SystemExit):
    """Raised by :func:`fail`: a ``SystemExit`` that also carries the message."""

    def __init__(self, message: str, code: int = EXIT["usage"]) -> None:
        super().__init__(code)
        self.message = message


def fail(message: str, code: int = EXIT["usage"]) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with ``code``.

    Newlines are folded so the error stays one line.
    """
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    raise ErrorExit(line, code)


def fmt(value: Any) -> str:
    """A value as the user wrote it (YAML-ish), for messages."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def typename(value: Any) -> str:
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


def _key(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith(("function-", "lax-"))))


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else fmt(v)


def _range_text(ctx: Mapping[str, Any]) -> str:
    lo = next(((k, ctx[k]) for k in ("ge", "gt") if k in ctx), None)
    hi = next(((k, ctx[k]) for k in ("le", "lt") if k in ctx), None)
    if lo and hi:
        return f"in {'[' if lo[0] == 'ge' else '('}{_num(lo[1])}, {_num(hi[1])}{']' if hi[0] == 'le' else ')'}"
    if lo:
        return f"{'>=' if lo[0] == 'ge' else '>'} {_num(lo[1])}"
    if hi:
        return f"{'<=' if hi[0] == 'le' else '<'} {_num(hi[1])}"
    return "in range"


def format_validation_error(err: Any, fields_of: Any = None) -> str:
    """The first error of a pydantic ``ValidationError`` as ``<key>: <what>; <allowed>``.

    Args:
        err: The ``ValidationError``.
        fields_of: ``fields_of(loc) -> list[str]``: the keys allowed where an unknown key
            was given (for ``extra_forbidden``).
    """
    e = err.errors(include_url=False)[0]
    kind, loc, value, ctx = e["type"], tuple(e["loc"]), e.get("input"), e.get("ctx") or {}
    key = _key(loc)
    if kind == "config":
        # Our own checks: the message names its key already.
        return str(ctx.get("message", e["msg"]))
    if kind == "config_here":
        return f"{key}: {ctx.get('message', e['msg'])}" if key else str(ctx.get("message", e["msg"]))
    if kind == "extra_forbidden":
        allowed = fields_of(loc[:-1]) if fields_of is not None else []
        return f"{key}: unknown key; allowed keys: {', '.join(allowed)}"
    if kind == "literal_error":
        choices = [c.strip().strip("'") for c in str(ctx.get("expected", "")).replace(" or ", ", ").split(",")]
        return f"{key}: unknown value {fmt(value)}; valid choices: {', '.join(c for c in choices if c)}"
    expected = {
        "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
        "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
        "bool_parsing": "true or false", "string_type": "a non-empty string",
        "dict_type": "a mapping of keys", "model_type": "a mapping of keys", "list_type": "a list",
        "model_attributes_type": "a mapping of keys",
    }.get(kind)
    if expected is not None:
        return f"{key}: got {typename(value)} {fmt(value)}; expected {expected}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        if isinstance(value, int) and not isinstance(value, bool) and "ge" in ctx and isinstance(ctx["ge"], int):
            return f"{key}: {value} is too small; must be an integer >= {ctx['ge']}"
        if isinstance(value, int) and not isinstance(value, bool) and isinstance(ctx.get("le"), int):
            return f"{key}: {value} is too large; must be <= {ctx['le']} (bounds: orchestrator/limits.py)"
        return f"{key}: {fmt(value)} is out of range; must be {_range_text(ctx)}"
    if kind == "finite_number" or (isinstance(value, float) and not math.isfinite(value)):
        return f"{key}: {fmt(value)} is not a finite number; give a finite number"
    if kind == "string_too_short":
        return f"{key}: got an empty string; expected a non-empty string"
    if kind == "missing":
        return f"{key}: missing value; it is required"
    return f"{key}: {e['msg']}; see configs/default.yaml"


def _fields_at(root: Any, loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the section of model ``root`` at ``loc`` (for unknown keys)."""
    model: Any = root
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,))
                      if isinstance(a, type) and hasattr(a, "model_fields")), None)
        if model is None:
            return []
    return list(model.model_fields)


def one_line(err: Any, root: Any) -> str:
    """A pydantic ``ValidationError`` of model ``root`` as our one-line message.

    A validator's ``ConfigError`` names its key already; another ``ValueError`` is
    relative to the field it was raised for; pydantic's own errors are formatted by
    :func:`format_validation_error`.
    """
    first = err.errors(include_url=False)[0]
    if first["type"] == "value_error":
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):
            return str(cause)
        key = _key(tuple(first["loc"]))
        return f"{key}: {cause}" if key else str(cause)
    return format_validation_error(err, lambda loc: _fields_at(root, loc))
