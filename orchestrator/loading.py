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

__all__ = ["StrictLoader", "apply_overrides", "json_schema", "load_config", "read_yaml"]


class _Refused(yaml.YAMLError):
    """A construct :class:`StrictLoader` refuses, at ``line`` (1-based)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases and duplicate keys.

    Aliases (``&a`` / ``*a``) are refused: nine nested levels of them expand a few lines
    into billions of nodes (an "alias bomb"), and a config has no need for them. A key
    given twice in one mapping (two ``search:`` blocks) is refused instead of the last
    one silently winning, as Kubernetes' strict decoding and ruamel.yaml do.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            what = f"alias *{anchor}" if isinstance(event, yaml.AliasEvent) else f"anchor &{anchor}"
            key = f"key {index.value!r}: " if isinstance(index, yaml.ScalarNode) else ""
            raise _Refused(event.start_mark.line + 1, f"{key}{what}; YAML anchors and aliases are not allowed "
                           "in a config (they can expand without bound): write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.setdefault(key, line)
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
                if first != line:
                    raise _Refused(line, f"duplicate key {key!r} (first given at line {first}); keep one")
        return super().construct_mapping(node, deep=deep)


def _safe_load(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


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
        raw = _safe_load(text)
    except _Refused as e:
        raise ConfigError(f"{p.name}: line {e.line}: {e.message}") from None
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
            value = _safe_load(text) if text.strip() else None
        except _Refused as e:
            raise ConfigError(f"--set {item!r}: {e.message}") from None
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
