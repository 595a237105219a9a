"""The store benchmark runs (tiny sizes: a smoke test, not a measurement)."""

from __future__ import annotations

from pathlib import Path

from lossproof.bench.store import bench_query, bench_store
from lossproof.store.sqlite import SqliteStore


def test_bench_store_smoke(tmp_path: Path) -> None:
    out = bench_store(lambda: SqliteStore(tmp_path / "b.db"), 20_000, 100, 8, series_per_agent=50)
    assert out["points"] == out["points_written"] == 20_000
    assert out["batches"] == 25 and out["series"] == 400
    assert out["points_per_s"] > 0 and out["replay_points_per_s"] > 0


def test_bench_query_smoke(tmp_path: Path) -> None:
    out = bench_query(lambda: SqliteStore(tmp_path / "q.db"), series=5, hours=1)
    assert out["series"] == 5 and out["points"] == 5 * 360
