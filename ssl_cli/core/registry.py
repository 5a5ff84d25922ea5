"""Name -> builder registries, one per kind of pluggable part (as timm and USB do).

Each entry is a builder (a function or a class) and the `Options` class that declares what a config may
set for it; the config store, the checks and the docs read the options from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Generic, List, Optional, TypeVar

from ssl_cli.core.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: T
    options: type
    summary: str


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str):
        self.kind = kind  # e.g. "method", for messages
        self.group = group  # the config group whose options are registered here
        self._entries: Dict[str, Entry[T]] = {}

    def register(self, name: str, options: Optional[type] = None) -> Callable[[T], T]:
        """Decorator. `options` defaults to the builder's own `Options` attribute (a method class's)."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            opts = options if options is not None else getattr(obj, "Options")
            summary = ((obj.__doc__ or "").strip().splitlines() or [""])[0]
            self._entries[name] = Entry(name, obj, opts, summary)
            return obj

        return decorator

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).builder

    def options(self, name: str) -> type:
        return self.entry(name).options

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
