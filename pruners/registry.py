"""A small string-keyed registry, the pattern every pluggable part of Prunefront uses.

Ray Tune searches over plain strings (``tune.choice(list_criteria())``), so every
criterion, schedule, threshold rule and model is registered under the string that
a search space names. Looking up an unknown name raises ``ValueError`` listing the
valid choices, so a typo in a config fails at once with a useful message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (classes, factories or functions).

    Args:
        kind: What is registered, used in error messages ("criterion", "schedule").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name``."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def check_choice(kind: str, value: object, choices: "list[str] | tuple[str, ...]") -> None:
    """Raise ``ValueError`` naming the valid choices unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")
