"""The criterion registry (kept apart from ``__init__`` so criterion modules can import it)."""

from __future__ import annotations

from pruners.criteria.base import Criterion
from pruners.registry import Registry

CRITERIA: Registry[type[Criterion]] = Registry("criterion")


def register(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    CRITERIA.register(cls.name)(cls)
    return cls
