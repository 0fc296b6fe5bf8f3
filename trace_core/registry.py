"""Name -> implementation registries for allocators, advantage estimators, backends and retrievers.

Variants of the method are chosen by name in settings; this module is the single place that maps a
name to the code. Registering a name twice is a programming error and raises; asking for an unknown
name raises with the list of valid names, so a typo in settings is a one-line fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """An unregistered name was asked for; the message lists the valid names."""


class Registry(Generic[T]):
    """A named collection of implementations of one kind (e.g. "allocator")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering `obj` under `name`; a second registration of the name raises."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Remove `name` (e.g. a plugin unloaded, or a test's temporary variant); unknown names raise."""
        self.get(name)
        del self._items[name]

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none registered)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
