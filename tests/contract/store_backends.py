"""Backends for the store contract suite (``test_store_contract.py``).

Everything backend-specific lives here: how to open a store (writer or readonly reader) on a fresh,
empty database and how to clean up. A PostgreSQL backend adds a class (e.g. a fresh schema per test
on a server named by an environment variable, skipping when none is configured) and an entry in
``BACKENDS``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path

from lossproof.store.base import Store


class StoreBackend(abc.ABC):
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.opened: list[Store] = []

    def open(self, *, readonly: bool = False) -> Store:
        """A store on this test's database; every call opens a new handle on the same data."""
        store = self._open(readonly)
        self.opened.append(store)
        return store

    @abc.abstractmethod
    def _open(self, readonly: bool) -> Store: ...

    def close_all(self) -> None:
        for s in self.opened:
            s.close()
        self.opened.clear()


class SqliteBackend(StoreBackend):
    def _open(self, readonly: bool) -> Store:
        from lossproof.store.sqlite import SqliteStore

        return SqliteStore(self.tmp_path / "store.db", readonly=readonly)


BACKENDS: dict[str, Callable[[Path], StoreBackend]] = {
    "sqlite": SqliteBackend,
}
