"""Model-based test of the agent spool: random appends, acks, drops, replays, clock jumps, crashes,
torn writes and truncated tails against a simple model of what the agent handed out.

Invariants checked after every step:

* a seq is never handed out twice, across reopen, torn writes and lost data;
* every seq ever handed out is exactly one of: pending (and reads back byte for byte), acknowledged,
  or dropped with a reason — nothing vanishes silently (a report destroyed on disk while pending
  comes back as dropped ``spool_damaged``);
* ``spool_full`` drops are always older than everything still pending, and pending data stays
  under ``max_spool_bytes`` (or is a single report);
* an acknowledged report inside the replay window that the disk did not lose can be replayed, with
  its exact bytes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lossproof.agent.ranges import contains, normalize
from lossproof.agent.spool import DAMAGED, SPOOL_FULL, Spool, SpoolLimits
from lossproof.agent.spool.format import list_segments, scan_segment, segment_path

WINDOW_MS = 100_000


class SpoolModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="lossproof-spool-model-"))
        self.now = 1_767_225_600_000
        self.spool: Spool | None = None
        self.handed = 0
        self.contents: dict[int, bytes] = {}
        self.acked_at: dict[int, int] = {}
        self.lost: set[int] = set()  # records the disk lost (truncated tails)
        self.counter = 0

    @initialize(max_bytes=st.sampled_from([4096, 8192, 2**30]), window_bytes=st.sampled_from([0, 2**30]))
    def setup(self, max_bytes: int, window_bytes: int) -> None:
        self.limits = SpoolLimits(
            max_spool_bytes=max_bytes,
            window_seconds=WINDOW_MS / 1000,
            window_bytes=window_bytes,
            segment_bytes=4096,
        )

    def _clock(self) -> int:
        return self.now

    def _open(self) -> Spool:
        if self.spool is None:
            self.spool = Spool(self.tmp, self.limits, clock=self._clock)
            assert self.spool.last_seq >= self.handed
        return self.spool

    def _close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def teardown(self) -> None:
        self._close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- rules ------------------------------------------------------------------------------------

    @rule(n=st.integers(1, 5), size=st.integers(0, 900), compressible=st.booleans())
    def append(self, n: int, size: int, compressible: bool) -> None:
        s = self._open()
        made: dict[int, bytes] = {}

        def build(seq: int) -> bytes:
            self.counter += 1
            filler = b"z" * size if compressible else os.urandom(size)
            made[seq] = b"%d/%d|" % (seq, self.counter) + filler
            return made[seq]

        seqs = s.append([build] * n)
        assert seqs == list(range(seqs[0], seqs[0] + n))
        assert seqs[0] > self.handed, f"seq {seqs[0]} handed out again (max so far {self.handed})"
        self.handed = seqs[-1]
        self.contents.update(made)

    @precondition(lambda self: self.handed > 0)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        s = self._open()
        pending = s.pending_seqs(10_000)
        if not pending:
            return
        chosen = data.draw(st.lists(st.sampled_from(pending), max_size=len(pending)), label="acked")
        s.ack(chosen)
        for seq in chosen:
            self.acked_at.setdefault(seq, self.now)

    @rule()
    def report_drops(self) -> None:
        s = self._open()
        s.drops_reported(s.unreported_drops())

    @rule(ms=st.integers(0, 2 * WINDOW_MS))
    def time_passes(self, ms: int) -> None:
        self.now += ms
        self._open().maintain()

    @precondition(lambda self: self.handed > 0)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        s = self._open()
        a = data.draw(st.integers(1, self.handed), label="first")
        b = data.draw(st.integers(a, self.handed + 3), label="last")
        resend = s.plan_replay([(a, b)])
        got = dict(s.read(resend))
        for seq in resend:
            assert a <= seq <= b and not s.is_pending(seq)
            assert got[seq] == self.contents[seq], f"replayed seq {seq} with other bytes"

    @rule()
    def reopen(self) -> None:
        self._close()
        self._open()

    @precondition(lambda self: list_segments(self.tmp))
    @rule(size=st.integers(1, 300))
    def torn_write(self, size: int) -> None:
        """kill -9 in the middle of an append: part of a record that was never acknowledged."""
        self._close()
        last = segment_path(self.tmp, list_segments(self.tmp)[-1])
        with open(last, "ab") as f:
            f.write(b"LPAR" + os.urandom(size))

    @precondition(lambda self: list_segments(self.tmp))
    @rule(data=st.data())
    def truncate_tail(self, data: st.DataObject) -> None:
        """Power loss (or a bad disk) took the end of the last file, fsync'd records included."""
        self._close()
        last = segment_path(self.tmp, list_segments(self.tmp)[-1])
        size = last.stat().st_size
        cut = data.draw(st.integers(0, size), label="cut")
        for rec in scan_segment(last).records:
            if rec.pos + rec.size > cut:
                self.lost.add(rec.seq)
        os.truncate(last, cut)

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def every_seq_is_accounted_for(self) -> None:
        if self.spool is None:
            return
        s = self.spool
        assert s.last_seq == self.handed
        pending = s.pending_seqs(100_000)
        pending_set = set(pending)
        dropped = s.dropped()
        dropped_ranges = normalize((a, b) for a, b, _ in dropped)
        got = dict(s.read(pending))
        for seq in pending:
            assert seq not in self.acked_at, f"seq {seq} acknowledged but still pending"
            assert got.get(seq) == self.contents[seq], f"pending seq {seq} does not read back"
        for seq in range(1, self.handed + 1):
            if seq in pending_set or seq in self.acked_at:
                continue
            assert contains(dropped_ranges, seq), f"seq {seq} vanished without being reported dropped"
        for a, b, why in dropped:
            assert why, (a, b)
            if why == DAMAGED:
                assert all(seq in self.lost for seq in range(a, b + 1)), f"false damage {a}-{b}"
            if why == SPOOL_FULL and pending:
                assert b < pending[0], f"spool_full dropped {a}-{b} while older {pending[0]} is kept"
        st_ = s.stats()
        assert st_.pending_reports == len(pending)
        assert st_.pending_bytes <= self.limits.max_spool_bytes or len(pending) <= 1

    @invariant()
    def acknowledged_reports_stay_for_the_window(self) -> None:
        if self.spool is None or self.limits.window_bytes == 0:
            return
        s = self.spool
        dropped_ranges = normalize((a, b) for a, b, _ in s.dropped())
        want = [
            seq
            for seq, at in self.acked_at.items()
            if self.now - at < WINDOW_MS and seq not in self.lost and not contains(dropped_ranges, seq)
        ]
        got = dict(s.read(want))
        for seq in want:
            assert got.get(seq) == self.contents[seq], f"acked seq {seq} left the window early"


TestSpoolModel = SpoolModel.TestCase
TestSpoolModel.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
