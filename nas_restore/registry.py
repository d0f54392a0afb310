"""One registry pattern for everything found by name: operations, spaces, strategies, references.

A :class:`Registry` maps names to entries, refuses a name registered twice, and answers an unknown
name with :class:`~nas_restore.errors.UnknownNameError` (the known names and a "did you mean").
A registry whose built-in entries live in other modules gets a ``load`` callable that imports them
(cached by Python's import system, so it is cheap to call on every lookup).
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from nas_restore.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, e.g. ``Registry[OpSpec]("operation", listing="nas-restore ops")``."""

    def __init__(self, kind: str, listing: str | None = None, load: Callable[[], None] | None = None):
        self.kind = kind
        self.listing = listing
        self._load = load
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, replace: bool = False) -> T:
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered; pick another name")
        self._entries[name] = entry
        return entry

    def lookup(self, name: str, extra: str = "") -> T:
        """The entry of ``name``; :class:`UnknownNameError` (with suggestions) if there is none."""
        entry = self.find(name)
        if entry is None:
            raise UnknownNameError(self.kind, name, self.names(), self.listing, extra)
        return entry

    __getitem__ = lookup

    def get(self, name: str, default: T | None = None) -> T | None:
        """Dict-like: the entry of ``name``, or ``default``."""
        entry = self.find(name)
        return default if entry is None else entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` if it is registered (a test's or a session's own entry)."""
        self._entries.pop(name, None)

    def __setitem__(self, name: str, entry: T) -> None:  # dict-like, so that pytest's monkeypatch.setitem works
        self.register(name, entry, replace=True)

    def __delitem__(self, name: str) -> None:
        self.unregister(name)

    def find(self, name: str) -> T | None:
        """The entry of ``name``, or None."""
        self._ensure_loaded()
        return self._entries.get(name)

    def names(self) -> list[str]:
        """Names in registration order."""
        self._ensure_loaded()
        return list(self._entries)

    def values(self) -> list[T]:
        self._ensure_loaded()
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    def _ensure_loaded(self) -> None:
        if self._load is not None:
            self._load()


__all__ = ["Registry"]
