"""``lossproof bench promql``: PromQL evaluation on the embedded store, without HTTP.

Stores ``--series`` counters ``m`` (labels ``job`` j0..j9, ``instance``) of ``--samples`` samples each,
one every ``--interval`` seconds, ending at a fixed time, in an :class:`SqliteStore` under ``--dir`` (kept
and reused by the next run with the same shape; a temporary directory when not given), compacted as the
worker would. Then times, in this process, each of:

- ``rate(m[5m])`` over the last hour, step 15 s;
- ``sum by (job) (rate(m[5m]))`` over the last 24 h, step 60 s;
- ``avg_over_time(m[1h])`` as an instant query at the end;
- ``sum by (job) (m)`` over the last 24 h, step 60 s (an instant selector: ``select_last``);

split into the store read (``select_arrays`` / ``select``) and the rest (evaluation), and prints the
median of ``--runs`` with the machine's load. Progress goes to stderr, the numbers to stdout.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from lossproof.query import promql
from lossproof.store.base import Point, Store, WriteBatch
from lossproof.store.sqlite import SqliteStore

END_MS = 1_767_225_600_000  # 2026-01-01T00:00Z: a fixed end, so a kept store is reused
MADE_FILE = "made.json"
LAYOUT = 1  # bump when generate() changes

Say = Callable[[str], None]

QUERIES: list[tuple[str, str, int, int]] = [
    # (label, query, range ms (0: instant), step ms)
    ("rate(m[5m]) 1 h step 15 s", "rate(m[5m])", 3_600_000, 15_000),
    ("sum by (job) (rate(m[5m])) 24 h step 60 s", "sum by (job) (rate(m[5m]))", 86_400_000, 60_000),
    ("avg_over_time(m[1h]) instant", "avg_over_time(m[1h])", 0, 1),
    ("sum by (job) (m) 24 h step 60 s", "sum by (job) (m)", 86_400_000, 60_000),
    ("topk(10, avg_over_time(m[1h])) instant", "topk(10, avg_over_time(m[1h]))", 0, 1),
    (
        "max_over_time(rate(m[5m])[1h:1m]) 1 h step 60 s",
        "max_over_time(rate(m[5m])[1h:1m])",
        3_600_000,
        60_000,
    ),
    (
        "quantile by (job) (0.9, rate(m[5m])) 24 h step 60 s",
        "quantile by (job) (0.9, rate(m[5m]))",
        86_400_000,
        60_000,
    ),
    ("m and on(instance) topk(100, m) 1 h step 15 s", "m and on(instance) topk(100, m)", 3_600_000, 15_000),
]


def generate(path: Path, series: int, samples: int, interval_ms: int, say: Say) -> int:
    """Counters with integer increments (0..9 per sample) and a reset in about one series in ten."""
    store = SqliteStore(path)
    rng = np.random.default_rng(1)
    start = END_MS - (samples - 1) * interval_ms
    labels = [{"job": f"j{i % 10}", "instance": f"i{i:05d}"} for i in range(series)]
    values = np.cumsum(rng.integers(0, 10, size=(series, samples)), axis=1).astype(np.float64)
    for i in range(0, series, 10):  # a counter reset half-way
        values[i, samples // 2 :] -= values[i, samples // 2 - 1]
    made = 0
    last_say = time.monotonic()
    per_batch = max(1, 50_000 // series)
    for k0 in range(0, samples, per_batch):
        batch = WriteBatch(now_ms=start + k0 * interval_ms)
        for k in range(k0, min(samples, k0 + per_batch)):
            t = start + k * interval_ms
            row = values[:, k].tolist()
            batch.samples.extend(("default", Point("m", labels[i], t, row[i])) for i in range(series))
        store.write_batch(batch)
        made += len(batch.samples)
        if time.monotonic() - last_say > 5:
            last_say = time.monotonic()
            say(f"storing: {100 * made // (series * samples)}% ({made:,} points)")
    say("compacting")
    while store.compact(END_MS + 86_400_000, max_series=100_000).more:
        pass
    store.close()
    return made


class _ReadClock:
    """Counts the time spent in a store's reads: wraps the read methods on the instance."""

    READS = ("select", "select_arrays", "select_last", "metric_names", "series")

    def __init__(self, store: Store) -> None:
        self.store = store
        self.read_s = 0.0
        self._saved = {name: getattr(store, name) for name in self.READS}
        for name, fn in self._saved.items():
            setattr(store, name, self._wrap(fn))

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.read_s += time.perf_counter() - t0

        return timed

    def __enter__(self) -> _ReadClock:
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self._saved:
            delattr(self.store, name)


def run_query(store: Store, query: str, range_ms: int, step_ms: int) -> tuple[float, float, int]:
    """(total s, store read s, points in the answer) of one evaluation."""
    expr = promql.parse(query)
    grid = promql.Grid(END_MS - range_ms, END_MS, step_ms)
    with _ReadClock(store) as clock:
        t0 = time.perf_counter()
        value = promql.Evaluator(store, "default", grid).eval(expr)
        total = time.perf_counter() - t0
    points = 0
    if isinstance(value, promql.Vector):
        points = sum(sum(x is not None for x in vals) for _, vals in value.series.values())
    return total, clock.read_s, points


@click.command("promql")
@click.option("--dir", "dir_", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the store here (reused by the next run of the same shape).")  # fmt: skip
@click.option("--series", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--samples", default=5760, show_default=True, type=click.IntRange(2, 100_000))
@click.option("--interval", default=15, show_default=True, type=click.IntRange(1, 3600), help="seconds")
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1, 100))
def promql_bench_cmd(dir_: Path | None, series: int, samples: int, interval: int, runs: int) -> None:
    """How long PromQL evaluation takes on the embedded store (no HTTP), store read vs evaluation."""

    def say(msg: str) -> None:
        click.echo(msg, err=True)

    with tempfile.TemporaryDirectory(prefix="lossproof-bench-promql-") as tmp:
        base = dir_ if dir_ is not None else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        shape = {"series": series, "samples": samples, "interval": interval, "layout": LAYOUT}
        made_file, db = base / MADE_FILE, base / "store.db"
        if not (made_file.exists() and json.loads(made_file.read_text()) == shape and db.exists()):
            for f in base.glob("store.db*"):
                f.unlink()
            t0 = time.monotonic()
            made = generate(db, series, samples, interval * 1000, say)
            say(f"stored {made:,} points in {time.monotonic() - t0:.0f} s")
            made_file.write_text(json.dumps(shape))
        store = SqliteStore(db)
        lines = []
        try:
            for label, query, range_ms, step_ms in QUERIES:
                say(f"running {label} ({runs} runs)")
                got = [run_query(store, query, range_ms, step_ms) for _ in range(runs)]
                total = statistics.median(g[0] for g in got) * 1000
                read = statistics.median(g[1] for g in got) * 1000
                lines.append(
                    f"{label}: {total:.0f} ms median of {runs} (store read {read:.0f} ms, "
                    f"evaluation {total - read:.0f} ms), {got[0][2]:,} points"
                )
                say(lines[-1])
        finally:
            store.close()
    load = os.getloadavg()
    click.echo(f"{series:,} series x {samples:,} samples every {interval} s (counters)")
    click.echo(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    for line in lines:
        click.echo(line)
