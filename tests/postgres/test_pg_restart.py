"""PostgreSQL restarted under two writer processes (``pg_ctl restart -m fast``, then ``-m
immediate``: a crash and recovery): the writers get StoreUnavailable, retry the same batch and go
on; every batch they saw committed is stored, nothing is stored twice or half."""

from __future__ import annotations

import time

from lossproof.store.postgres import PostgresStore
from lptest.pg_cluster import PgCluster
from lptest.pg_harness import Writer, check_store, parse_ok


def _progress(writers: list[Writer], more: int, timeout: float = 60) -> None:
    """Wait until every writer committed ``more`` more batches."""
    start = [w.oks() for w in writers]
    deadline = time.monotonic() + timeout
    while any(w.oks() < s + more for w, s in zip(writers, start, strict=True)):
        assert time.monotonic() < deadline, [w.lines[-5:] for w in writers]
        for w in writers:
            assert w.proc.poll() is None, f"writer died: {w.lines[-5:]}"
        time.sleep(0.05)


def test_writers_survive_fast_and_immediate_restarts(own_cluster: PgCluster) -> None:
    dsn = own_cluster.dsn()
    PostgresStore(dsn).close()
    writers = [Writer(dsn, "lossproof", 1), Writer(dsn, "lossproof", 2)]
    try:
        _progress(writers, 5)
        own_cluster.restart("fast")
        _progress(writers, 5)
        own_cluster.restart("immediate")
        _progress(writers, 5)
    finally:
        for w in writers:
            w.kill()
    lines = [line for w in writers for line in w.lines]
    retries = sum(1 for line in lines if line.startswith("retry"))
    assert retries > 0, "the restarts went unnoticed: the test did not test anything"
    print(sorted({line[:160] for line in lines if line.startswith("retry")}))
    acked, reported = parse_ok(lines)
    store = PostgresStore(dsn)
    try:
        check_store(store, acked, reported)
    finally:
        store.close()
