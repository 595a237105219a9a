"""Turns what was collected into reports in the spool: one per interval (more if it is very busy).

Each interval the buffered points (``Agent.record``, host metrics) and the StatsD aggregates become
one report; a burst larger than ``max_points_per_report`` is cut into several reports at once, and
their spool appends share one fsync. If the spool cannot be written, the points wait in memory (up
to a bound, then the oldest are dropped) and the next interval tries again. Dropped points never got
a seq, so the server could not know of them: they are given one, recorded as dropped with their
count and why (:meth:`Spool.record_unspooled`), and so reach the server's per-agent accounting as
lost like any dropped report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lossproof.agent.metrics import AgentMetrics
from lossproof.agent.report import Buffer, Point, encode_report
from lossproof.agent.spool import Spool, SpoolError
from lossproof.obs.logging import get

log = get(__name__)

# Points kept in memory while the spool cannot be written, in reports' worth.
MAX_BACKLOG_REPORTS = 10
# While appends keep failing, dropped points are recorded at most this often: one seq for a whole
# outage's drops rather than one per interval (each a lost range the server keeps).
UNSPOOLED_RECORD_SECONDS = 60.0


class Reporter:
    def __init__(
        self,
        interval: float,
        max_points: int,
        buffer: Buffer,
        spool: Spool,
        metrics: AgentMetrics,
        on_spooled: Callable[[], None],
        sources: list[Callable[[int], list[Point]]],
    ) -> None:
        self.interval = interval
        self.max_points = max_points
        self.buffer = buffer
        self.spool = spool
        self.metrics = metrics
        self.on_spooled = on_spooled
        self.sources = sources
        self._lock = threading.Lock()  # one report-making at a time (the thread, flush(), stop())
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-reporter", daemon=True)
        self._last_error = 0.0
        self.spool_ok = True
        # points dropped (and why) that no seq records yet, and when that was last tried
        self._unspooled = 0
        self._unspooled_error = ""
        self._unspooled_tried = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        """The buffer holds a full report: cut it now rather than at the end of the interval."""
        self._kick.set()

    def stop(self) -> list[int]:
        """Stop the thread and spool whatever was collected since the last report."""
        self._stop.set()
        self._kick.set()
        self._thread.join(timeout=5)
        seqs = self.report(include_sources=True)
        with self._lock:
            # points the spool would not take die with the process: recorded as dropped like the rest
            left = self.buffer.drain()
            if left:
                self._unspooled += len(left)
                why = "the agent stopped while its spool could not be written"
                self._unspooled_error = self._unspooled_error or why
                self.metrics.points_dropped.inc(len(left))
            self._record_unspooled()
            if self._unspooled:
                log.error(
                    "agent.unspooled_points_unrecorded", points=self._unspooled, error=self._unspooled_error
                )
        return seqs

    def _run(self) -> None:
        next_at = time.monotonic() + self.interval
        while not self._stop.is_set():
            self._kick.wait(max(0.0, next_at - time.monotonic()))
            self._kick.clear()
            if self._stop.is_set():
                return
            due = time.monotonic() >= next_at
            if due:
                next_at += self.interval
                if next_at < time.monotonic():  # fell behind (slow disk): do not burst to catch up
                    next_at = time.monotonic() + self.interval
            self.report(include_sources=due)
            if due:
                try:
                    self.spool.maintain()
                except (SpoolError, OSError) as e:
                    log.error("agent.spool_maintenance_failed", error=str(e))

    def report(self, include_sources: bool = True) -> list[int]:
        """Spool everything collected so far as reports now; returns their seqs."""
        with self._lock:
            now = time.time_ns() // 1_000_000
            points = self.buffer.drain()
            if include_sources:
                for src in self.sources:
                    points.extend(src(now))
            if not points:
                self._record_unspooled()
                return []
            chunks = [points[i : i + self.max_points] for i in range(0, len(points), self.max_points)]
            builders = [self._builder(now, chunk) for chunk in chunks]
            try:
                seqs = self.spool.append(builders)
            except SpoolError as e:
                self._keep(points, str(e))
                if time.monotonic() - self._unspooled_tried >= UNSPOOLED_RECORD_SECONDS:
                    self._record_unspooled()
                return []
            self.spool_ok = True
            self._record_unspooled()
            self.metrics.reports_created.inc(len(seqs))
            self.metrics.points.inc(len(points))
            self.on_spooled()
            return seqs

    def _record_unspooled(self) -> None:
        """Give the points dropped so far a seq, recorded as dropped (call under the lock)."""
        if not self._unspooled:
            return
        self._unspooled_tried = time.monotonic()
        try:
            seq = self.spool.record_unspooled(self._unspooled, self._unspooled_error)
        except SpoolError as e:
            log.error("agent.unspooled_record_failed", error=str(e), points=self._unspooled)
            return
        log.warning("agent.unspooled_recorded", seq=seq, points=self._unspooled)
        self._unspooled, self._unspooled_error = 0, ""
        self.on_spooled()  # the sender carries the drop to the server

    @staticmethod
    def _builder(now: int, chunk: list[Point]) -> Callable[[int], bytes]:
        return lambda seq: encode_report(seq, now, chunk)

    def _keep(self, points: list[Point], error: str) -> None:
        self.spool_ok = False
        self.metrics.spool_errors.inc()
        limit = MAX_BACKLOG_REPORTS * self.max_points
        kept = points[-limit:]
        lost = len(points) - len(kept)
        self.buffer.put_back(kept)
        now = time.monotonic()
        if lost or now - self._last_error > 10:
            self._last_error = now
            # These points never got a seq, so the server cannot account for them: say it here.
            log.error("agent.spool_write_failed", error=error, points_waiting=len(kept), points_dropped=lost)
        if lost:
            self.metrics.points_dropped.inc(lost)
            self._unspooled += lost
            self._unspooled_error = self._unspooled_error or error
