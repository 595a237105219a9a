"""``lossproof replay``: drain a fallback journal into the main ingest, at a bounded rate, resumably.

Each journal record is POSTed to ``URL/v1/reports`` with its original Content-Type,
Content-Encoding and body, ``Authorization: Bearer <replay key>`` and ``X-Lossproof-Tenant: <the
tenant the fallback authenticated>``. The main ingest is idempotent per (tenant, agent, seq), so
sending a record twice is harmless; skipping one is not, so:

- 2xx: acknowledged durable by the main ingest.
- 408, 425, 429, 5xx, connection errors, timeouts: transient. Retried with exponential backoff
  (full jitter, honouring ``Retry-After``) until it succeeds or the replay is stopped. Never skipped.
- 401, 403, 404, 405: the replay itself is misconfigured (wrong key, wrong URL): stop, skip nothing.
- any other 4xx (400, 413, 415, ...): this request can never be accepted. It is appended (with its
  body, base64) to ``D/replay/rejected.jsonl`` and fsync'd, then counted as done.

Progress is the journal position of the first request not yet done; everything before it is done.
It is saved atomically about once a second and at the end, so an interrupted replay resumes where
it stopped (re-sending at most the last second's requests, harmlessly).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import json
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from lossproof.fallback import journal as jn
from lossproof.fallback import progress as pg

FATAL = frozenset({401, 403, 404, 405})
BACKOFF_BASE = 0.1
BACKOFF_CAP = 10.0
MAX_REJECTED_SHOWN = 20


class ReplayError(Exception):
    """Stops the replay; the message is one line for the user."""


@dataclass
class ReplayOptions:
    data_dir: Path
    url: str
    api_key: str
    rate: float | None = None  # requests/s
    rate_bytes: float | None = None  # body bytes/s
    concurrency: int = 8
    follow: bool = False
    prune: bool = False
    retention_seconds: float = 86400.0
    from_start: bool = False
    request_timeout: float = 60.0
    save_interval: float = 1.0
    progress_interval: float | None = None  # default: 0.2 s on a tty, 5 s otherwise


@dataclass
class Summary:
    url: str
    requests: int = 0
    reports: int = 0
    points: int = 0
    bytes: int = 0
    journal_bytes: int = 0
    seconds: float = 0.0
    rejected: int = 0
    retries: int = 0
    pruned: int = 0
    interrupted: bool = False
    error: str | None = None
    rejected_path: Path | None = None

    def line(self) -> str:
        rate = self.requests / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"replayed {self.requests:,} requests ({self.reports:,} reports, {self.points:,} points, "
            f"{self.bytes / 2**20:,.1f} MiB) to {self.url} in {self.seconds:.1f} s: "
            f"{rate:,.0f} requests/s"
        )
        if self.retries:
            text += f"; {self.retries:,} retries"
        if self.rejected:
            text += f"; {self.rejected:,} REJECTED (see {self.rejected_path})"
        if self.pruned:
            text += f"; pruned {self.pruned} segments"
        if self.interrupted:
            text += "; interrupted (run again to continue)"
        return text


class TokenBucket:
    """``rate`` tokens per second, bursts of up to ``burst``. Waiters are served in order."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.last = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: float) -> None:
        async with self._lock:
            need = min(n, self.burst)  # a request larger than a burst may pass, then pays it back
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= need:
                    self.tokens -= n
                    return
                await asyncio.sleep((need - self.tokens) / self.rate)


@dataclass(slots=True)
class _Slot:
    after: jn.Position
    left_segment: int | None = None
    done: bool = False


_Queue = asyncio.Queue[tuple[jn.Record, _Slot] | None]


class Tracker:
    """The done-watermark: the position after the longest prefix of finished requests."""

    def __init__(self, start: jn.Position | None, completed: dict[int, int]) -> None:
        self.position = start
        self.completed = completed
        self._slots: deque[_Slot] = deque()

    def add(self, after: jn.Position, left_segment: int | None = None) -> _Slot:
        slot = _Slot(after, left_segment)
        self._slots.append(slot)
        return slot

    def done(self, slot: _Slot) -> None:
        slot.done = True
        while self._slots and self._slots[0].done:
            s = self._slots.popleft()
            if s.left_segment is not None:
                self.completed.setdefault(s.left_segment, int(time.time() * 1000))
            self.position = s.after

    @property
    def in_flight(self) -> int:
        return len(self._slots)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: use our own backoff


