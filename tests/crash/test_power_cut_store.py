"""The embedded store on the power-cut file system (tests/lptest/pcfs.py): kill -9 + power cut, in rounds.

Two processes share the store, as in the worker: a writer with the worker's handle (``SqliteStore(path)``,
synchronous FULL) writing batches, and a compactor with the compactor process' handle
(``sync_commits=False``: synchronous NORMAL, commits without fsync) flushing and packing all the
time. The claim under test (store/embedded/core.py, ``_connect``): a compaction commit lost to a
power cut leaves the old parts and chunks, and the WAL is written in order, so the writer's next
(FULL) commit syncs the compactor's frames with its own: no point whose ``write_batch`` returned
is ever lost or stored twice, whatever instant the power goes.

Both are killed -9 (never closed: a clean close checkpoints and syncs the WAL), with fsyncs hung
first in every other round (the kill then lands inside a commit's sync), then the power is cut
(clean, torn last write, or random unsynced pages reaching the disk). Checked after every cut, on
the same store, whose state builds up round after round:

- every acknowledged batch is there whole: its samples with their values, its agent report's points,
  its seq in the ledger's stored ranges;
- a batch is all or nothing (its samples, its report and its ledger entry together), and the only
  unacknowledged batch that may be there is the one each writer was writing when killed;
- a batch found there after one cut is there after every later one;
- nothing else is there, and no point is stored twice: the points in parts and chunks add up to the
  points a query sees (a query hides a duplicate (series, t)); every fifth batch sends an earlier
  one's samples again with other values, and its report again: the first write wins, once.

Then everything is compacted in-process (flushed, packed, space given back) and the same is checked
again: compaction changes nothing a query sees.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lossproof.store.base import COMPACT_WINDOW_MS
from lossproof.store.embedded.core import COMPACTOR_CACHE_KIB
from lossproof.store.sqlite import SqliteStore
from lptest import PROCS
from lptest.powercut import LineProc, PowerCutFS, require_fuse
from lptest.procs.store_writer import (
    AGENT,
    METRIC,
    REPORT_METRIC,
    TENANT,
    batch_points,
    report_points,
    report_seq,
)

pytestmark = pytest.mark.process

ROUNDS = 18
CUTS = ["clean", "tear", "pages"]
KILLS = ["both", "hung", "writer first", "compactor first"]  # 4 and 3: every pair in 12 rounds
ROUND_BATCHES = 100_000  # batch ids of round r: r * ROUND_BATCHES on
NOW_STEP = 10**13  # the compactors' clocks of round r: from (r + 1) * NOW_STEP (see store_writer.py)
ALL = (-(1 << 62), 1 << 62)


@dataclass
class History:
    acked: set[int] = field(default_factory=set)
    present: set[int] = field(default_factory=set)  # found whole after a cut: must stay
    in_flight: set[int] = field(default_factory=set)  # batches a killed writer may have committed unacked
    # (labels' k, t) -> (batch, v) of every batch a writer may have begun, and the same for reports
    points: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)
    reports: dict[int, tuple[int, float]] = field(default_factory=dict)
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # batch -> (samples, report points)

    def began(self, b: int) -> None:
        if b in self.sizes:
            return
        pts = batch_points(b)
        rep = report_points(b)
        for key, v in pts.items():
            assert key not in self.points, f"batches {self.points[key][0]} and {b} share a point {key}"
            self.points[key] = (b, v)
        for t, v in rep.items():
            assert t not in self.reports
            self.reports[t] = (b, v)
        self.sizes[b] = (len(pts), len(rep))


@dataclass(frozen=True)
class Seen:
    samples: dict[tuple[str, int], float]
    reports: dict[int, float]
    stored_seqs: frozenset[int]
    physical: int  # points in parts and chunks
    report_rows: int


def read_all(store: SqliteStore, path: Path) -> Seen:
    samples: dict[tuple[str, int], float] = {}
    for s in store.query(TENANT, METRIC, *ALL, {}):
        for t, v in s.points:
            samples[(s.labels["k"], t)] = v
    reports: dict[int, float] = {}
    for s in store.query(TENANT, REPORT_METRIC, *ALL, {}):
        assert s.labels == {"k": "rep"}, s.labels
        reports.update(s.points)
    ledger = store.ledger(TENANT, AGENT)
    seqs: set[int] = set()
    if ledger is not None:
        for first, last in ledger.stored:
            seqs.update(range(first, last + 1))
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        con.execute("BEGIN")  # one snapshot
        physical = sum(
            con.execute(f"SELECT coalesce(sum(n), 0) FROM {table}").fetchone()[0]
            for table in ("parts", "chunks")
        )
        report_rows = con.execute("SELECT count(*) FROM reports").fetchone()[0]
    finally:
        con.close()
    return Seen(samples, reports, frozenset(seqs), physical, report_rows)


def check(seen: Seen, h: History, what: str) -> set[int]:
    """The batches there, whole; fails on anything lost, torn, changed, foreign or stored twice."""
    strays = [k for k in seen.samples if k not in h.points]
    strays += [("rep", t) for t in seen.reports if t not in h.reports]
    assert not strays, f"{what}: {len(strays)} points no batch wrote, e.g. {strays[:5]}"
    changed = [k for k, v in seen.samples.items() if h.points[k][1] != v]
    changed += [("rep", t) for t, v in seen.reports.items() if h.reports[t][1] != v]
    assert not changed, f"{what}: {len(changed)} points with another value, e.g. {changed[:5]}"
    count: dict[int, list[int]] = {b: [0, 0] for b in h.sizes}
    for k in seen.samples:
        count[h.points[k][0]][0] += 1
    for t in seen.reports:
        count[h.reports[t][0]][1] += 1
    there = {b for b, (n, r) in count.items() if n or r}
    torn = {b: (count[b], h.sizes[b], report_seq(b) in seen.stored_seqs) for b in there}
    torn = {b: x for b, x in torn.items() if tuple(x[0]) != x[1] or not x[2]}
    assert not torn, f"{what}: batches partly there ((samples, report points) of all, in ledger): {torn}"
    lost = sorted(h.acked - there)
    assert not lost, f"{what}: {len(lost)} acknowledged batches lost (of {len(h.acked)}), e.g. {lost[:10]}"
    gone = sorted(h.present - there)
    assert not gone, f"{what}: batches there after an earlier cut are gone: {gone[:10]}"
    extra = sorted(there - h.acked - h.in_flight - h.present)
    assert not extra, f"{what}: unacknowledged batches there that no writer was writing when killed: {extra}"
    seqs = {report_seq(b) for b in there}
    assert seen.stored_seqs == seqs, (
        f"{what}: the ledger's stored seqs differ from the reports there:"
        f" {sorted(seen.stored_seqs ^ seqs)[:10]}"
    )
    assert seen.report_rows == len(there), f"{what}: {seen.report_rows} report rows for {len(there)} reports"
    logical = len(seen.samples) + len(seen.reports)
    assert seen.physical == logical, (
        f"{what}: parts and chunks hold {seen.physical} points, a query sees {logical}: points stored twice"
    )
    return there


def compact_to_the_end(path: Path, now: int) -> int:
    """Compact in-process with the compactor's handle until nothing is left; the number of calls."""
    store = SqliteStore(path, cache_kib=COMPACTOR_CACHE_KIB, sync_commits=False)
    try:
        calls = 0
        while True:
            calls += 1
            assert calls < 10_000, "compaction does not end"
            now += 400_000  # each call: packing due (common.py, _PACK_AGE_MS)
            if not store.compact(now_ms=now).more:
                return calls
    finally:
        store.close()


