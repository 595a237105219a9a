"""How fast ``lossproof replay`` sends, and how long it waits to retry: how many requests it keeps in
flight, a token bucket for its ``--rate`` limits, and exponential backoff with full jitter that a
server's ``Retry-After`` may lengthen (capped), never shorten."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque

BACKOFF_BASE = 0.1
BACKOFF_CAP = 10.0
RETRY_AFTER_CAP = 60.0  # a Retry-After longer than this is taken as this
# Requests in flight by default. The main ingest commits its log a group at a time, one fsync for
# every append waiting: a journal of 500-point reports drained in 33 s with 16 in flight, 29 s
# with 32, 27 s with 64 (ingest's CPU per request 0.38 -> 0.30 ms; docs/fallback.md). The agents the
# journal stands for had one request in flight each. The main ingest has no admission control of
# its own (it answers 503 only once an append waited append_timeout_seconds): on a pipeline busy
# with live traffic, bound a replay with --concurrency and --rate.
DEFAULT_CONCURRENCY = 64
# Points one request of a replay carries at most, the records of one agent merged
# (lossproof.fallback.batching), and the points in flight at most: BATCHES_IN_FLIGHT such requests'
# (a record of more points than that counts as that many), whatever --concurrency allows. The main
# ingest checks a request's points in one go on its event loop (~0.4 us a point), where a live
# agent's request waits behind those that came before it: that wait grows with the points in
# flight, the CPU per point falls with the points per request. A journal of 100 agents x 600
# reports x 500 points (docs/fallback.md) drained in 36-38 s one record a request, 64 in flight (a
# live agent's p99 71-73 ms); merged, 64 in flight: 21 s (p99 151 ms); merged, with this bound:
# 23 s (p99 27-40 ms).
DEFAULT_BATCH_POINTS = 10_000
BATCHES_IN_FLIGHT = 8
# Journal bytes read ahead and in flight at most: the records queued for the requests, whatever
# their size (4 x concurrency records of agents' 4 MiB catch-up batches were GBs).
READ_AHEAD_BYTES = 64 * 2**20


class Budget:
    """At most ``limit`` units (bytes, points) held at once; one item larger than the limit passes
    alone. First come, first served: a take waits behind those before it, so a large one is not
    passed over for ever by smaller ones that keep fitting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def fits(self, n: int) -> bool:
        """Whether :meth:`take` of ``n`` would go on without waiting."""
        return not self._waiting and (self.held == 0 or self.held + n <= self.limit)

    async def take(self, n: int) -> None:
        if self.fits(n):
            self.held += n
            return
        got: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((n, got))
        try:
            await got
        except asyncio.CancelledError:
            if got.done() and not got.cancelled():
                self.held -= n  # granted as it was cancelled: given back
            self._wake()
            raise

    async def give(self, n: int) -> None:
        self.held -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            n, got = self._waiting[0]
            if got.done():  # (cancelled)
                self._waiting.popleft()
                continue
            if self.held and self.held + n > self.limit:
                return
            self._waiting.popleft()
            self.held += n
            got.set_result(None)


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


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` asks for, at most ``RETRY_AFTER_CAP``; None if absent or a date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: use our own backoff
    if math.isnan(seconds):
        return None
    return min(RETRY_AFTER_CAP, max(0.0, seconds))


def backoff_delay(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry number ``attempt + 1``: exponential backoff with full jitter
    (0.1 s doubling up to 10 s), lengthened, never shortened, by the server's ``Retry-After``
    (already capped by :func:`retry_after`). ``Retry-After: 0`` is not "retry at once": a server
    saying that on every 503 would otherwise be hammered."""
    delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempt, 30)))
    if retry_after is not None:
        delay = max(delay, retry_after + random.uniform(0, min(1.0, retry_after / 10 + 0.05)))
    return delay
