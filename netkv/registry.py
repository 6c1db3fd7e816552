"""Named registries: every place where a name in an experiment file or a CLI flag selects code.

One `Registry` per kind (policies, oracles, routing strategies, placement layouts, model presets).
Entries register themselves where they are defined; the configuration checks names against the
registry and the CLI takes its choices from it, so adding an entry is one definition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered name -> entry table with errors that list what is known.

    `loader` (optional) is called once before the first lookup, for registries whose entries live in
    modules that must be imported first (the policy package)."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._order: dict[str, float] = {}
        self._loader = loader

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            loader()

    def add(self, name: str, entry: T, order: float = 0.0) -> T:
        """Register `entry` under `name`; names sort by (order, name) in `names()`."""
        if not name:
            raise TypeError(f"a {self.kind} needs a name")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} name '{name}' registered twice")
        self._entries[name] = entry
        self._order[name] = order
        return entry

    def discard(self, name: str) -> None:
        """Forget an entry (tests that register a throw-away one)."""
        self._entries.pop(name, None)
        self._order.pop(name, None)

    def register(self, name: str | None = None, order: float = 0.0) -> Callable[[T], T]:
        """Decorator form of `add`; the name defaults to the entry's `name` attribute."""

        def deco(entry: T) -> T:
            return self.add(name or str(getattr(entry, "name", "")), entry, order)

        return deco

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries, key=lambda n: (self._order[n], n))

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} '{name}' (known: {', '.join(self.names())})") from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
