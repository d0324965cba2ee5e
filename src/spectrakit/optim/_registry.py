"""Registered objects by name (directions, transforms), with errors that name the argument selecting them."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):  # type: ignore[type-arg]
    """name -> object of type ``kind``; ``key`` is the argument that selects one (for error messages)."""

    def __init__(self, kind: type, key: str) -> None:
        super().__init__()
        self.kind, self.key = kind, key

    def register(self, item: T) -> T:
        """Add (or replace) ``item`` under ``item.name``; returns it."""
        if not isinstance(item, self.kind):
            raise TypeError(f"register needs a {self.kind.__name__}, got {type(item).__name__}")
        self[item.name] = item  # type: ignore[attr-defined]
        return item

    def named(self, name: object, key: str | None = None) -> T:
        """The object registered as ``name``; ValueError naming ``key`` and the registered names otherwise."""
        if name not in self:
            raise ValueError(f"{key or self.key} must be one of {tuple(self)}, got {name!r}")
        return self[name]
