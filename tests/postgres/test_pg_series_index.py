"""The series index on PostgreSQL (``lossproof/store/series_index.py``, ``sync_pg``): workers create
series in concurrent transactions, so a series row can become visible after one with a higher id. The
index must still see it, however soon its lower bound would otherwise move past it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from lossproof.store import series_index
from lossproof.store.base import Matcher, Store
from lptest.store_backends import PostgresBackend


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[PostgresBackend]:
    b = PostgresBackend(tmp_path)
    yield b
    b.close_all()


def _insert(conn: psycopg.Connection, metric: str) -> None:
    labels = '{"k":"v"}'
    conn.execute(
        "INSERT INTO series (tenant, metric, labels_json, labels_hash) VALUES ('t1', %s, %s, %s)",
        (metric, labels, hashlib.sha256(labels.encode()).digest()),
    )


def _connect(b: PostgresBackend) -> psycopg.Connection:
    conn = psycopg.connect(b.dsn)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(b.schema)))
    conn.commit()
    return conn


def _metrics(store: Store) -> list[str]:
    return [m for m, _ in store.series("t1", [Matcher("k", "=", "v")])]


LAG = series_index.PG_SAFE_LAG_SECONDS


@pytest.mark.parametrize(("lag", "recount"), [(0.0, 0.0), (LAG, 0.0), (0.0, 600.0)])
def test_a_series_committed_after_a_higher_id_is_seen(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch, lag: float, recount: float
) -> None:
    """``recount`` 0: the backstop count runs at every refresh too, and must agree (no reload)."""
    monkeypatch.setattr(series_index, "PG_SAFE_LAG_SECONDS", lag)
    monkeypatch.setattr(series_index, "PG_RECOUNT_SECONDS", recount)
    reloads: list[object] = []
    monkeypatch.setattr(series_index.SeriesIndex, "reset", lambda self: reloads.append(self) or _reset(self))
    backend.open()  # creates the schema
    reader = backend.open(readonly=True)
    assert _metrics(reader) == []
    early, late = _connect(backend), _connect(backend)
    try:
        _insert(early, "early")  # takes the lower id, not committed yet
        _insert(late, "late")
        late.commit()
        assert _metrics(reader) == ["late"]
        assert _metrics(reader) == ["late"]  # a second refresh while "early" is still open
        early.commit()
        assert _metrics(reader) == ["early", "late"]
        _insert(late, "later")
        late.commit()
        assert _metrics(reader) == ["early", "late", "later"]
        assert reader.label_values("t1", "__name__") == ["early", "late", "later"]
    finally:
        early.close()
        late.close()
    assert not reloads


_reset = series_index.SeriesIndex.reset


def test_a_schema_made_again_is_read_again(backend: PostgresBackend) -> None:
    """Dropped and migrated anew under the same name (a test, an operator starting over): the ids
    start again, and the index must not keep the old table's series."""
    writer = backend.open()
    reader = backend.open(readonly=True)
    conn = _connect(backend)
    try:
        _insert(conn, "old")
        conn.commit()
        assert _metrics(reader) == ["old"]
        writer.close()
        backend.opened.remove(writer)
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(backend.schema)))
        conn.commit()
        backend.open()  # migrates the schema again
        _insert(conn, "new")
        conn.commit()
        assert _metrics(reader) == ["new"]
    finally:
        conn.close()


