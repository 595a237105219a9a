"""Backends for the store contract suite (``test_store_contract.py``).

Everything backend-specific lives here: how to open a store (writer or readonly reader) on a fresh,
empty database and how to clean up. A PostgreSQL backend adds a class (e.g. a fresh schema per test
on a server named by an environment variable, skipping when none is configured) and an entry in
``BACKENDS``.
"""

from __future__ import annotations

import abc
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lossproof.store.base import Store
from lptest import require


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

    @abc.abstractmethod
    def child_args(self) -> list[str]:
        """How another process opens the same store: ``store_in_child`` below takes these."""

    def close_all(self) -> None:
        for s in self.opened:
            s.close()
        self.opened.clear()

    @abc.abstractmethod
    def damage_first(self, table: str, at: int | None = None, unsealed: bool = False) -> None:
        """Flip a bit of the oldest row's data in ``table`` (``chunks``, ``parts``), at byte ``at``
        or in the middle (a bad sector, a bit flip). ``unsealed``: the row is first made what a
        lossproof from before checksums wrote (its seal taken off: chunks, "Sealed"), so that what
        finds the damage is the structural checks, not the checksum."""

    @abc.abstractmethod
    def rewrite(self, table: str, rid: int, data: bytes) -> None:
        """Set the data of row ``rid`` of ``table`` (a damage made to measure)."""

    @abc.abstractmethod
    def execute(self, statement: str) -> None:
        """Run ``statement`` (plain SQL both databases take) on this test's database and commit it,
        outside any store handle (what another process, or an operator, does)."""

    @abc.abstractmethod
    def fetch(self, query: str) -> list[tuple[Any, ...]]:
        """The rows of ``query`` (plain SQL both databases take; no parameters) on this test's
        database, outside any store handle (a blob as ``bytes``)."""


class SqliteBackend(StoreBackend):
    def _open(self, readonly: bool) -> Store:
        from lossproof.store.sqlite import SqliteStore

        return SqliteStore(self.tmp_path / "store.db", readonly=readonly)

    def child_args(self) -> list[str]:
        return ["sqlite", str(self.tmp_path / "store.db")]

    def damage_first(self, table: str, at: int | None = None, unsealed: bool = False) -> None:
        import sqlite3

        con = sqlite3.connect(self.tmp_path / "store.db")
        try:
            rid, data = con.execute(f"SELECT id, data FROM {table} ORDER BY id LIMIT 1").fetchone()
            con.execute(f"UPDATE {table} SET data = ? WHERE id = ?", (_flipped(data, at, unsealed), rid))
            con.commit()
        finally:
            con.close()

    def rewrite(self, table: str, rid: int, data: bytes) -> None:
        import sqlite3

        con = sqlite3.connect(self.tmp_path / "store.db")
        try:
            con.execute(f"UPDATE {table} SET data = ? WHERE id = ?", (data, rid))
            con.commit()
        finally:
            con.close()

    def execute(self, statement: str) -> None:
        import sqlite3

        con = sqlite3.connect(self.tmp_path / "store.db")
        try:
            con.execute(statement)
            con.commit()
        finally:
            con.close()

    def fetch(self, query: str) -> list[tuple[Any, ...]]:
        import sqlite3

        con = sqlite3.connect(self.tmp_path / "store.db")
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()


def postgres_dsn() -> str:
    """``LOSSPROOF_TEST_PG_DSN`` if set, else a throwaway local cluster (skips if PostgreSQL is not
    installed: ``scripts/deps/postgres.sh`` installs it)."""
    dsn = os.environ.get("LOSSPROOF_TEST_PG_DSN")
    if dsn:
        return dsn
    from lptest.pg_cluster import available, shared_cluster

    require(available(), "PostgreSQL (or LOSSPROOF_TEST_PG_DSN)")
    return shared_cluster().dsn()


class PostgresBackend(StoreBackend):
    """A fresh schema per test, dropped afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.dsn = postgres_dsn()
        self.schema = "contract_" + uuid.uuid4().hex[:12]

    def _open(self, readonly: bool) -> Store:
        from lossproof.store.postgres import PostgresStore

        return PostgresStore(self.dsn, readonly=readonly, schema=self.schema, pool_size=2)

    def child_args(self) -> list[str]:
        return ["postgres", self.dsn, self.schema]

    def damage_first(self, table: str, at: int | None = None, unsealed: bool = False) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            name = sql.Identifier(self.schema, table)
            q = sql.SQL("SELECT id, data FROM {} ORDER BY id LIMIT 1").format(name)
            row = conn.execute(q).fetchone()
            assert row is not None
            u = sql.SQL("UPDATE {} SET data = %s WHERE id = %s").format(name)
            conn.execute(u, (_flipped(bytes(row[1]), at, unsealed), row[0]))

    def rewrite(self, table: str, rid: int, data: bytes) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            u = sql.SQL("UPDATE {} SET data = %s WHERE id = %s").format(sql.Identifier(self.schema, table))
            conn.execute(u, (data, rid))

    def execute(self, statement: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            conn.execute(statement.encode())

    def fetch(self, query: str) -> list[tuple[Any, ...]]:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            rows = conn.execute(query).fetchall()
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]

    def close_all(self) -> None:
        super().close_all()
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))


def unseal(data: bytes) -> bytes:
    """A sealed chunk or part as a lossproof from before checksums wrote it."""
    from lossproof.store import chunks

    assert data[0] & chunks.SEALED, "not sealed"
    return bytes((data[0] & ~chunks.SEALED,)) + data[1:-4]


def _flipped(data: bytes, at: int | None, unsealed: bool) -> bytes:
    d = bytearray(unseal(data) if unsealed else data)
    if at is None:
        d[len(d) // 2] ^= 0xFF
    else:
        d[at] ^= 0x40
    return bytes(d)


BACKENDS: dict[str, Callable[[Path], StoreBackend]] = {
    "sqlite": SqliteBackend,
    "postgres": PostgresBackend,
}


def store_in_child(args: list[str]) -> Store:
    """Open the store named by :meth:`StoreBackend.child_args` (in a child process)."""
    if args[0] == "sqlite":
        from lossproof.store.sqlite import SqliteStore

        return SqliteStore(Path(args[1]))
    from lossproof.store.postgres import PostgresStore

    return PostgresStore(args[1], schema=args[2], pool_size=1)
