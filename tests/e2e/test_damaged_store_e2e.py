"""A damaged chunk on a running `lossproof up` (real ingest, worker and compactor processes, embedded
store): the queries of its metric fail with a clear error (before: aiohttp's text 500 and a traceback);
after a worker restart (which forgets what it stored), a remote-write replay over its window is
acknowledged and stored, the worker setting the damaged row aside (docs/store.md, "A damaged chunk");
the loss is then on /metrics (the worker's counter, the store's gauges) and on the health page, and
the metric's queries work again with every point but the damaged row's that were not replayed. A
second damaged chunk, which nothing reads, is found and set aside by `lossproof store check` beside
the running pipeline.

Before session 27 the replay's batch failed for as long as the row was there: the worker retried it
for ever and its log partition stopped."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from lossproof import config as config_mod
from lptest import subprocess_env
from lptest.pipeline import HTTP, Pipeline
from lptest.proto import metric_value, rw_body

SERIES = 5
BATCHES = 9  # one part each: a flush is due at 8 live parts
T0 = (int(time.time() * 1000) - 3_600_000) // 60_000 * 60_000  # an hour ago: a closed window later


def points(b: int) -> list[tuple[int, float]]:
    return [(T0 + (10 * b + k) * 15_000, b * 100.0 + k) for k in range(10)]


def body(b: int) -> bytes:
    return rw_body([({"__name__": "dmg", "i": str(i)}, points(b)) for i in range(SERIES)])


def post(p: Pipeline, b: int) -> None:
    headers = {
        "Authorization": f"Bearer {p.key}",
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
    }
    r = HTTP.request("POST", p.url + "/api/v1/write", body=body(b), headers=headers, timeout=30)
    assert r.status == 204, r.data


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)
    return got


def query(p: Pipeline) -> tuple[int, Any]:
    """Every stored point of dmg (the native query API: the points as stored, no lookback)."""
    return p.get("/v1/query?metric=dmg&from=0&to=4102444800000")


def stored_points(p: Pipeline) -> dict[str, list[list[float]]] | None:
    status, got = query(p)
    if status != 200:
        return None
    return {s["labels"]["i"]: s["points"] for s in got["series"]}


def expected(*bs: int) -> list[list[float]]:
    return [[t, v] for b in bs for t, v in points(b)]


def damage(db: Path, k: int) -> tuple[int, str, int]:
    """Flip the middle byte of the ``k``-th chunk row (a bad sector): (its id, its series' label
    ``i``, its points)."""
    con = sqlite3.connect(db)
    try:
        rows = "SELECT id, series_id, n, data FROM chunks ORDER BY id LIMIT 1 OFFSET ?"
        cid, sid, n, data = con.execute(rows, (k,)).fetchone()
        label = "SELECT json_extract(labels_json, '$.i') FROM series WHERE id = ?"
        (hit,) = con.execute(label, (sid,)).fetchone()
        d = bytearray(data)
        d[len(d) // 2] ^= 0xFF
        con.execute("UPDATE chunks SET data = ? WHERE id = ?", (bytes(d), cid))
        con.commit()
    finally:
        con.close()
    return int(cid), str(hit), int(n)


def worker_pid(p: Pipeline) -> int | None:
    assert p.proc is not None
    for c in psutil.Process(p.proc.pid).children(recursive=True):
        try:
            cmd = c.cmdline()
            if "worker" in cmd and "compactor" not in cmd and c.status() != psutil.STATUS_ZOMBIE:
                return int(c.pid)
        except psutil.Error:
            continue
    return None


def test_a_damaged_chunk_is_set_aside_by_a_replay_and_shown_as_loss(
    pipeline_factory: Callable[[], Pipeline],
) -> None:
    p = pipeline_factory()
    p.start()
    db = config_mod.load(p.data_dir).store_path

    def count(sql: str) -> int:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return int(con.execute(sql).fetchone()[0])
        finally:
            con.close()

    for b in range(BATCHES):  # each stored before the next: a part each
        post(p, b)
        wait_for(f"batch {b} stored", lambda b=b: len((stored_points(p) or {}).get("0", [])) == 10 * (b + 1))
    # the compactor flushes the parts into one raw chunk per series
    wait_for("the parts flushed", lambda: count("SELECT count(*) FROM parts") == 0)
    cid, hit, n = damage(db, 0)
    assert n == 10 * BATCHES
    # never made-up points: the queries fail, with a JSON error that says why (not aiohttp's text 500)
    status, got = query(p)
    assert status == 500 and "stored data is damaged" in got["error"], got
    status, got = p.get(f"/api/v1/query?query=count_over_time(dmg[2h])&time={T0 / 1000 + 3600}")
    assert status == 500 and got["errorType"] == "internal" and "store check" in got["error"], got
    status, got = p.get(f"/ui/api/chart?match=dmg&from={T0}&to={T0 + 3_600_000}")
    assert status == 500 and "stored data is damaged" in got["error"], got

    # the running worker remembers what it stored (a replay of that is skipped unread); a new one
    # must read it, as after any restart
    old = worker_pid(p)
    assert old is not None
    psutil.Process(old).kill()
    wait_for("the worker back", lambda: worker_pid(p) not in (None, old))
    post(p, 0)  # the replay of the first batch, over the damaged chunk's window
    wait_for("the damaged chunk set aside", lambda: count("SELECT count(*) FROM damaged_chunks") == 1)
    got = wait_for("the metric readable again", lambda: stored_points(p))
    # the damaged series holds the replayed points only; the others every point, once
    whole = expected(*range(BATCHES))
    assert got == {str(i): expected(0) if str(i) == hit else whole for i in range(SERIES)}, hit
    assert count(f"SELECT count(*) FROM chunks WHERE id = {cid}") == 0

    def damaged_on_metrics() -> str | None:
        text = p.metrics()  # (the store's gauges are read every 15 s)
        return text if metric_value(text, "lossproof_store_damaged_rows") == 1 else None

    metrics = wait_for("the loss on /metrics", damaged_on_metrics)
    assert metric_value(metrics, "lossproof_store_damaged_points") == n
    assert metric_value(metrics, "lossproof_store_chunks_quarantined_total", by="write") == 1
    status, health = p.get("/ui/api/health", key=p.operator_key)
    assert status == 200 and health["damaged"] == {"rows": 1, "points": n}, health

    # a damaged chunk nothing reads again: `store check` names it, --set-aside moves it, beside the
    # running pipeline, and the metric's queries work again
    cid2, hit2, _ = damage(db, 1)
    assert query(p)[0] == 500
    argv = [sys.executable, "-m", "lossproof", "store", "check", "--data-dir", str(p.data_dir)]

    def check(*more: str) -> subprocess.CompletedProcess[str]:
        env = subprocess_env()
        return subprocess.run([*argv, *more], capture_output=True, text=True, env=env, timeout=120)

    got = check()
    assert got.returncode == 1 and f"chunks id {cid2} " in got.stdout, got.stdout + got.stderr
    got = check("--set-aside")
    assert got.returncode == 1 and "set aside 1 of them" in got.stdout, got.stdout + got.stderr
    got_points = wait_for("the metric readable again", lambda: stored_points(p))
    assert hit2 not in got_points and len(got_points) == SERIES - 1, (hit2, got_points)
    assert count("SELECT count(*) FROM damaged_chunks") == 2
    assert p.stop() == 0
    assert "Traceback" not in p.logs()
    assert "store.chunk_quarantined" in p.logs()


def test_the_compactors_scrub_finds_and_sets_aside_a_damaged_chunk_nothing_reads(
    pipeline_factory: Callable[[], Pipeline],
) -> None:
    """A damaged chunk no write or compaction reads, on a running `lossproof up` whose compactor
    scrubs every 3 s: set aside without an operator (before, only `lossproof store check` found it),
    counted on /metrics, and the metric's queries work again."""
    p = pipeline_factory()
    p.start(extra_env={"LOSSPROOF_STORE_SCRUB_INTERVAL_SECONDS": "3"})
    db = config_mod.load(p.data_dir).store_path
    for b in range(BATCHES):
        post(p, b)
        wait_for(f"batch {b} stored", lambda b=b: len((stored_points(p) or {}).get("0", [])) == 10 * (b + 1))

    def count(sql: str) -> int:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return int(con.execute(sql).fetchone()[0])
        finally:
            con.close()

    wait_for("the parts flushed", lambda: count("SELECT count(*) FROM parts") == 0)
    _, hit, _ = damage(db, 0)
    got = wait_for("the damaged chunk set aside", lambda: stored_points(p))
    assert hit not in got and len(got) == SERIES - 1, (hit, got)
    assert count("SELECT count(*) FROM damaged_chunks") == 1

    def scrubbed_on_metrics() -> str | None:
        text = p.metrics()
        return (
            text if metric_value(text, "lossproof_store_chunks_quarantined_total", by="scrub") == 1 else None
        )

    text = wait_for("the scrub on /metrics", scrubbed_on_metrics)
    assert (metric_value(text, "lossproof_store_scrub_passes_total") or 0) >= 1
    assert (metric_value(text, "lossproof_store_scrubbed_rows_total", table="chunks") or 0) >= SERIES
    assert p.stop() == 0
    logs = p.logs()
    assert "Traceback" not in logs and "store.scrub_done" in logs and '"by": "scrub"' in logs
