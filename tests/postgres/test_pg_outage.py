"""A real ``lossproof up`` on the PostgreSQL store, and PostgreSQL down for ~20 s: ingest keeps
acknowledging (the log holds the data), the worker's lag grows and shows on its /metrics, then
drains when the database is back; every acknowledged report is stored once."""

from __future__ import annotations

import re
import time
from typing import Any

import urllib3

from lossproof.store.postgres import PostgresStore
from lptest.pg_cluster import PgCluster
from lptest.pipeline import Pipeline, expand, report

HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False)


def _worker_metric(p: Pipeline, name: str) -> float:
    addr = (p.data_dir / "run" / "worker.addr").read_text().strip()
    text = HTTP.request("GET", f"http://{addr}/metrics").data.decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not in the worker's /metrics"
    return float(m.group(1))


def _post(p: Pipeline, seqs: range) -> None:
    for s in seqs:
        r = p.post_reports("pg-agent", [report(s, n=5)])
        assert r.status == 200, (s, r.status, r.data[:300])


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_postgres_down_for_20s_acks_go_on_lag_grows_then_drains(
    own_cluster: PgCluster, pipeline_factory: Any
) -> None:
    p: Pipeline = pipeline_factory()
    env = {"LOSSPROOF_STORE_BACKEND": "postgres", "LOSSPROOF_STORE_DSN": own_cluster.dsn()}
    p.start(extra_env=env)
    _post(p, range(1, 21))
    p.wait_stored("pg-agent", set(range(1, 21)))
    _wait(lambda: _worker_metric(p, "lossproof_worker_lag_records") == 0, 10, "lag not 0 at start")

    own_cluster.stop("fast")
    down_at = time.monotonic()
    seq = 21
    lags = []
    while time.monotonic() - down_at < 20:
        _post(p, range(seq, seq + 5))  # acknowledged: durable in the log, the store is down
        seq += 5
        lags.append(_worker_metric(p, "lossproof_worker_lag_records"))
        time.sleep(0.5)
    assert _worker_metric(p, "lossproof_worker_healthy") == 0
    assert lags[-1] > 0 and lags[-1] > lags[0], f"worker lag did not grow while PostgreSQL was down: {lags}"

    own_cluster.start()
    last = seq - 1
    ledger = p.wait_stored("pg-agent", set(range(1, last + 1)), timeout=60)
    _wait(lambda: _worker_metric(p, "lossproof_worker_lag_records") == 0, 30, "lag did not drain")
    assert expand(ledger["stored"]) == set(range(1, last + 1))
    assert _worker_metric(p, "lossproof_worker_healthy") == 1

    store = PostgresStore(own_cluster.dsn(), readonly=True)
    try:
        [agent] = store.agents("default")
        assert (agent.stored_reports, agent.missing_reports, agent.max_seq) == (last, 0, last)
        points = sum(len(s.points) for s in store.query("default", "cpu.user", 0, 2**62, {}))
        assert points == 5 * last  # every report's 5 points, once
    finally:
        store.close()
    p.stop()


def test_a_worker_that_restarts_while_postgres_is_down_waits_for_it(
    own_cluster: PgCluster, pipeline_factory: Any
) -> None:
    """The worker crashes during the outage. Its next start finds the server down: it waits for it
    (worker.store_unavailable) instead of exiting, which `up` took for a setup problem after three
    quick exits and stopped ingest with it. Ingest keeps acknowledging; once PostgreSQL is back the
    worker stores everything."""
    import psutil

    p: Pipeline = pipeline_factory()
    env = {"LOSSPROOF_STORE_BACKEND": "postgres", "LOSSPROOF_STORE_DSN": own_cluster.dsn()}
    p.start(extra_env=env)
    _post(p, range(1, 6))
    p.wait_stored("pg-agent", set(range(1, 6)))
    own_cluster.stop("fast")
    assert p.proc is not None
    [worker] = [c for c in psutil.Process(p.proc.pid).children() if c.cmdline()[3:4] == ["worker"]]
    worker.kill()
    seq = 6
    down_at = time.monotonic()
    while time.monotonic() - down_at < 15:  # the old code stopped `up` within ~4 s
        _post(p, range(seq, seq + 2))
        seq += 2
        assert p.proc.poll() is None, p.logs()[-3000:]
        time.sleep(0.5)
    assert p.logs().count('"worker.store_unavailable"') >= 2, p.logs()[-3000:]
    own_cluster.start()
    p.wait_stored("pg-agent", set(range(1, seq)), timeout=60)
    assert p.stop() == 0


