"""Store benchmark: ``write_batch`` throughput the way the worker drives it.

Each batch carries one report per agent; each agent owns ``series_per_agent`` series (by default one
point per series per report, like a host agent scraping every ``interval_ms``). A report's points are
what the worker hands the store: encoded as the agent sends them, decoded as the worker does.
Building the batches is not timed, only ``write_batch``. Numbers are reported for the whole run and
for its last quarter (a store whose inserts slow down as it grows shows it there).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from lossproof.agent.report import Point as AgentPoint
from lossproof.agent.report import encode_report
from lossproof.protocol.decode import decode_report
from lossproof.protocol.native import MSGPACK
from lossproof.store.base import Point, ReportWrite, Store, WriteBatch

TENANT = "bench"
START_MS = 1_700_000_000_000


def _series(agent: int, i: int) -> tuple[str, dict[str, str]]:
    return f"bench_metric_{i % 25}", {"host": f"host-{agent:04d}", "dim": str(i // 25), "dc": "eu-1"}


def _batches(
    points_total: int,
    points_per_report: int,
    agents: int,
    series_per_agent: int,
    interval_ms: int,
    first_agent: int = 0,
) -> Iterator[WriteBatch]:
    per_series = max(1, points_per_report // series_per_agent)
    step = max(1, interval_ms // per_series)
    made = 0
    seq = 0
    while made < points_total:
        seq += 1
        base = START_MS + (seq - 1) * interval_ms
        reports = []
        for a in range(agents):
            n = min(points_per_report, points_total - made)
            if n <= 0:
                break
            pts = []
            for j in range(n):
                metric, labels = _series(first_agent + a, j % series_per_agent)
                pts.append(AgentPoint(metric, labels, base + (j // series_per_agent) * step, float(j)))
            # the points as the worker hands them to the store: sent as the agent encodes a report,
            # decoded as the worker decodes it
            _, _, points = decode_report(encode_report(seq, base, pts), MSGPACK)
            reports.append(ReportWrite(TENANT, f"agent-{first_agent + a:04d}", seq, points))
            made += n
        yield WriteBatch(reports=reports, now_ms=base)


def bench_store(
    store_factory: Callable[[], Store],
    points_total: int,
    points_per_report: int,
    agents: int,
    *,
    series_per_agent: int | None = None,
    interval_ms: int = 10_000,
    replay_batches: int = 3,
) -> dict[str, Any]:
    """Write ``points_total`` points and return throughput figures (points/s stored, batch latency).

    ``replay_batches`` of the batches are applied again at the end to time duplicate delivery."""
    spa = series_per_agent or points_per_report
    store = store_factory()
    try:
        times: list[float] = []
        counts: list[int] = []
        written = 0
        kept: list[WriteBatch] = []
        for batch in _batches(points_total, points_per_report, agents, spa, interval_ms):
            t0 = time.perf_counter()
            res = store.write_batch(batch)
            times.append(time.perf_counter() - t0)
            counts.append(sum(len(r.points) for r in batch.reports))
            written += res.points_written
            if len(kept) < replay_batches:
                kept.append(batch)
        replay_s = 0.0
        replay_pts = 0
        for batch in kept:
            t0 = time.perf_counter()
            res = store.write_batch(batch)
            replay_s += time.perf_counter() - t0
            replay_pts += sum(len(r.points) for r in batch.reports)
            if res.points_written:
                raise AssertionError("replayed batch wrote points again")
    finally:
        store.close()
    total_s = sum(times)
    q = max(1, len(times) // 4)
    tail_s, tail_pts = sum(times[-q:]), sum(counts[-q:])
    ms = sorted(t * 1000 for t in times)
    return {
        "points": sum(counts),
        "points_written": written,
        "batches": len(times),
        "points_per_batch": points_per_report * agents,
        "series": spa * agents,
        "seconds": round(total_s, 3),
        "points_per_s": round(sum(counts) / total_s) if total_s else 0,
        "points_per_s_last_quarter": round(tail_pts / tail_s) if tail_s else 0,
        "batch_ms_p50": round(statistics.median(ms), 1) if ms else 0.0,
        "batch_ms_max": round(ms[-1], 1) if ms else 0.0,
        "replay_points_per_s": round(replay_pts / replay_s) if replay_s else 0,
    }


def bench_query(
    store_factory: Callable[[], Store], series: int = 100, hours: int = 24, interval_ms: int = 10_000
) -> dict[str, Any]:
    """Time a dashboard read: one metric, ``series`` series, ``hours`` of points every ``interval_ms``.

    The data is written first (one agent, one point per series per report), then read back with
    one ``query`` call over the whole range; the read is timed (cold and warm)."""
    store = store_factory()
    try:
        reports_total = hours * 3_600_000 // interval_ms
        seq = 0
        while seq < reports_total:
            reports = []
            for _ in range(min(64, reports_total - seq)):
                seq += 1
                t = START_MS + (seq - 1) * interval_ms
                pts = [
                    Point("bench_query", {"host": f"host-{i:04d}", "dc": "eu-1"}, t, float(i))
                    for i in range(series)
                ]
                reports.append(ReportWrite(TENANT, "query-agent", seq, pts))
            store.write_batch(WriteBatch(reports=reports, now_ms=START_MS))
        took = []
        for _ in range(2):
            t0 = time.perf_counter()
            out = store.query(TENANT, "bench_query", START_MS, START_MS + hours * 3_600_000, {})
            took.append(time.perf_counter() - t0)
    finally:
        store.close()
    return {
        "series": len(out),
        "points": sum(len(s.points) for s in out),
        "seconds_first": round(took[0], 3),
        "seconds_again": round(took[1], 3),
    }


# --- several writer processes ---------------------------------------------------------------------

# A store to open in a child process: ("sqlite", path) or ("postgres", dsn, schema).
StoreSpec = tuple[str, ...]


def open_spec(spec: StoreSpec) -> Store:
    if spec[0] == "sqlite":
        from pathlib import Path

        from lossproof.store.sqlite import SqliteStore

        return SqliteStore(Path(spec[1]))
    if spec[0] == "postgres":
        from lossproof.store.postgres import PostgresStore

        return PostgresStore(spec[1], schema=spec[2], pool_size=2)
    raise ValueError(f"unknown store kind {spec[0]!r}")


def _writer(
    spec: StoreSpec,
    index: int,
    points: int,
    points_per_report: int,
    agents: int,
    series_per_agent: int,
    interval_ms: int,
    barrier: Any,
    results: Any,
) -> None:
    """One writer process. Puts ``(index, points, written, seconds)`` on ``results``, or
    ``(index, "error", message)`` and breaks the barrier: the parent never waits for a dead writer."""
    try:
        store = open_spec(spec)
        try:
            # Built before the start line: only writing is timed.
            batches = list(
                _batches(points, points_per_report, agents, series_per_agent, interval_ms, index * agents)
            )
            # warm-up outside the timing: series ids for every series this writer uses
            store.write_batch(batches[0])
            barrier.wait()
            t0 = time.perf_counter()
            written = 0
            for b in batches[1:]:
                written += store.write_batch(b).points_written
            took = time.perf_counter() - t0
            results.put((index, sum(len(r.points) for b in batches[1:] for r in b.reports), written, took))
        finally:
            store.close()
    except threading.BrokenBarrierError:
        pass  # another writer failed and said why
    except BaseException as e:
        results.put((index, "error", f"{type(e).__name__}: {e}".splitlines()[0]))
        barrier.abort()


class BenchError(Exception):
    """A writer failed (one line, for the CLI)."""


def _wait_results(procs: list[Any], results: Any, barrier: Any, timeout: float) -> list[tuple[Any, ...]]:
    """One result per writer; a writer's error, or its death without a word, ends the wait at once."""
    import queue

    got: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + timeout
    while len(got) < len(procs):
        try:
            item = results.get(timeout=0.2)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                barrier.abort()
                raise BenchError(f"a writer process died (exit code {dead[0].exitcode})") from None
            if time.monotonic() > deadline:
                barrier.abort()
                raise BenchError(f"the writers did not finish within {timeout:.0f} s") from None
            continue
        if item[1] == "error":
            barrier.abort()
            raise BenchError(f"writer {item[0]}: {item[2]}")
        got.append(item)
    return got


