"""Failures of the PostgreSQL store: start-up errors are one clear line from the real CLI; data
the database refuses is a plain StoreError (the worker dead-letters it), never StoreUnavailable
(which the worker retries forever); lost connections are StoreUnavailable and heal."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from lossproof import config as config_mod
from lossproof.log.embedded import EmbeddedLogReader, EmbeddedLogWriter
from lossproof.protocol import native
from lossproof.store.base import Point, ReportWrite, StoreUnavailable, WriteBatch
from lossproof.store.postgres import PostgresStore
from lossproof.worker.loop import Worker
from lptest.pg_cluster import PgCluster, free_port

T0 = 1_767_225_600_000


def _worker_start_error(tmp_path: Path, dsn: str) -> tuple[int, str]:
    d = tmp_path / "data"
    if not d.exists():
        config_mod.init_data_dir(d, "lp_test_key")
    env = {
        **os.environ,
        "LOSSPROOF_STORE_BACKEND": "postgres",
        "LOSSPROOF_STORE_DSN": dsn,
        "LOSSPROOF_STORE_CONNECT_TIMEOUT_SECONDS": "3",
    }
    r = subprocess.run(
        [sys.executable, "-m", "lossproof", "worker", "--data-dir", str(d)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return r.returncode, r.stderr


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("syntax", "store.dsn is not a valid PostgreSQL connection string"),
        ("password", 'password authentication failed for user "lossproof"'),
        ("database", 'database "no_such_db" does not exist'),
    ],
)
def test_worker_start_up_errors_are_one_line(
    tmp_path: Path, pg_cluster: PgCluster, case: str, expect: str
) -> None:
    dsn = {
        "syntax": "host=127.0.0.1 this is not a dsn",
        "password": pg_cluster.dsn(password="wrong"),
        "database": pg_cluster.dsn(database="no_such_db"),
    }[case]
    code, stderr = _worker_start_error(tmp_path, dsn)
    assert code != 0
    assert "Traceback" not in stderr, stderr
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1, stderr
    assert expect in lines[0] and "PostgreSQL" in lines[0]
    assert "wrong" not in lines[0]  # never a password in a message


def test_a_worker_waits_for_a_server_that_is_down(tmp_path: Path) -> None:
    """Not a setup problem (a reboot can bring PostgreSQL up after lossproof): the worker says why,
    one line an attempt, and waits, rather than exiting (docs/postgres.md, Failures)."""
    d = tmp_path / "data"
    config_mod.init_data_dir(d, "lp_test_key")
    env = {
        **os.environ,
        "LOSSPROOF_STORE_BACKEND": "postgres",
        "LOSSPROOF_STORE_DSN": f"postgresql://lossproof:wrong@127.0.0.1:{free_port()}/lossproof_test",
        "LOSSPROOF_LOG_FORMAT": "json",
    }
    argv = [sys.executable, "-m", "lossproof", "worker", "--data-dir", str(d)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        waits = []
        while len(waits) < 2:
            line = proc.stderr.readline()
            assert line, f"the worker exited ({proc.wait()})"
            event = json.loads(line)
            if event["event"] == "worker.store_unavailable":
                waits.append(event)
        assert all("Connection refused" in e["error"] and "wrong" not in e["error"] for e in waits)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_data_errors_are_not_unavailable(pg_dsn: str, pg_schema: str) -> None:
    store = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        bad = [
            # a key too large for a b-tree entry (index row size; incompressible)
            WriteBatch(samples=[("t1", Point(os.urandom(6000).hex(), {}, T0, 1.0))], now_ms=1),
            # a time outside int64
            WriteBatch(samples=[("t1", Point("m", {}, 2**63 + 5, 1.0))], now_ms=1),
            # not a number
            WriteBatch(reports=[ReportWrite("t1", "a", 1, [Point("m", {}, T0, "x")])], now_ms=1),  # type: ignore[arg-type]
        ]
        for b in bad:
            with pytest.raises(Exception) as info:
                store.write_batch(b)
            assert not isinstance(info.value, StoreUnavailable), info.value
        # nothing of it stayed, and the store works on
        assert store.ledger("t1", "a") is None
        ok = WriteBatch(samples=[("t1", Point("m", {"k": "v"}, T0, 2.0))], now_ms=2)
        assert store.write_batch(ok).points_written == 1
    finally:
        store.close()


def test_any_int64_time_is_stored(pg_dsn: str, pg_schema: str) -> None:
    # no partitions to hold a time (before #15 days outside the years 1-9999 were refused)
    store = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        times = [-(2**63), -1, 2**62, 2**63 - 1]
        batch = WriteBatch(samples=[("t1", Point("m", {}, t, 1.0)) for t in times], now_ms=1)
        assert store.write_batch(batch).points_written == 4
        [s] = store.query("t1", "m", -(2**63), 2**63 - 1, {})
        assert [t for t, _ in s.points] == times
    finally:
        store.close()


def test_killed_connections_are_unavailable_then_heal(pg_cluster: PgCluster, pg_schema: str) -> None:
    dsn = pg_cluster.dsn()
    store = PostgresStore(dsn, schema=pg_schema)
    try:
        store.write_batch(WriteBatch(samples=[("t1", Point("m", {}, T0, 1.0))], now_ms=1))
        pg_cluster.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'lossproof-writer'"
        )
        b = WriteBatch(reports=[ReportWrite("t1", "a", 1, [Point("m", {}, T0 + 1, 1.0)])], now_ms=2)
        for _ in range(20):
            try:
                res = store.write_batch(b)
                break
            except StoreUnavailable:
                continue
        assert res.reports_stored == 1
        assert store.write_batch(b).reports_duplicate == 1
    finally:
        store.close()


def _record(agent: str, seq: int, t: int) -> bytes:
    point = {"metric": "m", "labels": {}, "t": t, "v": 1.0}
    body = json.dumps({"agent": agent, "reports": [{"seq": seq, "points": [point]}]}).encode()
    env = native.Envelope(1, "default", "native", native.JSON, "", 0, agent, [(seq, seq)], body)
    return native.encode_envelope(env)


def test_worker_dead_letters_what_postgres_refuses(tmp_path: Path, pg_dsn: str, pg_schema: str) -> None:
    log_dir = tmp_path / "log"

    async def append() -> None:
        w = EmbeddedLogWriter(log_dir)
        await w.start()
        for v in [_record("a", 1, T0), _record("a", 2, 2**63 + 5), _record("a", 3, T0 + 3000)]:
            await w.append(b"k", v)
        await w.close()

    asyncio.run(append())
    store = PostgresStore(pg_dsn, schema=pg_schema)
    reader = EmbeddedLogReader(log_dir)
    try:
        worker = Worker(reader, store, CollectorRegistry())
        polled = reader.poll(100, 1.0)
        assert len(polled.records) == 3
        worker.process(polled)
        ledger = store.ledger("default", "a")
        assert ledger is not None and ledger.stored == [(1, 1), (3, 3)]
        assert store.dead_letter_count() == 1
        assert [t for s in store.query("default", "m", 0, 2**62, {}) for t, _ in s.points] == [T0, T0 + 3000]
    finally:
        reader.close()
        store.close()


def test_store_unavailable_when_server_is_down(own_cluster: PgCluster) -> None:
    store = PostgresStore(own_cluster.dsn(), pool_timeout=1)
    try:
        store.write_batch(WriteBatch(samples=[("t1", Point("m", {}, T0, 1.0))], now_ms=1))
        own_cluster.stop("immediate")
        for _ in range(3):
            with pytest.raises(StoreUnavailable):
                store.write_batch(WriteBatch(samples=[("t1", Point("m", {}, T0 + 1, 1.0))], now_ms=2))
            with pytest.raises(StoreUnavailable):
                store.agents("t1")
        own_cluster.start()
        for _ in range(50):
            try:
                store.write_batch(WriteBatch(samples=[("t1", Point("m", {}, T0 + 1, 1.0))], now_ms=2))
                break
            except StoreUnavailable:
                import time

                time.sleep(0.1)
        assert sum(len(s.points) for s in store.query("t1", "m", 0, 2**62, {})) == 2
    finally:
        store.close()
    with psycopg.connect(own_cluster.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
