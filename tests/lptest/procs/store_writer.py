"""Write batches into an embedded store forever, or compact it forever, for the store's power-cut test
(tests/crash/test_power_cut_store.py). Never closes the store: the test kills it -9 (a clean close
would checkpoint and sync the WAL, hiding what a power cut takes).

    python store_writer.py write STORE FIRST      # batches FIRST, FIRST + 1, ...; ``ACK b`` each
    python store_writer.py compact STORE CLOCK    # compacts, ``COMPACT n ...`` after each commit

The writer's handle is the worker's (``SqliteStore(path)``: synchronous FULL); the compactor's is
the compactor process' (``cache_kib=COMPACTOR_CACHE_KIB, sync_commits=False``: NORMAL, commits
without fsync). The first line of either is ``READY pid``. ``ACK b`` is printed only after
``write_batch`` of batch ``b`` returned. Batch ``b`` stores ``batch_points(b)`` and an agent report
(seq ``report_seq(b)``, points ``report_points(b)``), and sends batch ``resent(b)``'s again: the
test computes them again to check what survived.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lossproof.store.base import Point, ReportWrite, SeriesBlock, SeriesSamples, WriteBatch
from lossproof.store.embedded.common import _PACK_AGE_MS
from lossproof.store.embedded.core import COMPACTOR_CACHE_KIB
from lossproof.store.sqlite import SqliteStore

T0 = 1_767_225_600_000
MINUTE = 60_000
TENANT = "t"
METRIC = "m"
REPORT_METRIC = "r"
AGENT = "a"
N_SERIES = 24
PER_SERIES = 12  # points per series per batch
SERIES_PER_BATCH = 3
REPORT_POINTS = 2


def batch_series(b: int) -> list[int]:
    """The series (0 .. N_SERIES - 1) batch ``b`` writes to, distinct, in no particular order."""
    out: list[int] = []
    for k in ((b * 7) % N_SERIES, (b * 11 + 5) % N_SERIES, (b * 13 + 17) % N_SERIES):
        if k not in out:
            out.append(k)
    return out[:SERIES_PER_BATCH]


def batch_times(b: int) -> list[int]:
    """The times of batch ``b``'s points (the same for each of its series), unique to the batch. Most
    batches move forward in time (a point a minute, windows of 2 h filled and closed); every fourth
    goes backwards from T0, below everything written before it (points out of time order, into
    windows already packed), and every seventh is written newest point first."""
    if b % 4 == 3:
        ts = [T0 - (b * PER_SERIES + j + 1) * MINUTE - 7 for j in range(PER_SERIES)]
    else:
        ts = [T0 + (b * PER_SERIES + j) * MINUTE for j in range(PER_SERIES)]
    return ts[::-1] if b % 7 == 0 else ts


def value(b: int, series: int, j: int) -> float:
    return b * 1000.0 + series + j / 64


def batch_points(b: int) -> dict[tuple[str, int], float]:
    """What batch ``b`` stores: {(series labels' k, t): v}."""
    out: dict[tuple[str, int], float] = {}
    for k in batch_series(b):
        for j, t in enumerate(batch_times(b)):
            out[(str(k), t)] = value(b, k, j)
    return out


def report_seq(b: int) -> int:
    return b + 1


def report_points(b: int) -> dict[int, float]:
    """The points of batch ``b``'s agent report (series ``r``, label k="rep"): {t: v}."""
    return {T0 + b * 10 + j: -float(b) - j / 4 for j in range(REPORT_POINTS)}


def resent(b: int, first: int) -> int | None:
    """The earlier batch whose samples and report batch ``b`` sends again (every fifth batch, one of
    this writer's, acknowledged before ``b`` began): stored already, so none of it is stored again
    (the samples come with other values: the first write wins; the report is a duplicate)."""
    return b - 3 if b % 5 == 4 and b - 3 >= first else None


def make_batch(b: int, first: int, now_ms: int) -> WriteBatch:
    ts = batch_times(b)
    series: list[tuple[str, SeriesSamples | SeriesBlock]] = [
        (TENANT, SeriesSamples(METRIC, {"k": str(k)}, ts, [value(b, k, j) for j in range(len(ts))]))
        for k in batch_series(b)
    ]
    reports = [_report(b)]
    old = resent(b, first)
    if old is not None:
        ts = batch_times(old)
        series += [
            (
                TENANT,
                SeriesSamples(METRIC, {"k": str(k)}, ts, [value(old, k, j) + 0.5 for j in range(len(ts))]),
            )
            for k in batch_series(old)
        ]
        reports.append(_report(old))
    return WriteBatch(reports=reports, series=series, now_ms=now_ms)


def _report(b: int) -> ReportWrite:
    points = [Point(REPORT_METRIC, {"k": "rep"}, t, v) for t, v in report_points(b).items()]
    return ReportWrite(TENANT, AGENT, report_seq(b), points)


def write(path: Path, first: int) -> None:
    store = SqliteStore(path)  # the worker's handle: synchronous = FULL
    out = sys.stdout
    out.write(f"READY {os.getpid()}\n")
    out.flush()
    b = first
    while True:
        store.write_batch(make_batch(b, first, int(time.time() * 1000)))
        out.write(f"ACK {b}\n")
        out.flush()
        b += 1
        # a pause, as between the worker's batches: a writer that never lets go of the write lock
        # starves the compactor (SQLite's busy handler sleeps, and the lock is taken again meanwhile)
        time.sleep(0.002)


def compact(path: Path, clock: int) -> None:
    # the compactor process' handle (store/factory.py, open_store(compactor=True))
    store = SqliteStore(path, cache_kib=COMPACTOR_CACHE_KIB, sync_commits=False)
    out = sys.stdout
    out.write(f"READY {os.getpid()}\n")
    out.flush()
    # now_ms (from CLOCK, far ahead of the writer's) leaps ahead every call: every part is old enough
    # to flush, every flush old enough to pack, so the compactor flushes, packs and gives space back
    # (checkpointing and truncating the WAL) all the time
    now = clock
    n = 0
    while True:
        now += _PACK_AGE_MS + 1
        got = store.compact(now_ms=now)
        if got.chunks_out or got.chunks_in:
            n += 1
            out.write(f"COMPACT {n} {got.chunks_in} {got.chunks_out}\n")
            out.flush()
        if not got.more:
            time.sleep(0.002)


def main() -> None:
    mode, path = sys.argv[1], Path(sys.argv[2])
    if mode == "write":
        write(path, int(sys.argv[3]))
    elif mode == "compact":
        compact(path, int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
