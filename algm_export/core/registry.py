"""A registry whose entries are registered by modules imported on first use (families, formats).

    FAMILIES = LazyRegistry("algm_export.models.families", ("segmenter", "setr"))
    FAMILIES.register("segmenter", entry)     # in models/families/segmenter.py, at import
    FAMILIES.entries()                        # imports the modules once; entries in the modules' order
"""

from __future__ import annotations

import importlib
import sys
from typing import Generic, Iterable, TypeVar

T = TypeVar("T")


class LazyRegistry(Generic[T]):
    def __init__(self, package: str, modules: Iterable[str]):
        self.package = package
        self.modules = tuple(modules)
        self._entries: dict[str, tuple[int, T]] = {}
        self._loaded = False

    def register(self, name: str, entry: T, depth: int = 1) -> T:
        """Add `entry` under `name`; its place in `entries()` is the place in `modules` of the module
        that registers it (`depth` frames up: 1 = the caller, 2 = the caller's caller for a wrapper)."""
        module = sys._getframe(depth).f_globals.get("__name__", "")
        short = module[len(self.package) + 1:] if module.startswith(self.package + ".") else module
        rank = self.modules.index(short) if short in self.modules else len(self.modules)
        self._entries[name] = (rank, entry)
        return entry

    def entries(self) -> dict[str, T]:
        if not self._loaded:
            self._loaded = True
            for name in self.modules:
                importlib.import_module(f"{self.package}.{name}")
        ranked = sorted(self._entries.items(), key=lambda kv: kv[1][0])
        return {name: entry for name, (_, entry) in ranked}
