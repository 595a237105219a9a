"""The group-commit engine: one writer thread, many waiting appends, one fsync per group.

``submit`` (on the event loop) queues a request and returns an asyncio future. The writer thread
takes *everything* queued (up to ``max_records`` / ``max_bytes``), hands the group to the owner's
``commit`` (write + fsync, releasing the GIL), and resolves the group's futures on the loop with one
``call_soon_threadsafe``. While one group is being fsync'd the next one accumulates, so concurrent
appends share fsyncs.

Unhealthy after a failed write or fsync
    When ``commit`` raises, no request of the group is acknowledged: each gets the owner's
    ``error(reason)``. The engine turns unhealthy (``healthy()`` is false, with the reason): after a
    failed fsync the kernel may have dropped the dirty pages, so the owner must never trust that
    file again (it moves to a new one; that is its business). It stays unhealthy until a group
    commits or the *probe* succeeds: while unhealthy the engine calls ``probe()`` (e.g. "start a new
    segment") with exponential backoff, so health comes back even without traffic.

Stalled
    ``stalled_seconds()`` says for how long requests have been waiting while the thread completed no
    cycle (a group committed or failed, then the housekeeping): an fsync that never returns on a
    dead disk, a probe or housekeeping stuck the same way. Zero while nothing waits, so an idle
    writer is never stalled, and a busy one that keeps committing restarts the count with every
    group. A thread that died of a bug counts from its death: it refuses every request at once, so
    none waits, but none will ever be committed again. Ingest stops beating its heartbeat on it
    (``lossproof.heartbeat``), so that ``up`` restarts it.

Closing
    ``close`` lets the thread finish every queued request (each gets its answer), calls
    ``on_close`` in the thread, and joins it. A thread that dies of a bug fails whatever is queued
    and every later ``submit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from lossproof.obs.logging import get

log = get(__name__)


class Request(Protocol):
    @property
    def size(self) -> int:
        """Bytes it adds to a group (what ``CommitLimits.max_bytes`` counts)."""
        ...


Req = TypeVar("Req", bound=Request)
Res = TypeVar("Res")


@dataclass(frozen=True, slots=True)
class CommitLimits:
    """How big a group may get, and how the probe backs off while unhealthy (first, longest wait)."""

    max_records: int = 8192
    max_bytes: int = 32 * 2**20
    probe_backoff: tuple[float, float] = (0.1, 5.0)


class CommitFailed(Exception):
    """Raised by ``commit`` for an I/O failure the owner has recorded (logged, counted, and made sure
    the failed bytes are never trusted): the group is refused with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CommitHooks:
    """What the owner does around the groups (every hook optional; they run in the writer thread)."""

    probe: Callable[[], None] | None = None  # raises while the disk is still refusing
    probe_failed: Callable[[Exception], str] | None = None  # the unhealthy reason after a failed probe
    on_bug: Callable[[Exception], None] | None = None  # commit raised something else than CommitFailed
    on_health: Callable[[str | None], None] | None = None  # every change: the reason, or None
    housekeeping: Callable[[], None] | None = None  # after every group, and when idle
    next_housekeeping: Callable[[], float] | None = None  # monotonic time it wants to run next
    on_close: Callable[[], None] | None = None  # once, after the last group


NO_HOOKS = CommitHooks()