def start(args: list[str], log: Path) -> LineProc:
    proc = LineProc([str(PROCS / "store_writer.py"), *args], log)
    proc.wait("READY")
    return proc


def stop(kill: str, writer: LineProc, compactor: LineProc, fs: PowerCutFS, rng: random.Random) -> None:
    """Kill both -9 (``kill9`` below collects their lines), in one of four ways:

    - ``both``: at once, at a random moment;
    - ``hung``: the disk stops answering fsyncs first: the writer is killed inside a commit's sync
      (its frames written, not synced), the compactor perhaps inside a checkpoint's;
    - ``writer first``: the compactor goes on alone for a while, its commits (no fsync) the last
      thing written before the cut: a lost compaction must leave the parts and chunks it read;
    - ``compactor first``: right after a compaction committed (no fsync); the writer then
      acknowledges a few more batches, whose commits (FULL) must make the compaction durable too.
    """
    if kill == "both":
        time.sleep(rng.random() * 0.05)
    elif kill == "hung":
        fs.hang_fsync()
        time.sleep(0.05 + rng.random() * 0.2)
        writer.proc.kill()
        compactor.proc.kill()
        fs.slow_fsync(0)  # the hung calls fail (EIO) in processes already killed
    elif kill == "writer first":
        writer.proc.kill()
        with contextlib.suppress(AssertionError):  # it may run out of work
            compactor.wait("COMPACT ", compactor.count("COMPACT ") + 1 + rng.randrange(3), timeout=2)
    else:
        compactor.wait("COMPACT ", compactor.count("COMPACT ") + 1)
        compactor.proc.kill()
        writer.wait("ACK ", writer.count("ACK ") + 1 + rng.randrange(4))
    compactor.proc.kill()
    writer.proc.kill()


