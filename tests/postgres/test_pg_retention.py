"""Retention of ``chunks``: ``store.retention_days`` deletes the chunks whose newest point is past
the horizon (workers every few minutes, ``store maintain`` on demand); any time is accepted, past
or future, with nothing to create ahead of it."""

from __future__ import annotations

import threading
import time

import pytest

from lossproof.store.base import Point, WriteBatch
from lossproof.store.pg import maintain as pg_maintain
from lossproof.store.postgres import DAY_MS, PostgresStore

NOW = int(time.time() * 1000)  # retention counts from the wall clock (the writer maintains by it)
TODAY = NOW // DAY_MS


def _sample(*days: int, v: float = 1.0) -> WriteBatch:
    return WriteBatch(samples=[("t", Point("m", {}, day * DAY_MS + 1000, v)) for day in days], now_ms=1)


def _days(store: PostgresStore) -> list[int]:
    return [t // DAY_MS for s in store.query("t", "m", 0, 2**62, {}) for t, _ in s.points]


def test_retention_deletes_old_data_and_keeps_the_rest(pg_dsn: str, pg_schema: str) -> None:
    store = PostgresStore(pg_dsn, schema=pg_schema, retention_days=7)
    try:
        # the first write also maintains: the points more than 7 days old are deleted (each batch
        # writes one chunk per series: here one chunk per day)
        for day in (TODAY - 10, TODAY - 8, TODAY - 5, TODAY):
            store.write_batch(_sample(day))
        store._next_maintenance = 0.0
        store.write_batch(_sample(TODAY + 1))
        assert _days(store) == [TODAY - 5, TODAY, TODAY + 1]
        assert store.maintain(now_ms=NOW)[1:] == (0, 0)  # nothing more to delete
        # old data arriving later is stored again, and deleted by the next maintenance
        assert store.write_batch(_sample(TODAY - 10, v=2.0)).points_written == 1
        assert _days(store) == [TODAY - 10, TODAY - 5, TODAY, TODAY + 1]
        done = store.maintain(now_ms=NOW)
        assert (done.chunks, done.points) == (1, 1)
        assert done.before_ms == NOW - 7 * DAY_MS
        assert _days(store) == [TODAY - 5, TODAY, TODAY + 1]
    finally:
        store.close()


def test_retention_off_deletes_nothing(pg_dsn: str, pg_schema: str) -> None:
    store = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        store.write_batch(_sample(TODAY - 3000, TODAY))
        assert store.maintain() == (None, 0, 0)
        assert _days(store) == [TODAY - 3000, TODAY]
    finally:
        store.close()


def test_retention_in_bounded_transactions(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str, pg_schema: str
) -> None:
    writer = PostgresStore(pg_dsn, schema=pg_schema)
    janitor = PostgresStore(pg_dsn, schema=pg_schema, retention_days=1)
    try:
        for k in range(7):  # one chunk per batch
            writer.write_batch(
                WriteBatch(samples=[("t", Point("m", {"k": str(k)}, (TODAY - 30) * DAY_MS + k, 1.0))])
            )
        monkeypatch.setattr(pg_maintain, "RETENTION_CHUNKS", 2)
        assert janitor.maintain(now_ms=NOW)[1:] == (7, 7)
        assert _days(writer) == []
    finally:
        writer.close()
        janitor.close()


def test_data_deleted_behind_a_writers_back_is_written_again(pg_dsn: str, pg_schema: str) -> None:
    writer = PostgresStore(pg_dsn, schema=pg_schema)
    janitor = PostgresStore(pg_dsn, schema=pg_schema, retention_days=1)
    try:
        writer.write_batch(_sample(TODAY - 30))
        assert janitor.maintain(now_ms=NOW).chunks == 1
        # the point is gone: the same point arriving again is new
        assert writer.write_batch(_sample(TODAY - 30, v=3.0)).points_written == 1
        assert _days(writer) == [TODAY - 30]
    finally:
        writer.close()
        janitor.close()


def test_many_writers_write_far_past_and_future_days_at_once(pg_dsn: str, pg_schema: str) -> None:
    PostgresStore(pg_dsn, schema=pg_schema).close()
    stores = [PostgresStore(pg_dsn, schema=pg_schema, pool_size=2) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def write(i: int, store: PostgresStore) -> None:
        try:
            start.wait()
            for day in [*range(TODAY + 100, TODAY + 106), *range(-3, 3), 2_900_000]:
                pts = [Point("m", {"w": str(i)}, day * DAY_MS + k, float(k)) for k in range(50)]
                res = store.write_batch(WriteBatch(samples=[("t", p) for p in pts], now_ms=1))
                assert res.points_written == 50
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        got = stores[0].query("t", "m", -(2**62), 2**62, {})
        assert sum(len(s.points) for s in got) == 4 * 13 * 50
    finally:
        for s in stores:
            s.close()
