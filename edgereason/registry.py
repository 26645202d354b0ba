"""One typed registry per kind of plug-in (backends, rewards), after lm-eval's `Registry`.

A registry maps a name to an entry (a frozen dataclass describing the plug-in: what it loads, what
it can do, its config section or its range). It is the one source of the names: configs validate
against it, CLIs list their choices from it and the docs tables are rendered from it, so a plug-in
registered from outside the package is accepted everywhere the built-in ones are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownEntryError(KeyError, ValueError):
    """A name no entry is registered under; the message lists the registered ones.

    A ValueError too, so a pydantic validator that looks a name up reports it as a config error."""

    def __str__(self) -> str:  # KeyError quotes its argument; this one is a sentence
        return str(self.args[0])


class Registry(Generic[T]):
    """Named entries of one kind, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Add `entry` under `name`; a name already taken is an error unless `replace`."""
        if not name or not name.strip():
            raise ValueError(f"a {self.kind} needs a name")
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True to override it)")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownEntryError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}") from None

    def names(self, where: Callable[[T], bool] | None = None) -> list[str]:
        """Registered names, optionally only those whose entry satisfies `where`."""
        return [n for n, e in self._entries.items() if where is None or where(e)]

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
