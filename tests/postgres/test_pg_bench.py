"""The store benchmark runs against PostgreSQL with several writer processes (tiny sizes: a smoke
test, not a measurement; ``lossproof store bench`` measures)."""

from __future__ import annotations

from lossproof.bench.store import bench_store, bench_store_processes
from lossproof.store.postgres import PostgresStore


def test_bench_store_processes_postgres(pg_dsn: str, pg_schema: str) -> None:
    out = bench_store_processes(("postgres", pg_dsn, pg_schema), 2, 24_000, 100, 4, series_per_agent=50)
    # each writer's first batch (creating its series) is not timed
    assert out["points"] == out["points_written"] == 2 * (12_000 - 400)
    assert out["writers"] == 2 and out["series"] == 400
    assert out["points_per_s"] > 0 and len(out["per_writer_points_per_s"]) == 2


def test_bench_store_postgres(pg_dsn: str, pg_schema: str) -> None:
    out = bench_store(lambda: PostgresStore(pg_dsn, schema=pg_schema), 20_000, 100, 8, series_per_agent=50)
    assert out["points"] == out["points_written"] == 20_000
    assert out["replay_points_per_s"] > 0
