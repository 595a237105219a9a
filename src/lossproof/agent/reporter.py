"""Turns what was collected into reports in the spool: one per interval (more if it is very busy).

Each interval the buffered points (``Agent.record``, host metrics) and the StatsD aggregates become
one report; a burst larger than ``max_points_per_report`` is cut into several reports at once, and
their spool appends share one fsync. If the spool cannot be written, the points wait in memory (up
to a bound, then the oldest are dropped) and the next interval tries again.

Data lost before it was spooled (those dropped points; StatsD packets the kernel dropped because the
agent did not read them in time) never got a seq, so the server could not know of it: each loss is
given one, recorded as dropped with how much and why (:meth:`Spool.record_lost`), and so reaches the
server's per-agent accounting as lost like any dropped report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lossproof.agent.metrics import AgentMetrics
from lossproof.agent.report import Buffer, Point, encode_report
from lossproof.agent.spool import STATSD_DROPPED, UNSPOOLED, Spool, SpoolError
from lossproof.obs.logging import get

log = get(__name__)

# Points kept in memory while the spool cannot be written, in reports' worth.
MAX_BACKLOG_REPORTS = 10
# While appends keep failing, losses are recorded at most this often, and StatsD drops always: one
# seq for a whole outage's (or drop storm's) drops rather than one per interval (each a lost range
# the server keeps).
LOSS_RECORD_SECONDS = 60.0


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
        # losses no seq records yet: points dropped from memory (and the first error), StatsD packets
        # dropped by the kernel; under a lock of their own, which no fsync holds (the StatsD thread
        # must not wait for one: it would drop more)
        self._loss_lock = threading.Lock()
        self._unspooled = 0
        self._unspooled_error = ""
        self._statsd_dropped = 0
        self._losses_tried = time.monotonic()
        self._statsd_recorded = -LOSS_RECORD_SECONDS  # (monotonic) the first is recorded at once

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
                self._points_lost(len(left), "the agent stopped while its spool could not be written")
            self._record_losses(stopping=True)
            with self._loss_lock:
                if self._unspooled or self._statsd_dropped:
                    log.error(
                        "agent.losses_unrecorded",
                        points=self._unspooled,
                        statsd_packets=self._statsd_dropped,
                        error=self._unspooled_error,
                    )
        return seqs

    def statsd_dropped(self, packets: int) -> None:
        """The kernel dropped ``packets`` StatsD packets (the agent's receive buffer was full): from
        the StatsD thread. Recorded as lost with the next report."""
        self.metrics.statsd_dropped.inc(packets)
        with self._loss_lock:  # (logged when recorded, once a report: a drop storm logs no storm)
            self._statsd_dropped += packets

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
                self._record_losses()
                return []
            chunks = [points[i : i + self.max_points] for i in range(0, len(points), self.max_points)]
            builders = [self._builder(now, chunk) for chunk in chunks]
            try:
                seqs = self.spool.append(builders)
            except SpoolError as e:
                self._keep(points, str(e))
                if time.monotonic() - self._losses_tried >= LOSS_RECORD_SECONDS:
                    self._record_losses()
                return []
            self.spool_ok = True
            self._record_losses()
            self.metrics.reports_created.inc(len(seqs))
            self.metrics.points.inc(len(points))
            self.on_spooled()
            return seqs

    def _record_losses(self, stopping: bool = False) -> None:
        """Give each loss no seq records yet a seq, recorded as dropped (call under ``_lock``)."""
        with self._loss_lock:
            points, error, packets = self._unspooled, self._unspooled_error, self._statsd_dropped
        if not stopping and time.monotonic() - self._statsd_recorded < LOSS_RECORD_SECONDS:
            packets = 0  # (counted on: recorded with the next ones)
        if not points and not packets:
            return
        self._losses_tried = time.monotonic()
        if points:
            reason = f"{UNSPOOLED}: {_n(points, 'point')} dropped in the agent before they could be spooled"
            if not self._record(f"{reason} ({error})"):
                return
            with self._loss_lock:
                self._unspooled -= points
                if not self._unspooled:
                    self._unspooled_error = ""
        if packets:
            reason = f"{STATSD_DROPPED}: {_n(packets, 'StatsD packet')} dropped by the kernel"
            if not self._record(f"{reason} before the agent read them (its receive buffer was full)"):
                return
            with self._loss_lock:
                self._statsd_dropped -= packets
            self._statsd_recorded = time.monotonic()
        self.on_spooled()  # the sender carries the drops to the server

    def _record(self, reason: str) -> bool:
        try:
            seq = self.spool.record_lost(reason)
        except SpoolError as e:
            log.error("agent.loss_record_failed", error=str(e), reason=reason)
            return False
        log.warning("agent.loss_recorded", seq=seq, reason=reason)
        return True

    def _points_lost(self, n: int, error: str) -> None:
        self.metrics.points_dropped.inc(n)
        with self._loss_lock:
            self._unspooled += n
            self._unspooled_error = self._unspooled_error or error

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
            self._points_lost(lost, error)


def _n(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"
