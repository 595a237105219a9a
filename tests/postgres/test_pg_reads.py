"""Every read of the PostgreSQL store answers exactly like the embedded store on the same writes:
the query API, the dashboard and the Prometheus API read through these."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from lossproof.store.base import LostRange, Matcher, Point, ReportWrite, SpoolState, Store, WriteBatch
from lossproof.store.postgres import PostgresStore
from lossproof.store.sqlite import SqliteStore

T0 = 1_767_225_600_000  # 2026-01-01
DAY = 86_400_000


def _batches(seed: int) -> list[WriteBatch]:
    rng = random.Random(seed)
    out = []
    for b in range(12):
        reports = []
        for _ in range(rng.randint(1, 6)):
            agent = f"a{rng.randint(0, 3)}"
            seq = rng.randint(1, 40)
            pts = []
            for i in range(rng.randint(0, 8)):
                v = rng.choice([rng.random(), math.inf, -math.inf, math.nan, -0.0, 1e308, 5e-324])
                labels = {"host": f"h{i % 3}", "dc": rng.choice(["x", "y", ""])}
                if i % 4 == 0:
                    labels["extra"] = 'é "quoted" {json}'
                # spread over three days: several partitions
                t = T0 + rng.randint(-DAY, 2 * DAY) // 1000 * 1000 + seq
                pts.append(Point(rng.choice(["cpu", "mem", "disk.io"]), labels, t, v))
            reports.append(ReportWrite(rng.choice(["t1", "t2"]), agent, seq, pts))
        samples = [
            ("t1", Point("temp", {"room": f"r{k}"}, T0 + rng.randint(0, 100) * 500, rng.random()))
            for k in range(rng.randint(0, 5))
        ]
        lost = [LostRange("t1", "a1", 50, 52, "spool full")] if b == 5 else []
        spool = [SpoolState("t1", "a2", 3, 300, T0 - 5, 38, 42, T0 + b)] if b % 4 == 0 else []
        out.append(WriteBatch(reports=reports, samples=samples, lost=lost, spool=spool, now_ms=1000 + b))
    return out


def _snapshot(s: Store) -> list[Any]:
    snap: list[Any] = []
    for tenant in ("t1", "t2", "t3"):
        snap.append(s.agents(tenant))
        for agent in ("a0", "a1", "a2", "a3", "zz"):
            snap.append(s.ledger(tenant, agent))
            snap.append(s.replay_wanted(tenant, agent, 1006))
        snap.append(s.metric_names(tenant))
        for metric in ("cpu", "mem", "disk.io", "temp", "none"):
            for labels in ({}, {"host": "h1"}, {"dc": "x", "host": "h0"}, {"dc": ""}):
                for lo, hi in ((0, 2**62), (T0, T0 + DAY), (T0 + DAY // 2, T0 + DAY // 2 + 5000)):
                    snap.append(s.query(tenant, metric, lo, hi, labels))
        for matchers in (
            [],
            [Matcher("__name__", "=", "cpu")],
            [Matcher("__name__", "=~", "cpu|mem"), Matcher("dc", "!=", "x")],
            [Matcher("host", "=~", "h[01]"), Matcher("dc", "=", "")],
            [Matcher("__name__", "!~", "c.*"), Matcher("extra", "!=", "")],
        ):
            snap.append(s.series(tenant, matchers))
            snap.append(s.select(tenant, matchers, T0 - DAY, T0 + DAY))
            snap.append(s.select(tenant, matchers, 0, 2**62))
            for step, window in ((3_600_000, 3_600_000), (600_000, 7_200_000), (DAY, 1000)):
                snap.append(s.select_last(tenant, matchers, T0 - DAY, T0 + 2 * DAY, step, window))
    snap.append(s.dead_letter_count())
    snap.append(s.log_gaps())
    return snap


def _same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b  # (SQLite drops the sign of -0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "__dataclass_fields__") and type(a) is type(b):
        return all(_same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return bool(a == b)


def test_reads_match_the_embedded_store(tmp_path: Path, pg_dsn: str, pg_schema: str) -> None:
    lite = SqliteStore(tmp_path / "s.db")
    pg = PostgresStore(pg_dsn, schema=pg_schema)
    reader = PostgresStore(pg_dsn, schema=pg_schema, readonly=True)
    try:
        for b in _batches(7):
            assert lite.write_batch(b) == pg.write_batch(b)
        a, b_, c = _snapshot(lite), _snapshot(pg), _snapshot(reader)
        assert len(a) == len(b_) == len(c)
        for i, (x, y, z) in enumerate(zip(a, b_, c, strict=True)):
            assert _same(x, y), (i, x, y)
            assert _same(y, z), (i, y, z)
    finally:
        lite.close()
        pg.close()
        reader.close()
