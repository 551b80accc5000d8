"""One generic registry for everything that is looked up by name: architectures, backends,
teachers, quantization types and exporters.

Entries are registered with a decorator and looked up with `get`; an unknown name raises
`UnknownNameError` listing what exists. Stage packages register their own entries on import;
`casseat_cli.cli` imports them so `casseat-edge list ...` shows everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from casseat_edge.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of entries (classes or objects), with aliases and a one-line description each."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def decorate(entry: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[name] = entry
            self._aliases.update({alias: name for alias in aliases})
            return entry

        return decorate

    def get(self, name: str) -> T:
        key = self._aliases.get(name, name)
        if key not in self._entries:
            known = ", ".join(self.names()) or "(none registered)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; expected one of: {known}")
        return self._entries[key]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._entries.items()))

    def describe(self) -> list[dict[str, Any]]:
        """Rows for `casseat-edge list`: name, aliases and the entry's own `describe()` or docstring."""
        rows = []
        for name, entry in self.items():
            aliases = sorted(a for a, target in self._aliases.items() if target == name)
            info = entry.describe() if hasattr(entry, "describe") else {}
            doc = (getattr(entry, "__doc__", None) or "").strip().splitlines()
            rows.append(
                {"name": name, "aliases": aliases, "summary": doc[0] if doc else "", **info}
            )
        return rows


ARCHS: Registry[Any] = Registry("architecture")
BACKENDS: Registry[Any] = Registry("backend")
TEACHERS: Registry[Any] = Registry("teacher")
QUANT: Registry[Any] = Registry("quantization type")
EXPORTERS: Registry[Any] = Registry("exporter")

REGISTRIES: dict[str, Registry[Any]] = {
    "archs": ARCHS,
    "backends": BACKENDS,
    "teachers": TEACHERS,
    "quant": QUANT,
    "exporters": EXPORTERS,
}