def bench_store_processes(
    spec: StoreSpec,
    writers: int,
    points_total: int,
    points_per_report: int,
    agents: int,
    *,
    series_per_agent: int | None = None,
    interval_ms: int = 10_000,
) -> dict[str, Any]:
    """``writers`` processes write at once, each its own ``agents`` agents (like workers consuming
    different log partitions) and ``points_total / writers`` points. Each writer's first batch
    (creating its series) is not timed; then the wall time from a common start to the last
    writer's end is. Returns total points/s."""
    import multiprocessing as mp

    spa = series_per_agent or points_per_report
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(writers + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_writer,
            args=(
                spec,
                i,
                points_total // writers,
                points_per_report,
                agents,
                spa,
                interval_ms,
                barrier,
                results,
            ),
        )
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    # The parent's share of the start line, in a thread: a failing writer breaks the barrier, and
    # the parent sees that writer's error on the queue rather than waiting on the barrier.
    started: list[float] = []

    def start_line() -> None:
        try:
            barrier.wait(timeout=600)
            started.append(time.perf_counter())
        except threading.BrokenBarrierError:
            pass

    starter = threading.Thread(target=start_line, daemon=True)
    starter.start()
    ok = False
    try:
        got = _wait_results(procs, results, barrier, timeout=4200)
        wall = time.perf_counter()
        starter.join(10)  # past the barrier: every writer was
        wall -= started[0]
        ok = True
    finally:
        for p in procs:
            p.join(30 if ok else 0.5)  # after a failure nothing is waited for
            if p.is_alive():
                p.kill()
                p.join(5)
    points = sum(g[1] for g in got)
    written = sum(g[2] for g in got)
    return {
        "writers": writers,
        "points": points,
        "points_written": written,
        "points_per_batch": points_per_report * agents,
        "series": spa * agents * writers,
        "seconds": round(wall, 3),
        "points_per_s": round(points / wall) if wall else 0,
        "per_writer_points_per_s": [round(g[1] / g[3]) for g in sorted(got)],
    }


