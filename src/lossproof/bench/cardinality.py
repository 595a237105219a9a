"""``lossproof bench cardinality``: the store writer's memory and speed as the number of series grows.

Writes ``--series`` distinct series into a fresh embedded store, ``--batch`` new series per batch (one
point each, as the worker would write a first scrape of new targets), then ``--rounds`` more points
for every series (the same series again), with compaction run between batches as the worker's
compactor would. Prints the writer process' RSS after every step: it must level off (the series and
newest-t caches are bounded), not grow with the series count.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import psutil  # type: ignore[import-untyped]  # no stubs installed; calls are plain

from lossproof.store.base import Point, WriteBatch
from lossproof.store.sqlite import SqliteStore

T0 = 1_700_000_000_000
MiB = 1 << 20


def _batch(first: int, n: int, t: int) -> WriteBatch:
    pts = [
        ("bench", Point(f"card_{i % 100}", {"instance": f"i{i}", "job": f"j{i % 50}"}, t, float(i)))
        for i in range(first, first + n)
    ]
    return WriteBatch(samples=pts, now_ms=t)


@click.command("cardinality")
@click.option("--series", type=click.IntRange(1000), default=1_000_000, show_default=True)
@click.option("--batch", type=click.IntRange(100), default=50_000, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=2, show_default=True)
def cardinality_cmd(series: int, batch: int, rounds: int) -> None:
    """Writer RSS and points/s over a run of --series distinct series."""
    proc = psutil.Process()
    out: dict[str, object] = {"series": series, "batch": batch, "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="lossproof-bench-card-") as tmp:
        store = SqliteStore(Path(tmp) / "store.db")
        try:
            peak = 0
            start = time.perf_counter()
            written = 0
            for r in range(rounds + 1):
                t = T0 + r * 15_000
                for first in range(0, series, batch):
                    res = store.write_batch(_batch(first, min(batch, series - first), t))
                    written += res.points_written
                    while store.compact(t).more:
                        pass
                    rss = proc.memory_info().rss
                    peak = max(peak, rss)
                    click.echo(
                        f"  round {r} series {first + batch:>9,}: rss {rss / MiB:7.1f} MiB,"
                        f" {written / (time.perf_counter() - start):>10,.0f} points/s",
                        err=True,
                    )
                if r == 0:
                    out["rss_after_first_round_mib"] = round(proc.memory_info().rss / MiB, 1)
            took = time.perf_counter() - start
        finally:
            store.close()
        out.update(
            points_written=written,
            seconds=round(took, 1),
            points_per_s=round(written / took),
            peak_rss_mib=round(peak / MiB, 1),
            store_bytes=sum(f.stat().st_size for f in Path(tmp).iterdir()),
            load=" ".join(f"{x:.2f}" for x in psutil.getloadavg()),
        )
    click.echo(json.dumps(out))
    if written != series * (rounds + 1):
        raise click.ClickException(f"wrote {written} points, expected {series * (rounds + 1)}")