class GroupCommitter(Generic[Req, Res]):
    """Runs ``commit`` over groups of requests in one thread; see the module docstring.

    ``commit(batch)`` returns one result per request or raises :class:`CommitFailed` (an I/O
    failure) or anything else (a bug: ``on_bug(exc)`` is called, the group is never acknowledged).
    ``probe()`` raises while the disk is still refusing. ``housekeeping()`` runs after every group
    and at least every ``idle_seconds``. ``on_health(reason or None)`` is called on every change.
    """

    def __init__(
        self,
        name: str,
        commit: Callable[[list[Req]], Sequence[Res]],
        error: Callable[[str], Exception],
        limits: CommitLimits = CommitLimits(),
        hooks: CommitHooks = NO_HOOKS,
        *,
        closed_message: str = "",
        idle_seconds: float = 1.0,
    ) -> None:
        self.name = name
        self._closed_message = closed_message or f"{name} is closed"
        self._commit = commit
        self._error = error
        self.hooks = hooks
        self.max_records = limits.max_records
        self.max_bytes = limits.max_bytes
        self._backoff0, self._backoff_max = limits.probe_backoff
        self._idle = idle_seconds

        self._cond = threading.Condition()
        self._pending: list[tuple[Req, asyncio.Future[Res]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._abandoned = False
        self._dead: str | None = None
        # (monotonic) since when requests wait with no cycle of the thread completed; None: none wait
        self._waiting_since: float | None = None
        self._died_at: float | None = None  # (monotonic) when the thread died of a bug
        self.unhealthy: str | None = "not started"
        self._probe_at = 0.0
        self._backoff = self._backoff0

    # --- health ----------------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        reason = self._dead or self.unhealthy
        return (reason is None, reason or "")

    def set_healthy(self) -> None:
        self._backoff = self._backoff0
        if self.unhealthy is not None:
            self.unhealthy = None
            if self.hooks.on_health is not None:
                self.hooks.on_health(None)

    def set_unhealthy(self, reason: str, *, probe_in: float | None = None) -> None:
        """Mark unhealthy; the probe runs ``probe_in`` seconds from now (default: the backoff)."""
        self.unhealthy = reason
        self._probe_at = time.monotonic() + (self._backoff if probe_in is None else probe_in)
        if self.hooks.on_health is not None:
            self.hooks.on_health(reason)

    # --- the event loop's side -------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, *, healthy: bool = True) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._loop = loop
        if healthy:
            self.set_healthy()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def submit(self, req: Req) -> asyncio.Future[Res]:
        """Queue ``req``; the future resolves once its group committed (or fails with ``error``)."""
        assert self._loop is not None, "submit before start"
        fut: asyncio.Future[Res] = self._loop.create_future()
        with self._cond:
            # checked under the lock: the thread only exits with the lock held and nothing queued
            if self._closing:
                raise self._error(self._closed_message)
            if self._dead is not None:
                raise self._error(self._dead)
            self._pending.append((req, fut))
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
            self._cond.notify()
        return fut

    def stalled_seconds(self) -> float:
        """How long requests have been waiting with no cycle of the thread completed (0: none wait),
        or since the thread died (every request refused at once from then on, for good: only a
        restart mends it); see the module docstring."""
        died = self._died_at
        if died is not None:
            return max(0.0, time.monotonic() - died)
        since = self._waiting_since  # one read: the thread may clear it meanwhile
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    async def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def abandon(self) -> None:
        """Stop the thread now, as a kill -9 would: nothing queued is committed or answered, no
        ``on_close`` (for crash tests)."""
        with self._cond:
            self._abandoned = self._closing = True
            self._pending = []
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    # --- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._pending and not self._closing:
                        self._cond.wait(self._idle_timeout())
                    if self._abandoned:
                        return
                    batch = self._take()
                    done = self._closing and not self._pending and not batch
                if batch:
                    self._commit_group(batch)
                self._maintain()
                with self._cond:
                    # a cycle completed: what still waits has waited only since now
                    self._waiting_since = time.monotonic() if self._pending else None
                if done:
                    if self.hooks.on_close is not None:
                        try:
                            self.hooks.on_close()
                        except Exception as e:
                            log.warning("segments.on_close_failed", writer=self.name, error=str(e))
                    return
        except BaseException as e:  # pragma: no cover - last resort: never leave appends hanging
            log.exception("segments.writer_died", writer=self.name)
            with self._cond:
                self._dead = f"{self.name} thread died: {e!r}"
                self._died_at = time.monotonic()
                rest, self._pending = self._pending, []
                self._waiting_since = None  # failed below: nothing waits any more
            self._fail(rest, self._dead)

    def _idle_timeout(self) -> float:
        now = time.monotonic()
        deadline = now + self._idle
        if self.hooks.next_housekeeping is not None:
            deadline = min(deadline, self.hooks.next_housekeeping())
        if self.unhealthy is not None and self.hooks.probe is not None:
            deadline = min(deadline, self._probe_at)
        return min(max(deadline - now, 0.005), self._idle)

    def _take(self) -> list[tuple[Req, asyncio.Future[Res]]]:
        n = size = 0
        for req, _ in self._pending:
            s = req.size
            if n and (n >= self.max_records or size + s > self.max_bytes):
                break
            size += s
            n += 1
        batch = self._pending[:n]
        del self._pending[:n]
        return batch

    def _commit_group(self, batch: list[tuple[Req, asyncio.Future[Res]]]) -> None:
        reqs = [r for r, _ in batch]
        try:
            results = self._commit(reqs)
            if len(results) != len(reqs):  # a bug: the futures could not all be resolved
                raise RuntimeError(f"commit returned {len(results)} results for {len(reqs)} records")
        except CommitFailed as e:
            self.set_unhealthy(e.reason)
            self._fail(batch, e.reason)
            return
        except Exception as e:  # a bug: fail the group, never acknowledge it
            log.exception("segments.commit_error", writer=self.name)
            if self.hooks.on_bug is not None:
                self.hooks.on_bug(e)
            reason = f"internal error: {e!r}"
            self.set_unhealthy(reason)
            self._fail(batch, reason)
            return
        self.set_healthy()
        self._resolve(batch, results)

    def _maintain(self) -> None:
        if self.unhealthy is not None and self.hooks.probe is not None and time.monotonic() >= self._probe_at:
            try:
                self.hooks.probe()
            except Exception as e:
                self._backoff = min(self._backoff * 2, self._backoff_max)
                reason = self.hooks.probe_failed(e) if self.hooks.probe_failed is not None else self.unhealthy
                self.set_unhealthy(reason)
            else:
                self.set_healthy()
        if self.hooks.housekeeping is not None:
            self.hooks.housekeeping()

    def _fail(self, batch: list[tuple[Req, asyncio.Future[Res]]], reason: str) -> None:
        if not batch:
            return

        def fail() -> None:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(self._error(reason))

        self._call_in_loop(fail)

    def _resolve(self, batch: list[tuple[Req, asyncio.Future[Res]]], results: Sequence[Res]) -> None:
        def resolve() -> None:
            for (_, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

        self._call_in_loop(resolve)

    def _call_in_loop(self, fn: Callable[[], None]) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(fn)
