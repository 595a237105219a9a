"""Day partitions of ``points``: created on demand, race-free, ahead of time, and dropped by
``store.retention_days``."""

from __future__ import annotations

import threading
import time

from lossproof.store.base import Point, WriteBatch
from lossproof.store.postgres import DAY_MS, PostgresStore, _partition_name

NOW = int(time.time() * 1000)  # retention counts from the wall clock (the writer maintains by it)
TODAY = NOW // DAY_MS


def _sample(*days: int, v: float = 1.0) -> WriteBatch:
    return WriteBatch(samples=[("t", Point("m", {}, day * DAY_MS + 1000, v)) for day in days], now_ms=1)


def _count(store: PostgresStore) -> int:
    return sum(len(s.points) for s in store.query("t", "m", 0, 2**62, {}))


def test_retention_drops_old_days_and_creates_ahead(pg_dsn: str, pg_schema: str) -> None:
    store = PostgresStore(pg_dsn, schema=pg_schema, retention_days=7)
    try:
        # the first write also maintains: today's and tomorrow's partitions, and those all of
        # whose day is more than 7 days old are dropped
        store.write_batch(_sample(TODAY - 10, TODAY - 8, TODAY - 5, TODAY))
        days = {_partition_name(d) for d in store._partitions}
        assert days == {_partition_name(d) for d in (TODAY - 5, TODAY, TODAY + 1)}
        assert _count(store) == 2
        assert store.maintain() == ([], [])
        # old data arriving later is stored again, and dropped by the next maintenance
        assert store.write_batch(_sample(TODAY - 10, v=2.0)).points_written == 1
        assert _count(store) == 3
        assert store.maintain() == ([], [_partition_name(TODAY - 10)])
        assert _count(store) == 2
    finally:
        store.close()


def test_partition_dropped_behind_a_writers_back_is_recreated(pg_dsn: str, pg_schema: str) -> None:
    writer = PostgresStore(pg_dsn, schema=pg_schema)
    janitor = PostgresStore(pg_dsn, schema=pg_schema, retention_days=1)
    try:
        writer.write_batch(_sample(TODAY - 30))
        assert _partition_name(TODAY - 30) in janitor.maintain(now_ms=NOW)[1]
        # the writer still believes the partition exists: the insert fails, it looks again
        assert writer.write_batch(_sample(TODAY - 30, v=3.0)).points_written == 1
        assert _count(writer) == 1
    finally:
        writer.close()
        janitor.close()


def test_many_writers_create_the_same_new_days_at_once(pg_dsn: str, pg_schema: str) -> None:
    PostgresStore(pg_dsn, schema=pg_schema).close()
    stores = [PostgresStore(pg_dsn, schema=pg_schema, pool_size=2) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def write(i: int, store: PostgresStore) -> None:
        try:
            start.wait()
            for day in range(TODAY + 100, TODAY + 112):
                pts = [Point("m", {"w": str(i)}, day * DAY_MS + k, float(k)) for k in range(50)]
                store.write_batch(WriteBatch(samples=[("t", p) for p in pts], now_ms=1))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        assert _count(stores[0]) == 4 * 12 * 50
    finally:
        for s in stores:
            s.close()
