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


def test_a_worker_that_restarts_while_postgres_is_down_keeps_the_pipeline_up(
    own_cluster: PgCluster, pipeline_factory: Any
) -> None:
    """The worker crashes during the outage: each restart fails at once (connection refused),
    again and again. `up` must not take that for a setup problem and stop: ingest keeps
    acknowledging, and once PostgreSQL is back the worker stores everything."""
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
    while time.monotonic() - down_at < 25:  # long enough for more than 3 failed starts
        _post(p, range(seq, seq + 2))
        seq += 2
        assert p.proc.poll() is None, p.logs()[-3000:]
        time.sleep(0.5)
    logs = p.logs()
    assert logs.count('"up.child_exited"') >= 4, "the worker's starts did not fail: the test tested nothing"
    own_cluster.start()
    p.wait_stored("pg-agent", set(range(1, seq)), timeout=60)
    assert p.stop() == 0