def test_store_survives_kill9_and_power_cuts(tmp_path: Path) -> None:
    require_fuse()
    with PowerCutFS(tmp_path, seed=3) as fs:
        data = fs.root / "data"
        # The harness makes the store's directory durable (the log's directory code does so in
        # the worker); the store creates the file itself, in the first round.
        data.mkdir()
        fd = os.open(fs.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        path = data / "store.db"
        h = History()
        compactions = 0
        rng = random.Random(3)
        for rnd in range(ROUNDS):
            how = CUTS[rnd % len(CUTS)]
            first = rnd * ROUND_BATCHES
            clock = (rnd + 1) * NOW_STEP
            compactor = start(["compact", str(path), str(clock)], tmp_path / "compactor.log")
            writer = start(["write", str(path), str(first)], tmp_path / "writer.log")
            writer.wait("ACK ", 20 + rng.randrange(40), timeout=60)
            compactor.wait("COMPACT ", 2 + rng.randrange(3), timeout=60)
            kill = KILLS[rnd % len(KILLS)]
            stop(kill, writer, compactor, fs, rng)
            lines = writer.kill9()
            compactor.kill9()
            compactions += compactor.count("COMPACT ")
            fs.slow_fsync(0)
            acks = [int(x.split()[1]) for x in lines if x.startswith("ACK ")]
            assert acks == list(range(first, first + len(acks))), "the writer acknowledged out of order"
            for b in range(first, first + len(acks) + 1):
                h.began(b)
            h.acked.update(acks)
            h.in_flight.add(first + len(acks))  # begun, perhaps committed, not acknowledged

            fs.power_cut(how)

            what = f"round {rnd} (kill {kill}, cut {how}, {len(acks)} acked)"
            store = SqliteStore(path)
            try:
                before = read_all(store, path)
                there = check(before, h, f"{what}, after the cut")
                h.present |= there
                compact_to_the_end(path, clock + NOW_STEP // 2)
                after = read_all(store, path)
                check(after, h, f"{what}, compacted in-process")
                assert after.samples == before.samples and after.reports == before.reports, (
                    f"{what}: compaction changed what a query sees"
                )
                # all packed: one chunk per series and window, no part left
                con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
                try:
                    parts = con.execute("SELECT count(*) FROM parts").fetchone()[0]
                    dup_windows = con.execute(
                        "SELECT count(*) FROM (SELECT series_id, t_min / ? AS w FROM chunks"
                        " GROUP BY series_id, w HAVING count(*) > 1)",
                        (COMPACT_WINDOW_MS,),
                    ).fetchone()[0]
                finally:
                    con.close()
                assert parts == 0 and dup_windows == 0, f"{what}: not compacted to the end"
            finally:
                store.close()
        assert len(h.acked) > 500 and compactions > 10, (len(h.acked), compactions)