def test_postgres_down_when_the_pipeline_starts(own_cluster: PgCluster, pipeline_factory: Any) -> None:
    """A host's reboot brings lossproof up before PostgreSQL: ingest acknowledges from the start,
    and the worker stores it all once the server is there."""
    own_cluster.stop("fast")
    p: Pipeline = pipeline_factory()
    env = {"LOSSPROOF_STORE_BACKEND": "postgres", "LOSSPROOF_STORE_DSN": own_cluster.dsn()}
    p.start(extra_env=env)
    _post(p, range(1, 11))
    time.sleep(5)
    assert p.proc is not None and p.proc.poll() is None, p.logs()[-3000:]
    assert '"worker.store_unavailable"' in p.logs()
    own_cluster.start()
    p.wait_stored("pg-agent", set(range(1, 11)), timeout=60)
    assert p.stop() == 0


def test_a_bad_password_stops_up_with_its_error(own_cluster: PgCluster, pipeline_factory: Any) -> None:
    """What waiting does not mend is a setup problem: said once, and `up` stops."""
    p: Pipeline = pipeline_factory()
    env = {"LOSSPROOF_STORE_BACKEND": "postgres", "LOSSPROOF_STORE_DSN": own_cluster.dsn(password="wrong")}
    p.start(extra_env=env, wait=False)
    assert p.proc is not None
    assert p.proc.wait(60) == 1
    assert "password authentication failed" in p.logs()


def test_a_write_waiting_on_a_lock_retries_instead_of_being_killed(
    own_cluster: PgCluster, pipeline_factory: Any
) -> None:
    """Another session holds the agent's lock (a stranded transaction, an operator) for longer than
    the liveness timeout (33 s against 23). The worker's write gives up after lock_timeout and is
    retried, beating in between: it is not killed as stuck, which left its session queued for the
    lock each time."""
    import psycopg

    from lossproof.store.pg.write import _lock_key

    p: Pipeline = pipeline_factory()
    env = {
        "LOSSPROOF_STORE_BACKEND": "postgres",
        "LOSSPROOF_STORE_DSN": own_cluster.dsn(),
        # the least the configuration allows with these: twice the lock timeout and a connect
        "LOSSPROOF_SERVER_LIVENESS_TIMEOUT_SECONDS": "23",
        "LOSSPROOF_STORE_CONNECT_TIMEOUT_SECONDS": "3",
    }
    p.start(extra_env=env)
    _post(p, range(1, 2))
    p.wait_stored("pg-agent", {1})
    with psycopg.connect(own_cluster.admin_dsn, autocommit=True) as admin:
        key = _lock_key("lossproof", "default", "pg-agent")
        admin.execute("SELECT pg_advisory_lock(%s)", (key,))
        _post(p, range(2, 4))
        time.sleep(33)
        logs = p.logs()
        assert "lock timeout" in logs, "the write never waited on the lock: the test tested nothing"
        # the current retry may be waiting right now; none left over from earlier attempts
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()
        assert row is not None and row[0] <= 1, row
        admin.execute("SELECT pg_advisory_unlock(%s)", (key,))
    p.wait_stored("pg-agent", {1, 2, 3}, timeout=60)
    assert '"up.child_stuck"' not in p.logs()
    assert p.stop() == 0
