"""Config files: read YAML, apply ``--set`` overrides, validate; the JSON Schema of a file.

``load_config(path, overrides)`` is what the command line calls; every problem is a
``ConfigError`` of one line (``orchestrator.errors``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import SearchConfig
from orchestrator.errors import ConfigError, typename

__all__ = ["apply_overrides", "json_schema", "load_config", "read_yaml"]


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
        raise ConfigError(f"{p.name}: the top level is {typename(raw)}; it must be a mapping of keys (see configs/default.yaml)")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a copy of ``raw``.

    Raises:
        ConfigError: an override that is not ``KEY=VALUE`` or goes through a non-mapping.
    """
    out = copy.deepcopy(raw)
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
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is {typename(child)}, not a section; set it directly")
            node = child
        node[parts[-1]] = value
    return out


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | tuple[str, ...] = ()) -> SearchConfig:
    """Read ``path`` (None = all defaults), apply ``--set`` overrides, validate."""
    raw = read_yaml(path) if path is not None else {}
    return SearchConfig.from_dict(apply_overrides(raw, list(overrides)))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file (``--schema``, ``configs/schema.json``)."""
    from orchestrator.steps import schedule_params_schema

    schema = SearchConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Prunefront search config"
    search = schema["$defs"]["SearchSettings"]["properties"]
    search["schedule_params"] = schedule_params_schema()
    return schema
