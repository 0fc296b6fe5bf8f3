"""Name -> implementation registries for allocators, advantage estimators, backends and retrievers.

Variants of the method are chosen by name in settings; this module is the single place that maps a
name to the code. Registering a name twice is a programming error and raises; asking for an unknown
name raises with the list of valid names, so a typo in settings is a one-line fix.

A name can also be declared with the module that registers it (`declare`): it is listed and
validated at once, and its module (with torch, transformers and the like) is imported only when
the implementation is first asked for, so reading settings or the database stays light.
"""

from __future__ import annotations

import importlib
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
        self._declared: dict[str, str] = {}  # name -> the module whose import registers it

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering `obj` under `name`; a second registration of the name raises."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add

    def declare(self, name: str, module: str) -> None:
        """`name` is registered by importing `module`, done on the first `get(name)`."""
        if name in self._items or name in self._declared:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._declared[name] = module

    def unregister(self, name: str) -> None:
        """Remove `name` (e.g. a plugin unloaded, or a test's temporary variant); unknown names raise."""
        self.get(name)
        del self._items[name]
        self._declared.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items and name in self._declared:
            importlib.import_module(self._declared[name])
            if name not in self._items:
                raise RuntimeError(f"{self._declared[name]} did not register {self.kind} {name!r}")
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(self.names()) or "(none registered)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._items.keys() | self._declared.keys())

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._declared
