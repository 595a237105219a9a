"""``lossproof replay``: drain a fallback journal into the main ingest, at a bounded rate, resumably.

Each journal record is POSTed to ``URL/v1/reports`` with its original Content-Type,
Content-Encoding and body, ``Authorization: Bearer <replay key>`` and ``X-Lossproof-Tenant: <the
tenant the fallback authenticated>``; records of one agent read together go in one request where
they merge (:mod:`lossproof.fallback.batching`; a merged request refused with a 4xx is sent again
as its records, one by one, each then answered as below). The main ingest is idempotent per
(tenant, agent, seq), so sending a record twice is harmless; skipping one is not, so:

- 2xx: acknowledged durable by the main ingest.
- 408, 425, 429, 5xx, connection errors, timeouts: transient. Retried with exponential backoff
  (full jitter, 0.1 s doubling up to 10 s) until it succeeds or the replay is stopped. Never
  skipped. ``Retry-After`` may only lengthen a wait (capped at 60 s), never shorten it: a server
  answering ``503`` with ``Retry-After: 0`` still gets the exponential backoff.
- 401, 403, 404, 405: the replay itself is misconfigured (wrong key, wrong URL): stop, skip nothing.
- any other 4xx (400, 413, 415, ...): this request can never be accepted. Its agent had it
  acknowledged (by the fallback) and will never send it again, so the main ingest's ledger must
  hear of it: for a native request, a small request for the same tenant and agent carrying only
  ``dropped`` ranges (its seqs, reason ``replay rejected: <status> <error>``, plus any ``dropped``
  ranges the agent had put in the rejected body, with their own reasons) is sent, with the same
  retries; the ledger records those seqs as lost with that reason (a seq that is, or later gets,
  stored stays stored: the ledger's "stored wins"). Then the request is appended (with its body,
  base64, and the outcome of that report under ``ledger``) to ``rejected.jsonl`` in the state
  directory (``D/replay/`` unless ``--state-dir`` names another) and fsync'd, and only then counted
  as done (if that write fails, the replay stops there: a loss nobody can find is no account). If
  the ledger report itself is refused with a 4xx, the line says so (``ledger.reported: false``
  with the answer): the record of the loss is kept either way. A replay stopped before that point
  sends the request again next time.

Progress is the journal position of the first request not yet done; everything before it is done.
It is saved atomically about once a second and at the end, so an interrupted replay resumes where
it stopped (re-sending, harmlessly, at most the requests in flight then and those done in its last
second).

A full disk does not stop a replay. The fallback's disk is the one that fills during an outage,
and the journal on it must still be drained, so replay needs no new space there: one replay per
data dir is a ``flock`` on the data dir itself (no lock file), and saving progress is best effort
where the disk refuses for want of room (ENOSPC, EDQUOT, EROFS): logged
(``replay.progress_not_saved``), then the replay goes on. That costs only sending again, after a
restart, what was sent since the last progress saved (the main ingest is idempotent); nothing is
skipped, since only a save that succeeded ever moves the resume point.

Damaged journal bytes (a CRC mismatch, a payload that does not decode, a bad segment header: the
reader's :class:`~lossproof.fallback.journal.JournalCorrupt`) stop the replay once everything
before them is done, unless ``--skip-damaged``: then each damaged stretch, up to the next intact
record (:class:`~lossproof.fallback.journal.Skipped`), is logged (``replay.skipped_damage``) and
counted, and the progress passes it in journal order, as it passes a record that is done. Its
reports are not sent; the main ingest's ledger finds their seqs as holes in each agent's seqs once
the agent's later reports arrive, and asks the agent for them (docs/fallback.md, "Damage").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import msgspec

from lossproof import aio
from lossproof.durable import fsync_dir, make_dirs
from lossproof.fallback import batching
from lossproof.fallback import journal as jn
from lossproof.fallback import progress as pg
from lossproof.fallback.pacing import (
    BATCHES_IN_FLIGHT,
    DEFAULT_BATCH_POINTS,
    DEFAULT_CONCURRENCY,
    READ_AHEAD_BYTES,
    Budget,
    TokenBucket,
    backoff_delay,
)
from lossproof.fallback.pacing import retry_after as parse_retry_after
from lossproof.fallback.rejected import LOST_RANGES_PER_REQUEST, lost_ranges
from lossproof.fallback.tracker import Slot, Tracker
from lossproof.obs.logging import get
from lossproof.protocol import native
from lossproof.protocol.ack import PROTOCOL_HEADER, NotAcknowledged, acknowledged, from_lossproof

log = get(__name__)

FATAL = frozenset({401, 403, 404, 405})
MAX_REJECTED_SHOWN = 20
# a progress save that fails with one of these is skipped (logged): the disk has no room for it
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
NO_ROOM_LOG_EVERY = 60.0  # seconds between two logs of progress saves failing in a row


class ReplayError(Exception):
    """Stops the replay; the message is one line for the user."""


@dataclass
class ReplayOptions:
    data_dir: Path
    url: str
    api_key: str
    rate: float | None = None  # requests/s
    rate_bytes: float | None = None  # body bytes/s
    concurrency: int = DEFAULT_CONCURRENCY
    batch_points: int = DEFAULT_BATCH_POINTS  # 0: one request per record
    follow: bool = False
    prune: bool = False
    retention_seconds: float = 86400.0
    from_start: bool = False
    state_dir: Path | None = None  # progress and rejected.jsonl; None: data_dir/replay
    request_timeout: float = 60.0
    save_interval: float = 1.0
    progress_interval: float | None = None  # default: 0.2 s on a tty, 5 s otherwise
    skip_damaged: bool = False  # go on past damaged journal bytes (logged, counted) instead of stopping


@dataclass
class Summary:
    url: str
    requests: int = 0  # journal records done (the requests the fallback received)
    posts: int = 0  # requests sent to the main ingest, retries not counted (merged: batching.py)
    reports: int = 0
    points: int = 0
    bytes: int = 0
    journal_bytes: int = 0
    seconds: float = 0.0
    rejected: int = 0
    unreported: int = 0  # rejected native requests whose seqs the ledger could not be told about
    retries: int = 0
    pruned: int = 0
    interrupted: bool = False
    error: str | None = None
    rejected_path: Path | None = None
    progress_unsaved: str | None = None  # why the last progress save failed, if it did
    skipped: int = 0  # damaged stretches of the journal passed over (--skip-damaged)
    skipped_bytes: int = 0

    def line(self) -> str:
        rate = self.requests / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"replayed {self.requests:,} requests ({self.reports:,} reports, {self.points:,} points, "
            f"{self.bytes / 2**20:,.1f} MiB) to {self.url} in {self.posts:,} requests, {self.seconds:.1f} s: "
            f"{rate:,.0f} journal requests/s"
        )
        if self.retries:
            text += f"; {self.retries:,} retries"
        if self.rejected:
            text += f"; {self.rejected:,} REJECTED (see {self.rejected_path})"
            if self.unreported:
                text += (
                    f"; {self.unreported:,} of them could NOT be recorded as lost in the ledger "
                    "(ledger.reported false)"
                )
        if self.skipped:
            text += (
                f"; SKIPPED {self.skipped:,} damaged stretch{'es' if self.skipped != 1 else ''} of the "
                f"journal ({self.skipped_bytes:,} bytes; their reports were not sent: see the "
                "replay.skipped_damage events)"
            )
        if self.progress_unsaved:
            text += f"; progress NOT saved ({self.progress_unsaved}: a rerun sends again, harmlessly)"
        if self.pruned:
            text += f"; pruned {self.pruned} segments"
        if self.interrupted:
            text += "; interrupted (run again to continue)"
        return text


def _acquire_lock(data_dir: Path) -> int:
    """One replay per data dir: an exclusive ``flock`` on the directory itself, which exists
    already, so that taking it needs no disk space (a lock file needs an inode, and a pid written
    into it a block, on the disk an outage fills)."""
    try:
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ReplayError(f"{data_dir}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _flock_holder(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            who = f"pid {holder}" if holder else "another process"
            raise ReplayError(f"another replay ({who}) is running from {data_dir}") from None
        raise ReplayError(f"cannot lock {data_dir} (one replay at a time): {e.strerror or e}") from None
    return fd


def _flock_holder(fd: int) -> str:
    """The pid holding a flock on ``fd``'s file, from /proc/locks ("" if it cannot be told): for the
    error message only, since no pid is written anywhere."""
    st = os.fstat(fd)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with contextlib.suppress(OSError), open("/proc/locks", encoding="ascii", errors="replace") as f:
        for line in f:
            # "1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF" (waiters have "->" after the number)
            parts = line.split()
            if "FLOCK" in parts[1:3] and where in parts:
                return parts[parts.index(where) - 1]
    return ""


def _fmt_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


_Queue = asyncio.Queue[list[tuple[jn.Record, Slot]] | None]


class Replay:
    def __init__(self, opts: ReplayOptions, err: TextIO | None = None) -> None:
        self.opts = opts
        self.url = opts.url.rstrip("/")
        self.endpoint = self.url + "/v1/reports"
        self.journal = jn.journal_dir(opts.data_dir)
        self.err = err if err is not None else sys.stderr
        self.tty = self.err.isatty()
        self.state_dir = opts.state_dir or pg.replay_dir(opts.data_dir)
        self.summary = Summary(self.url, rejected_path=self.state_dir / pg.REJECTED_FILE)
        self.stop = asyncio.Event()
        self.fatal: str | None = None
        self.total_bytes = 0  # journal bytes from the start position to the end seen so far
        self.read_bytes = 0  # journal bytes handed to the senders
        self._base_requests = 0
        self._save_lock = threading.Lock()
        self._last_position: jn.Position | None = None
        self._saved_position = jn.Position(-1, -1)
        self._unsaved = 0  # progress saves that failed in a row for want of room
        self._unsaved_logged = 0.0
        self._last_warn = 0.0
        self._last_transient = ""
        self._req_bucket = TokenBucket(opts.rate, max(1.0, opts.rate / 10)) if opts.rate else None
        self._byte_bucket = (
            TokenBucket(opts.rate_bytes, max(2**20, opts.rate_bytes / 10)) if opts.rate_bytes else None
        )
        self.progress: pg.Progress | None = None
        self.tracker: Tracker | None = None
        self.budget = Budget(READ_AHEAD_BYTES)  # records queued and in flight
        # points in flight: as many as BATCHES_IN_FLIGHT full merged requests, however many
        # --concurrency allows (each request is checked in one go by the main ingest's event
        # loop, where a live agent's request waits behind those before it: pacing.py)
        self.points_budget = Budget(BATCHES_IN_FLIGHT * opts.batch_points) if opts.batch_points else None

    # --- checks ----------------------------------------------------------------------------------

    def preflight(self) -> None:
        d = self.opts.data_dir
        if not d.is_dir():
            raise ReplayError(f"{d}: no such directory")
        if not self.journal.is_dir():
            raise ReplayError(f"{d}: not a fallback data dir (no {jn.JOURNAL_DIR}/ inside)")
        if not self.url.startswith(("http://", "https://")):
            raise ReplayError(f"--to {self.opts.url!r}: expected http://host:port or https://...")

    async def check_target(self, session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=10)) as r:
                await r.read()
                if r.status == 503:
                    self.warn(f"{self.url}/healthz says 503: the ingest is not accepting yet; will retry")
                elif r.status >= 400:
                    self.warn(f"{self.url}/healthz answered {r.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise ReplayError(f"cannot reach {self.url}: {e or type(e).__name__}") from None

    # --- output ----------------------------------------------------------------------------------

    def warn(self, msg: str) -> None:
        if self.tty:
            self.err.write("\r\x1b[K")
        self.err.write(f"replay: {msg}\n")
        self.err.flush()

    def transient(self, msg: str) -> None:
        self.summary.retries += 1
        self._last_transient = msg
        now = time.monotonic()
        if now - self._last_warn >= 5.0:
            self._last_warn = now
            self.warn(f"{msg}; retrying (never skipped)")

    async def ticker(self, started: float) -> None:
        interval = self.opts.progress_interval or (0.2 if self.tty else 5.0)
        window: deque[tuple[float, int, int]] = deque()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            s = self.summary
            window.append((now, s.requests, s.journal_bytes))
            while len(window) > 2 and now - window[0][0] > 5.0:
                window.popleft()
            t0, r0, b0 = window[0]
            dt = now - t0
            req_rate = (s.requests - r0) / dt if dt > 0 else 0.0
            byte_rate = (s.journal_bytes - b0) / dt if dt > 0 else 0.0
            if dt <= 0:
                el = now - started
                req_rate = s.requests / el if el > 0 else 0.0
                byte_rate = s.journal_bytes / el if el > 0 else 0.0
            total = max(self.total_bytes, 1)
            left = max(0, self.total_bytes - s.journal_bytes)
            pct = 100.0 * s.journal_bytes / total if self.total_bytes else 100.0
            eta = left / byte_rate if byte_rate > 0 else float("inf")
            line = (
                f"replay {pct:5.1f}%  {s.requests:,} requests  "
                f"{s.journal_bytes / 2**20:,.1f}/{self.total_bytes / 2**20:,.1f} MiB  "
                f"{req_rate:,.0f} req/s  {byte_rate / 2**20:,.1f} MiB/s  ETA {_fmt_eta(eta)}"
            )
            if s.rejected:
                line += f"  {s.rejected} rejected"
            if s.skipped:
                line += f"  {s.skipped} damaged skipped"
            if self._last_transient and now - self._last_warn < 10:
                line += "  (retrying)"
            if self.tty:
                self.err.write("\r\x1b[K" + line)
            else:
                self.err.write(line + "\n")
            self.err.flush()

    # --- the work --------------------------------------------------------------------------------

    def _count(self, rec: jn.Record) -> None:
        s = self.summary
        s.requests += 1
        s.reports += rec.entry.reports
        s.points += rec.entry.points
        s.bytes += len(rec.entry.body)
        s.journal_bytes += rec.size

    def _skipped(self, it: jn.Skipped) -> None:
        """Account for damaged journal bytes passed over: one event each, and the summary's count.
        The reports in them are not sent; the main ingest's ledger finds their seqs as holes once
        the agent's later reports arrive (docs/fallback.md, "Damage")."""
        s = self.summary
        s.skipped += 1
        s.skipped_bytes += it.size
        s.journal_bytes += it.size
        self.read_bytes += it.size
        log.warning(
            "replay.skipped_damage",
            file=str(it.path),
            from_byte=it.pos,
            to_byte=it.end,
            bytes=it.size,
            reason=it.reason,
            after_index=it.after_index,
            next_index=it.next_index,
            consequence="the reports in these bytes are not sent; the pipeline's ledger shows their "
            "seqs missing once the agents' later reports arrive, and asks the agents to resend them",
        )

    async def flush(self, queue: _Queue, pending: list[tuple[jn.Record, Slot]]) -> None:
        """Queue the records read: those of one agent together, a request each
        (:func:`batching.batches`)."""
        for batch in batching.batches([rec for rec, _ in pending], self.opts.batch_points):
            await queue.put([pending[i] for i in batch])
        pending.clear()

    async def produce(self, queue: _Queue, start: jn.Position | None) -> None:
        assert self.tracker is not None
        reader = jn.JournalReader(self.journal, start, skip_damaged=self.opts.skip_damaged)
        pending: list[tuple[jn.Record, Slot]] = []  # read, not yet queued
        try:
            while not self.stop.is_set():
                await asyncio.to_thread(reader.refresh)
                remaining = await asyncio.to_thread(reader.remaining_bytes)
                self.total_bytes = self.read_bytes + remaining
                while not self.stop.is_set():
                    items, at_end = await asyncio.to_thread(reader.read)
                    for it in items:
                        if isinstance(it, jn.Boundary):
                            self.tracker.done(self.tracker.add(it.next_position, it.left))
                            continue
                        if isinstance(it, jn.Skipped):
                            # done as soon as it is read, but the progress passes it only once
                            # every record before it is done (the tracker's order), like a record
                            self._skipped(it)
                            self.tracker.done(self.tracker.add(it.next_position))
                            continue
                        if not self.budget.fits(it.size):
                            await self.flush(queue, pending)  # (what it holds frees the budget)
                        await self.budget.take(it.size)
                        pending.append((it, self.tracker.add(it.next_position)))
                        self.read_bytes += it.size
                    await self.flush(queue, pending)
                    if at_end:
                        break
                if not self.opts.follow:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 0.5)
        except jn.JournalCorrupt as e:
            # everything read before the damage is still sent; then the replay stops
            self.fatal = (
                f"{e} (replay stops at damage; to skip the damaged bytes and replay what follows them, "
                "run again with --skip-damaged: docs/fallback.md)"
            )
        except jn.JournalError as e:
            self.fatal = str(e)
        except OSError as e:
            self.fatal = f"cannot read the journal in {self.journal}: {e}"
        finally:
            reader.close()
        # not in `finally`: when cancelled, nobody takes from the queue any more
        for _ in range(self.opts.concurrency):
            await queue.put(None)

    async def work(self, session: aiohttp.ClientSession, queue: _Queue) -> None:
        while True:
            item = await queue.get()
            if item is None or self.stop.is_set():
                return
            points = sum(rec.entry.points for rec, _ in item)
            if self.points_budget is not None:
                points = min(points, self.points_budget.limit)  # (one that large: alone)
            try:
                if points and self.points_budget is not None:
                    await self.points_budget.take(points)
                try:
                    ok = await self.send_batch(session, item)
                finally:
                    if points and self.points_budget is not None:
                        await self.points_budget.give(points)
            finally:
                await self.budget.give(sum(rec.size for rec, _ in item))
            if not ok:
                return  # fatal: stop without marking the rest done

    def _done(self, rec: jn.Record, slot: Slot) -> None:
        assert self.tracker is not None
        self._count(rec)
        self.tracker.done(slot)

    async def send_batch(self, session: aiohttp.ClientSession, item: list[tuple[jn.Record, Slot]]) -> bool:
        """:meth:`send` of each record of ``item`` (one agent's, :func:`batching.batches`), all
        in one request where they merge (:func:`batching.merge`) and the main ingest takes that
        request. A merged request refused with a 4xx is sent again as its records, one by one:
        each then gets its own answer, and its own rejection if it has to, and is done as soon as
        it has (a replay stopped meanwhile does not reject it twice). False when stopped."""
        if len(item) > 1:
            first = item[0][0].entry
            try:
                body = batching.merge([rec.entry for rec, _ in item], batching.MAX_DECODED)
            except batching.CannotMerge:
                body = None
            if body is not None:
                seqs = sorted({s for rec, _ in item for s in _seqs(rec.entry)})
                answer = await self.post(
                    session, first.tenant, body, first.content_type, first.encoding, seqs, len(item)
                )
                if answer is None:
                    return False
                if 200 <= answer[0] < 300:
                    for rec, slot in item:
                        self._done(rec, slot)
                    return True
        for rec, slot in item:
            if not await self.send(session, rec):
                return False
            self._done(rec, slot)
        return True

    async def send(self, session: aiohttp.ClientSession, rec: jn.Record) -> bool:
        """True once the request is acknowledged or its rejection recorded (ledger report and
        ``rejected.jsonl``); False when stopped (fatal answer, signal) before that."""
        e = rec.entry
        answer = await self.post(session, e.tenant, e.body, e.content_type, e.encoding, _seqs(e))
        if answer is None:
            return False
        status, reason = answer
        if 200 <= status < 300:
            return True
        return await self.reject(session, rec, status, reason)

    async def post(
        self,
        session: aiohttp.ClientSession,
        tenant: str,
        body: bytes,
        content_type: str,
        encoding: str,
        seqs: list[int],
        records: int = 1,
    ) -> tuple[int, str] | None:
        """POST ``body`` (carrying ``seqs``) for ``tenant`` until a final answer: ``(status, error)``
        for an acknowledgement of every seq or a 4xx that will never change; None when stopped (a
        fatal answer sets ``self.fatal``: among them a 2xx that is not a lossproof acknowledgement,
        :mod:`lossproof.protocol.ack`). Transient failures are retried, never given up on.
        ``records``: the journal records the body carries (what ``--rate`` counts)."""
        headers = {
            "Authorization": f"Bearer {self.opts.api_key}",
            "X-Lossproof-Tenant": tenant,
            "Content-Type": content_type,
        }
        if encoding:
            headers["Content-Encoding"] = encoding
        attempt = 0
        timeout = aiohttp.ClientTimeout(total=self.opts.request_timeout)
        self.summary.posts += 1
        while not self.stop.is_set():
            if self._req_bucket is not None:
                await self._req_bucket.take(records)
            if self._byte_bucket is not None:
                await self._byte_bucket.take(len(body))
            retry_after: float | None = None
            try:
                async with session.post(self.endpoint, data=body, headers=headers, timeout=timeout) as r:
                    answer = await r.read()
                    status = r.status
                    retry_after = parse_retry_after(r.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = str(exc) or type(exc).__name__
                self.transient(f"cannot reach {self.url} ({why})")
            else:
                if 200 <= status < 300:
                    try:
                        acked = acknowledged(r.headers, answer, seqs)
                    except NotAcknowledged as exc:
                        acked, why = set(), str(exc)
                    else:
                        why = f"acknowledged {len(acked)} of the {len(seqs)} seqs sent"
                    if len(acked) == len(seqs) and status == 200:
                        return status, ""
                    self.fatal = (
                        f"{self.endpoint} answered {status} without acknowledging the request ({why}): "
                        "check --to; nothing was skipped"
                    )
                    self.stop.set()
                    return None
                reason = _error_text(answer)
                if status in FATAL:
                    self.fatal = (
                        f"{self.endpoint} answered {status} ({reason}) for tenant {tenant!r}: "
                        "check --to and --api-key (a replay key is needed for other tenants); "
                        "nothing was skipped"
                    )
                    self.stop.set()
                    return None
                if status in (408, 425, 429) or status >= 500:
                    self.transient(f"{status} from {self.url} ({reason})")
                elif not from_lossproof(r.headers):
                    # only lossproof's own refusal may make replay record a request as rejected
                    self.fatal = (
                        f"{self.endpoint} answered {status} without {PROTOCOL_HEADER}, so not as lossproof "
                        f"({reason}): check --to; nothing was skipped"
                    )
                    self.stop.set()
                    return None
                else:
                    return status, reason
            delay = backoff_delay(attempt, retry_after)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
        return None

    async def report_lost(
        self, session: aiohttp.ClientSession, tenant: str, agent: str, ranges: list[tuple[int, int, str]]
    ) -> dict[str, Any] | None:
        """Tell the main ingest's ledger that ``ranges`` of ``agent`` are lost (a native request
        with no reports, only ``dropped``). Returns the outcome for ``rejected.jsonl``, or None
        when stopped before every part had a final answer."""
        reported: list[tuple[int, int]] = []
        refused: list[tuple[int, int]] = []
        errors: list[str] = []
        todo = [
            ranges[i : i + LOST_RANGES_PER_REQUEST] for i in range(0, len(ranges), LOST_RANGES_PER_REQUEST)
        ]
        while todo:
            part = todo.pop(0)
            body = msgspec.json.encode(
                {
                    "agent": agent,
                    "reports": [],
                    "dropped": [{"first": a, "last": b, "reason": why} for a, b, why in part],
                }
            )
            answer = await self.post(session, tenant, body, native.JSON, "", [])
            if answer is None:
                return None
            status, error = answer
            if 200 <= status < 300:
                reported += [(a, b) for a, b, _ in part]
            elif status == 413 and len(part) > 1:  # too big for the main ingest's limits: halve it
                half = len(part) // 2
                todo[:0] = [part[:half], part[half:]]
            else:
                refused += [(a, b) for a, b, _ in part]
                errors.append(f"{status} {error}")
        out: dict[str, Any] = {"reported": not refused, "lost": [[a, b] for a, b in reported]}
        if refused:
            out["not_reported"] = [[a, b] for a, b in refused]
            out["error"] = "could not report these seqs as lost: " + "; ".join(dict.fromkeys(errors))
        return out

    async def reject(self, session: aiohttp.ClientSession, rec: jn.Record, status: int, reason: str) -> bool:
        """Record a request the main ingest will never accept: its seqs as lost in the ledger,
        then the request in ``rejected.jsonl``. True once both are done (or the ledger report was
        refused and that is written down too); False when stopped before: not done, sent again."""
        e = rec.entry
        ranges = await asyncio.to_thread(lost_ranges, e, status, reason)  # may decompress
        if ranges:
            ledger = await self.report_lost(session, e.tenant, e.agent, ranges)
            if ledger is None:
                return False
        else:
            ledger = {"reported": False, "error": "not a native request with seqs: nothing to record"}
        try:
            await asyncio.to_thread(self._write_rejected, rec, status, reason, ledger)
        except OSError as exc:
            # not done: without its line the loss would be in the ledger only, the body nowhere
            self.fatal = (
                f"cannot record a rejected request in {self.summary.rejected_path}: "
                f"{exc.strerror or exc} (free space there or choose another --state-dir; the request "
                "counts as not done and is sent again next time; nothing was skipped)"
            )
            self.stop.set()
            return False
        self.summary.rejected += 1
        if ranges and not ledger["reported"]:
            self.summary.unreported += 1
        path = self.summary.rejected_path
        if self.summary.rejected <= MAX_REJECTED_SHOWN:
            if not ranges:
                told = "no seqs to record as lost"
            elif ledger["reported"]:
                told = "its seqs are recorded as lost in the ledger"
            else:
                told = f"ledger NOT told: {ledger['error']}"
            self.warn(
                f"REJECTED {status} for tenant {e.tenant!r} agent {e.agent!r} seqs {e.seqs}: {reason} "
                f"({told}; kept in {path})"
            )
        elif self.summary.rejected == MAX_REJECTED_SHOWN + 1:
            self.warn(f"more requests REJECTED; not shown one by one (all are in {path})")
        return True

    def _write_rejected(self, rec: jn.Record, status: int, reason: str, ledger: dict[str, Any]) -> None:
        e = rec.entry
        line = json.dumps(
            {
                "time_ms": int(time.time() * 1000),
                "status": status,
                "error": reason,
                "segment": rec.segment,
                "pos": rec.pos,
                "index": rec.index,
                "tenant": e.tenant,
                "agent": e.agent,
                "seqs": e.seqs,
                "ledger": ledger,
                "received_ms": rec.received_ms,
                "content_type": e.content_type,
                "encoding": e.encoding,
                "body_base64": base64.b64encode(e.body).decode(),
            }
        )
        path = self.summary.rejected_path
        assert path is not None
        make_dirs(path.parent)
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            data = (line + "\n").encode()
            while data:  # one write in practice; a short write must not leave half a line
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(path.parent)

    async def saver(self) -> None:
        while True:
            await asyncio.sleep(self.opts.save_interval)
            await self.save()

    async def save(self) -> None:
        assert self.progress is not None and self.tracker is not None
        pos = self.tracker.position
        if pos is None or pos == self._last_position:
            return
        self._last_position = pos
        self.progress.segment, self.progress.pos = pos.segment, pos.pos
        self.progress.requests = self._base_requests + self.summary.requests
        snapshot = dataclasses.replace(self.progress, completed=dict(self.progress.completed))
        await asyncio.to_thread(self._save_sync, snapshot)

    def _save_sync(self, snapshot: pg.Progress) -> None:
        # a cancelled saver's thread may still be writing: one save at a time, newest wins
        with self._save_lock:
            if snapshot.position < self._saved_position:
                return
            try:
                pg.save_progress(self.opts.data_dir, snapshot, self.state_dir)
            except OSError as e:
                if e.errno not in NO_ROOM:
                    raise
                self._save_failed(snapshot, e)
                return
            if self._unsaved:
                log.info(
                    "replay.progress_saved_again",
                    path=str(pg.progress_path(self.opts.data_dir, self.state_dir)),
                    failed_saves=self._unsaved,
                )
            self._unsaved = 0
            self.summary.progress_unsaved = None
            self._saved_position = snapshot.position

    def _save_failed(self, snapshot: pg.Progress, e: OSError) -> None:
        """A save the disk had no room for: the resume point stays where the last save left it,
        which costs a restart only re-sending (the main ingest is idempotent), so the replay goes on
        (the journal is on that same disk, and must be drained). The next save tries again."""
        self._unsaved += 1
        self._last_position = None  # the final save tries again even if nothing moved since
        self.summary.progress_unsaved = e.strerror or str(e)
        now = time.monotonic()
        if self._unsaved == 1 or now - self._unsaved_logged >= NO_ROOM_LOG_EVERY:
            self._unsaved_logged = now
            log.warning(
                "replay.progress_not_saved",
                path=str(pg.progress_path(self.opts.data_dir, self.state_dir)),
                error=str(e),
                errno=errno.errorcode.get(e.errno or 0, "?"),
                failed_saves=self._unsaved,
                resume_at=f"{self._saved_position.segment}:{self._saved_position.pos}"
                if self._saved_position.segment >= 0
                else "as before this replay",
                position=f"{snapshot.segment}:{snapshot.pos}",
                consequence="the replay goes on; a restart sends again what was sent since the "
                "resume point (harmless: the main ingest is idempotent)",
            )

    async def run(self) -> Summary:
        self.preflight()
        lock = _acquire_lock(self.opts.data_dir)
        try:
            return await self._run()
        finally:
            os.close(lock)

    async def _run(self) -> Summary:
        try:
            prev = pg.load_progress(self.opts.data_dir, self.state_dir)
        except pg.ProgressError as e:
            raise ReplayError(f"{e}; use --from-start to replay everything again") from None
        if prev is not None and prev.target != self.url and not self.opts.from_start:
            raise ReplayError(
                f"{pg.progress_path(self.opts.data_dir, self.state_dir)} records a replay to "
                f"{prev.target}, not {self.url}: use --from-start to replay everything to {self.url}"
            )
        if prev is None or self.opts.from_start:
            self.progress = pg.Progress(self.url, 0, 0)
            start: jn.Position | None = None
        else:
            self.progress = prev
            start = prev.position
            existing = set(jn.list_segments(self.journal))
            self.progress.completed = {k: v for k, v in prev.completed.items() if k in existing}
        self._base_requests = self.progress.requests if start is not None else 0
        self.tracker = Tracker(start, self.progress.completed)
        self._last_position = start

        loop = asyncio.get_running_loop()
        interrupted = False

        def on_signal() -> None:
            nonlocal interrupted
            interrupted = True
            self.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        connector = aiohttp.TCPConnector(limit=self.opts.concurrency + 2)
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=connector) as session:
            await self.check_target(session)
            queue: _Queue = asyncio.Queue(self.opts.concurrency * 4)
            producer = asyncio.create_task(self.produce(queue, start))
            workers = [asyncio.create_task(self.work(session, queue)) for _ in range(self.opts.concurrency)]
            ticker = asyncio.create_task(self.ticker(started))
            saver = asyncio.create_task(self.saver())
            waiting = asyncio.create_task(self.stop.wait())
            tasks: list[asyncio.Future[Any]] = [*workers, producer, ticker, saver, waiting]
            gathered: asyncio.Future[list[None]] = asyncio.gather(*workers, producer)
            try:
                pair: list[asyncio.Future[Any]] = [gathered, waiting]
                done, _ = await asyncio.wait(pair, return_when=asyncio.FIRST_COMPLETED)
                if gathered in done and gathered.exception() is not None:
                    self.fatal = f"internal error: {gathered.exception()!r}"
            finally:
                # stopped (signal or fatal answer) or finished: in-flight requests are abandoned,
                # they were not marked done and will be sent again next time
                gathered.cancel()
                for t in tasks:
                    t.cancel()
                for t in (*tasks, gathered):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        self.summary.seconds = time.monotonic() - started
        await self.save()
        if self.tty:
            self.err.write("\r\x1b[K")
            self.err.flush()
        self.summary.interrupted = interrupted
        if self.fatal is None and not interrupted and self.tracker.in_flight:
            self.fatal = f"internal error: {self.tracker.in_flight} requests were read but not finished"
        if self.fatal is None and not interrupted and self.opts.prune:
            basis: pg.Progress | None = self.progress
            if self.summary.progress_unsaved:
                # only what the saved resume point is past: the next replay starts from there, and
                # stops if its segment is gone
                try:
                    basis = await asyncio.to_thread(pg.load_progress, self.opts.data_dir, self.state_dir)
                except pg.ProgressError:
                    basis = None  # nothing vouched for: nothing pruned
            deleted = await asyncio.to_thread(pg.prune, self.journal, basis, self.opts.retention_seconds)
            self.summary.pruned = len(deleted)
        self.summary.error = self.fatal
        return self.summary


def _seqs(entry: jn.Entry) -> list[int]:
    return [s for a, b in entry.seqs for s in range(a, b + 1)]


def _error_text(answer: bytes) -> str:
    try:
        data = json.loads(answer)
        if isinstance(data, dict) and "error" in data:
            return str(data["error"])
    except ValueError:
        pass
    return answer[:200].decode(errors="replace").strip() or "no body"


def run_replay(opts: ReplayOptions, err: TextIO | None = None) -> Summary:
    """Run a replay to completion (or until stopped); raises ReplayError for setup problems."""
    return aio.run(Replay(opts, err).run())