def _acquire_lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ReplayError(f"another replay (pid {other}) is running from {path.parent.parent}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _fmt_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Replay:
    def __init__(self, opts: ReplayOptions, err: TextIO | None = None) -> None:
        self.opts = opts
        self.url = opts.url.rstrip("/")
        self.endpoint = self.url + "/v1/reports"
        self.journal = jn.journal_dir(opts.data_dir)
        self.err = err if err is not None else sys.stderr
        self.tty = self.err.isatty()
        self.summary = Summary(self.url, rejected_path=pg.replay_dir(opts.data_dir) / pg.REJECTED_FILE)
        self.stop = asyncio.Event()
        self.fatal: str | None = None
        self.total_bytes = 0  # journal bytes from the start position to the end seen so far
        self.read_bytes = 0  # journal bytes handed to the senders
        self._base_requests = 0
        self._save_lock = threading.Lock()
        self._last_position: jn.Position | None = None
        self._saved_position = jn.Position(-1, -1)
        self._last_warn = 0.0
        self._last_transient = ""
        self._req_bucket = TokenBucket(opts.rate, max(1.0, opts.rate / 10)) if opts.rate else None
        self._byte_bucket = (
            TokenBucket(opts.rate_bytes, max(2**20, opts.rate_bytes / 10)) if opts.rate_bytes else None
        )
        self.progress: pg.Progress | None = None
        self.tracker: Tracker | None = None

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

    async def produce(
        self, queue: asyncio.Queue[tuple[jn.Record, _Slot] | None], start: jn.Position | None
    ) -> None:
        assert self.tracker is not None
        reader = jn.JournalReader(self.journal, start)
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
                        slot = self.tracker.add(it.next_position)
                        self.read_bytes += it.size
                        await queue.put((it, slot))
                    if at_end:
                        break
                if not self.opts.follow:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 0.5)
        except jn.JournalError as e:
            # everything read before the damage is still sent; then the replay stops
            self.fatal = str(e)
        except OSError as e:
            self.fatal = f"cannot read the journal in {self.journal}: {e}"
        finally:
            reader.close()
        # not in `finally`: when cancelled, nobody takes from the queue any more
        for _ in range(self.opts.concurrency):
            await queue.put(None)

    async def work(self, session: aiohttp.ClientSession, queue: _Queue) -> None:
        assert self.tracker is not None
        while True:
            item = await queue.get()
            if item is None or self.stop.is_set():
                return
            rec, slot = item
            ok = await self.send(session, rec)
            if not ok:
                return  # fatal: stop without marking it done
            self._count(rec)
            self.tracker.done(slot)

    async def send(self, session: aiohttp.ClientSession, rec: jn.Record) -> bool:
        """True once the request is acknowledged or recorded as rejected; False on a fatal answer."""
        e = rec.entry
        headers = {
            "Authorization": f"Bearer {self.opts.api_key}",
            "X-Lossproof-Tenant": e.tenant,
            "Content-Type": e.content_type,
        }
        if e.encoding:
            headers["Content-Encoding"] = e.encoding
        attempt = 0
        timeout = aiohttp.ClientTimeout(total=self.opts.request_timeout)
        while not self.stop.is_set():
            if self._req_bucket is not None:
                await self._req_bucket.take(1)
            if self._byte_bucket is not None:
                await self._byte_bucket.take(len(e.body))
            retry_after: float | None = None
            try:
                async with session.post(self.endpoint, data=e.body, headers=headers, timeout=timeout) as r:
                    answer = await r.read()
                    status = r.status
                    retry_after = _retry_after(r.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = str(exc) or type(exc).__name__
                self.transient(f"cannot reach {self.url} ({why})")
            else:
                if 200 <= status < 300:
                    return True
                reason = _error_text(answer)
                if status in FATAL:
                    self.fatal = (
                        f"{self.endpoint} answered {status} ({reason}) for tenant {e.tenant!r}: "
                        "check --to and --api-key (a replay key is needed for other tenants); "
                        "nothing was skipped"
                    )
                    self.stop.set()
                    return False
                if status in (408, 425, 429) or status >= 500:
                    self.transient(f"{status} from {self.url} ({reason})")
                else:
                    await asyncio.to_thread(self.reject, rec, status, reason)
                    return True
            delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
            if retry_after is not None:
                delay = retry_after + random.uniform(0, min(1.0, retry_after / 10 + 0.05))
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
        return False

    def reject(self, rec: jn.Record, status: int, reason: str) -> None:
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
                "received_ms": rec.received_ms,
                "content_type": e.content_type,
                "encoding": e.encoding,
                "body_base64": base64.b64encode(e.body).decode(),
            }
        )
        path = self.summary.rejected_path
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.summary.rejected += 1
        if self.summary.rejected <= MAX_REJECTED_SHOWN:
            self.warn(
                f"REJECTED {status} for tenant {e.tenant!r} agent {e.agent!r} seqs {e.seqs}: {reason} "
                f"(kept in {path})"
            )
        elif self.summary.rejected == MAX_REJECTED_SHOWN + 1:
            self.warn(f"more requests REJECTED; not shown one by one (all are in {path})")

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
            pg.save_progress(self.opts.data_dir, snapshot)
            self._saved_position = snapshot.position

    async def run(self) -> Summary:
        self.preflight()
        lock = _acquire_lock(pg.replay_dir(self.opts.data_dir) / pg.LOCK_FILE)
        try:
            return await self._run()
        finally:
            os.close(lock)

    async def _run(self) -> Summary:
        try:
            prev = pg.load_progress(self.opts.data_dir)
        except pg.ProgressError as e:
            raise ReplayError(f"{e}; use --from-start to replay everything again") from None
        if prev is not None and prev.target != self.url and not self.opts.from_start:
            raise ReplayError(
                f"{pg.progress_path(self.opts.data_dir)} records a replay to {prev.target}, not "
                f"{self.url}: use --from-start to replay everything to {self.url}"
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
            deleted = await asyncio.to_thread(
                pg.prune, self.journal, self.progress, self.opts.retention_seconds
            )
            self.summary.pruned = len(deleted)
        self.summary.error = self.fatal
        return self.summary


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
    return asyncio.run(Replay(opts, err).run())
