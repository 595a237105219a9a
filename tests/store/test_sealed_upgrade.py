"""A store written before the seals (every row unsealed: schema 5, PostgreSQL migration 7) opened by
this version, written to and compacted: its old and new rows mixed in every read path, none taken
for damage, and every row sealed once packing has merged them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from lossproof.query import promql
from lossproof.store import chunks
from lossproof.store.sqlite import SqliteStore
from lptest.damaged_store import HOUR, SERIES, T0, batch, compact_all, points, stored
from lptest.store_backends import unseal


def _unseal_all(path: Path) -> tuple[int, int]:
    con = sqlite3.connect(path)
    try:
        n = {}
        for table in ("chunks", "parts"):
            rows = con.execute(f"SELECT id, data FROM {table}").fetchall()
            for rid, data in rows:
                con.execute(f"UPDATE {table} SET data = ? WHERE id = ?", (unseal(data), rid))
            n[table] = len(rows)
        con.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
        con.commit()
        return n["chunks"], n["parts"]
    finally:
        con.close()


def _kinds(path: Path) -> list[int]:
    con = sqlite3.connect(path)
    try:
        return sorted(k for (k,) in con.execute("SELECT DISTINCT unicode(substr(data, 1, 1)) FROM chunks"))
    finally:
        con.close()


def _rate(store: SqliteStore) -> np.ndarray:
    grid = promql.Grid(T0 + 10 * 60_000, T0 + 30 * 60_000, 60_000)
    got = promql.Evaluator(store, "t", grid).eval(promql.parse("sum(rate(m[5m]))"))
    return np.asarray(got.values if hasattr(got, "values") else got, dtype=object)


@pytest.mark.parametrize("old_parts_left", [False, True])
def test_a_store_from_before_the_seals_reads_packs_and_checks_clean(
    tmp_path: Path, old_parts_left: bool
) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    for b in range(4):
        store.write_batch(batch(b))
    if not old_parts_left:
        compact_all(store, T0 + 30 * HOUR)  # packed chunks, one per series
        store.write_batch(batch(4))
        store.compact(T0 + 30 * HOUR)  # flush: raw chunks beside them, not packed yet
    store.close()
    old_chunks, old_parts = _unseal_all(path)
    assert old_chunks or old_parts

    store = SqliteStore(path)
    assert store._meta("schema_version") == "6"
    reader = SqliteStore(path, readonly=True)
    first = 4 if old_parts_left else 5
    for b in range(first, 10):
        store.write_batch(batch(b))
    want = {str(i): points(*range(10)) for i in range(SERIES)}
    # mixed old (unsealed) and new (sealed) rows: every read path
    assert stored(reader) == want
    _rate(reader)
    for table in ("chunks", "parts"):
        assert store.check_rows(table, None, 10_000).damaged == []
    aside = compact_all(store, T0 + 30 * HOUR)
    assert aside == 0
    assert stored(reader) == want
    _rate(reader)
    for table in ("chunks", "parts"):
        assert store.check_rows(table, None, 10_000).damaged == []
    assert all(k & chunks.SEALED for k in _kinds(path)), _kinds(path)
    store.close()
    reader.close()


def test_a_postgres_store_from_before_the_seals_is_migrated_and_reads_packs_and_checks_clean(
    tmp_path: Path,
) -> None:
    import psycopg
    from psycopg import sql

    from lossproof.store.base import StoreSchemaError
    from lossproof.store.pg.migrate import migrate
    from lptest.store_backends import PostgresBackend

    backend = PostgresBackend(tmp_path)
    try:
        store = backend.open()
        for b in range(4):
            store.write_batch(batch(b))
        compact_all(store, T0 + 30 * HOUR)
        store.write_batch(batch(4))  # a part left, unsealed below
        store.close()
        with psycopg.connect(backend.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(backend.schema)))
            for table in ("chunks", "parts"):
                for rid, data in conn.execute(f"SELECT id, data FROM {table}").fetchall():
                    conn.execute(f"UPDATE {table} SET data = %s WHERE id = %s", (unseal(bytes(data)), rid))
            conn.execute("DELETE FROM schema_migrations WHERE version = 8")
        with pytest.raises(StoreSchemaError):
            backend.open().close()
        assert migrate(backend.dsn, backend.schema) == (7, 8)
        store = backend.open()
        reader = backend.open(readonly=True)
        for b in range(5, 10):
            store.write_batch(batch(b))
        want = {str(i): points(*range(10)) for i in range(SERIES)}
        assert stored(reader) == want
        for table in ("chunks", "parts"):
            assert store.check_rows(table, None, 10_000).damaged == []
        assert compact_all(store, T0 + 30 * HOUR) == 0
        assert stored(reader) == want
        for table in ("chunks", "parts"):
            assert store.check_rows(table, None, 10_000).damaged == []
        kinds = backend.fetch("SELECT DISTINCT get_byte(data, 0) FROM chunks")
        assert all(k & chunks.SEALED for (k,) in kinds), kinds
    finally:
        backend.close_all()
