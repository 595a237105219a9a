"""A store written before the seals (every row unsealed: schema 5, PostgreSQL migration 7) opened by
this version, written to and compacted: its old and new rows mixed in every read path, none taken
for damage, and every row sealed once packing has merged them."""

from __future__ import annotations

import pytest

from lossproof.query import promql
from lossproof.store import chunks
from lossproof.store.base import CHECKED_TABLES, Store, StoreSchemaError
from lptest.damaged_store import HOUR, SERIES, T0, batch, compact_all, points, stored
from lptest.store_backends import PostgresBackend, SqliteBackend, StoreBackend, unseal


def _as_before_the_seals(backend: StoreBackend) -> int:
    """Every row unsealed and the version set back, as a lossproof from before left it; the rows."""
    rows = 0
    for table in CHECKED_TABLES:
        for rid, data in backend.fetch(f"SELECT id, data FROM {table}"):
            backend.rewrite(table, int(rid), unseal(bytes(data)))
            rows += 1
    if isinstance(backend, SqliteBackend):
        backend.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    else:
        backend.execute("DELETE FROM schema_migrations WHERE version = 8")
    return rows


def _upgraded(backend: StoreBackend) -> None:
    """The upgrade: the embedded store's writer does it when it opens the store; PostgreSQL's is
    refused until `lossproof store migrate`."""
    if isinstance(backend, PostgresBackend):
        from lossproof.store.pg.migrate import migrate

        with pytest.raises(StoreSchemaError):
            backend.open().close()
        assert migrate(backend.dsn, backend.schema) == (7, 8)
    else:
        backend.open().close()
        assert backend.fetch("SELECT value FROM meta WHERE key = 'schema_version'") == [("6",)]


def _rate(store: Store) -> None:
    grid = promql.Grid(T0 + 10 * 60_000, T0 + 30 * 60_000, 60_000)
    promql.Evaluator(store, "t", grid).eval(promql.parse("sum(rate(m[5m]))"))


@pytest.mark.parametrize("old_parts_left", [False, True])
def test_a_store_from_before_the_seals_reads_packs_and_checks_clean(
    backend: StoreBackend, old_parts_left: bool
) -> None:
    store = backend.open()
    for b in range(4):
        store.write_batch(batch(b))
    if not old_parts_left:
        compact_all(store, T0 + 30 * HOUR)  # packed chunks, one per series
        store.write_batch(batch(4))
        store.compact(T0 + 30 * HOUR)  # flush: raw chunks beside them, not packed yet
    store.close()
    assert _as_before_the_seals(backend)
    _upgraded(backend)

    store = backend.open()
    reader = backend.open(readonly=True)
    for b in range(4 if old_parts_left else 5, 10):
        store.write_batch(batch(b))
    want = {str(i): points(*range(10)) for i in range(SERIES)}
    # mixed old (unsealed) and new (sealed) rows, through every read path, twice: as written, then
    # after packing has merged them
    for packed in (False, True):
        if packed:
            assert compact_all(store, T0 + 30 * HOUR) == 0  # nothing set aside
        assert stored(reader) == want
        _rate(reader)
        for table in CHECKED_TABLES:
            assert store.check_rows(table, None, 10_000).damaged == []
    kinds = {bytes(d)[0] for (d,) in backend.fetch("SELECT data FROM chunks")}
    assert kinds and all(k & chunks.SEALED for k in kinds), kinds