def test_a_lower_id_committed_while_a_refresh_reads_is_seen(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer holding a lower id commits between a refresh's read of the ids and the snapshot it
    then takes: that snapshot's xmin is past the writer, but the ids read did not show its row. The
    bound must not move past it on that snapshot (the series was left out until the backstop
    count, 10 minutes later)."""
    monkeypatch.setattr(series_index, "PG_SAFE_LAG_SECONDS", 0.0)
    monkeypatch.setattr(series_index, "PG_RECOUNT_SECONDS", 600.0)
    backend.open()  # creates the schema
    reader, early, late = _connect(backend), _connect(backend), _connect(backend)
    reader.autocommit = True  # a statement, a snapshot: as a READ COMMITTED read transaction
    index = series_index.SeriesIndex()
    try:
        _insert(early, "early")  # takes the lower id, not committed yet
        _insert(late, "late")
        late.commit()
        index.sync_pg(reader.execute)

        def execute(query: str, *args: object) -> psycopg.Cursor[tuple[object, ...]]:
            cur = reader.execute(query, *args)  # type: ignore[arg-type]
            if "FROM series WHERE id >" in query:
                early.commit()  # right after the ids were read
            return cur

        index.sync_pg(execute)
        index.sync_pg(reader.execute)
        t = index.tenant("t1")
        assert t is not None
        assert sorted(t.metrics) == ["early", "late"]
    finally:
        reader.close()
        early.close()
        late.close()


def test_a_series_inserted_after_waiting_on_an_aborted_writer_is_seen(backend: PostgresBackend) -> None:
    """Two workers store one new series at once: the second draws its id, then waits on the first's
    uncommitted row (ON CONFLICT), with no transaction id of its own yet. The first rolls back (a
    failed or killed batch): the second inserts the row under the id it drew long before and only
    now gets a transaction id, newer than the snapshots that saw higher ids since. The bound must
    not move past that id while the second is still open."""
    import threading
    import time

    from lossproof.store.base import SeriesSamples, WriteBatch

    writer = backend.open()  # creates the schema
    inserted, go = threading.Event(), threading.Event()
    new_part = writer._new_part  # type: ignore[attr-defined]

    def held(*args: object) -> object:
        inserted.set()
        assert go.wait(30)
        return new_part(*args)

    writer._new_part = held  # type: ignore[attr-defined]
    reader, early, late = _connect(backend), _connect(backend), _connect(backend)
    reader.autocommit = True
    index = series_index.SeriesIndex()
    batch = WriteBatch(series=[("t1", SeriesSamples("m", {"k": "v"}, [1_700_000_000_000], [1.0]))], now_ms=0)
    worker = threading.Thread(target=writer.write_batch, args=(batch,))
    try:
        _insert(early, "m")  # the same series, not committed yet
        worker.start()
        deadline = time.monotonic() + 10
        while not reader.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        _insert(late, "late")  # a higher id, committed
        late.commit()
        index.sync_pg(reader.execute)
        early.rollback()
        assert inserted.wait(10)  # the worker's row is in, its transaction still open
        time.sleep(series_index.PG_SAFE_LAG_SECONDS + 0.1)  # the lag does not cover it
        index.sync_pg(reader.execute)
        go.set()
        worker.join(10)
        index.sync_pg(reader.execute)
        t = index.tenant("t1")
        assert t is not None
        assert sorted(t.metrics) == ["late", "m"]
    finally:
        go.set()
        worker.join(10)
        reader.close()
        early.close()
        late.close()


def test_a_table_emptied_and_restored_in_place_is_read_again(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data-only restore into the live schema (TRUNCATE, rows copied back with their ids, the
    sequence set back), then new series: the table is the same one (same oid) but its ids now name
    other series. The index must not answer the series the restore removed."""
    monkeypatch.setattr(series_index, "PG_SAFE_LAG_SECONDS", 0.0)
    backend.open()  # creates the schema
    reader = backend.open(readonly=True)
    conn = _connect(backend)
    try:
        for i in range(5):
            _insert(conn, f"s{i}")
        conn.commit()
        assert _metrics(reader) == [f"s{i}" for i in range(5)]
        assert _metrics(reader) == [f"s{i}" for i in range(5)]  # the bound is past them now
        kept = conn.execute(
            "SELECT id, tenant, metric, labels_json, labels_hash FROM series WHERE id <= 2"
        ).fetchall()
        conn.execute("TRUNCATE series CASCADE")
        for row in kept:
            conn.execute("INSERT INTO series VALUES (%s, %s, %s, %s, %s)", row)
        conn.execute("SELECT setval(pg_get_serial_sequence('series', 'id'), 2)")
        for i in range(4):
            _insert(conn, f"n{i}")
        conn.commit()
        assert _metrics(reader) == ["n0", "n1", "n2", "n3", "s0", "s1"]
    finally:
        conn.close()