def _writer_counts(writers: str) -> list[int]:
    counts = []
    for w in writers.split(","):
        try:
            n = int(w.strip())
        except ValueError:
            n = 0
        if not 1 <= n <= 64:
            raise click.ClickException(
                f"--writers {writers!r}: expected writer process counts 1-64, comma-separated (e.g. 1,2)"
            )
        counts.append(n)
    return counts


@click.command("store")
@click.option("--dsn", envvar="LOSSPROOF_STORE_DSN", default=None, help="PostgreSQL to measure (optional).")
@click.option("--points", type=click.IntRange(10_000), default=2_000_000, show_default=True)
@click.option("--points-per-report", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--agents", type=click.IntRange(1), default=32, show_default=True, help="Per writer.")
@click.option("--writers", default="1,2", show_default=True, help="Writer process counts to run.")
@click.option(
    "--series-per-agent",
    type=click.IntRange(1),
    default=None,
    help="Series each agent's reports cover (default: --points-per-report, one point per series per"
    " report; fewer gives each series several points per batch).",
)
def bench_cmd(
    dsn: str | None,
    points: int,
    points_per_report: int,
    agents: int,
    writers: str,
    series_per_agent: int | None,
) -> None:
    """Store write throughput: the embedded store, and PostgreSQL with 1 and 2 writer processes.

    Each writer writes --points / writers points in batches of --agents x --points-per-report; its
    first batch (creating its series) is not timed, so each needs at least two batches.
    Each PostgreSQL run writes into a fresh schema, dropped afterwards."""
    counts = _writer_counts(writers)
    batch = agents * points_per_report
    if points // max(counts) < 2 * batch:
        raise click.ClickException(
            f"--points {points} over {max(counts)} writer(s) is {points // max(counts)} points each, less "
            f"than two batches of {batch} (--agents {agents} x --points-per-report {points_per_report}); "
            f"the first batch is not timed: give --points >= {2 * batch * max(counts)} or smaller batches"
        )
    if dsn:
        _check_dsn(dsn)
    lines = []
    try:
        with tempfile.TemporaryDirectory(prefix="lossproof-bench-") as tmp:
            for n in counts:
                r = bench_store_processes(
                    ("sqlite", str(Path(tmp) / f"s{n}.db")),
                    n,
                    points,
                    points_per_report,
                    agents,
                    series_per_agent=series_per_agent,
                )
                lines.append({"store": "embedded", **r})
                click.echo(json.dumps(lines[-1]), err=True)
        if dsn:
            for n in counts:
                schema = "bench_" + uuid.uuid4().hex[:8]
                try:
                    r = bench_store_processes(
                        ("postgres", dsn, schema),
                        n,
                        points,
                        points_per_report,
                        agents,
                        series_per_agent=series_per_agent,
                    )
                finally:
                    _drop_schema(dsn, schema)
                lines.append({"store": "postgres", **r})
                click.echo(json.dumps(lines[-1]), err=True)
    except BenchError as e:
        raise click.ClickException(f"store bench: {e}") from None
    click.echo(f"{'store':10} {'writers':>7} {'points':>10} {'seconds':>8} {'points/s':>10}")
    for r in lines:
        click.echo(
            f"{r['store']:10} {r['writers']:>7} {r['points']:>10} {r['seconds']:>8} {r['points_per_s']:>10}"
        )
    from lossproof.bench.load import load_line

    click.echo(load_line())
    if not all(r["points"] for r in lines):
        raise click.ClickException("store bench: a run stored no timed points")


def _check_dsn(dsn: str) -> None:
    """A one-line error unless PostgreSQL at ``dsn`` accepts a connection (before anything runs)."""
    import psycopg

    from lossproof.store import postgres as pg

    try:
        with psycopg.connect(dsn, connect_timeout=5):
            pass
    except (psycopg.Error, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise click.ClickException(f"PostgreSQL {pg.describe_dsn(dsn)}: {first}") from None


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    except psycopg.Error as e:
        click.echo(f"warning: could not drop the bench schema {schema!r}: {e}".splitlines()[0], err=True)
