"""Read access to the store from the asyncio HTTP process.

Store reads are blocking (a database driver), so they run on threads; the event loop that waits
for log durability is never blocked by a query. Queries run on a pool of up to ``read_threads`` threads
(16, as Prometheus runs 20 queries at once), each with a store handle of its own (SQLite readers and
PostgreSQL connections read in parallel, and decoding chunks with numpy and SQLite's own work release
the GIL), so a short query is not stuck behind long ones: it shares the CPU with them at once instead
of waiting for one to end. Threads (and handles) are made only when every one is busy, so a quiet
server keeps a few. Each query's own limits (``[query]``: samples, series, timeout) bound what it
holds, and a query whose client went away stops (``promapi``). The ledger look-ups ingest makes
before acknowledging have a thread of their own: a slow query never delays an acknowledgement.

The metadata endpoints (``/api/v1/labels``, ``/series``, ``/label/<name>/values``) are answered on the
event loop itself when the store can answer them at once from memory (:meth:`StoreAccess.run_brief`):
they cost ~0.2 ms, and the hop to a read thread and back (two thread wake-ups) cost as much again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from lossproof.obs.logging import get
from lossproof.store.base import SeqRange, StoreDamaged, StoreReader, StoreUnavailable, StoreWouldWait
from lossproof.store.chunks import ChunkError

__all__ = ["StoreAccess", "StoreDamaged", "StoreUnavailable"]

T = TypeVar("T")
REPLAY_LOOKUP_TIMEOUT = 0.5
MAX_CACHED = 100_000  # agent incarnations whose highest stored seq is kept
log = get(__name__)


class StoreAccess:
    def __init__(
        self, open_store: Callable[[], StoreReader], replay_cache_seconds: float = 1.0, read_threads: int = 16
    ) -> None:
        self._open = open_store
        self._local = threading.local()  # each thread's store handle
        self._opened: list[StoreReader] = []
        self._opened_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="store-read")
        self._ledger_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-ledger")
        self._replay: dict[tuple[str, str, str], tuple[float, list[SeqRange]]] = {}
        self._replay_ttl = replay_cache_seconds
        self._top: dict[tuple[str, str, str], tuple[float, int]] = {}  # highest stored seq, when read
        self._acked: dict[tuple[str, str, str], int] = {}  # highest seq this process acknowledged
        self._skip_until = 0.0
        # the event loop's own handle, switched to brief reads; None until opened, False: the backend
        # has none (PostgreSQL: every read is a network round trip)
        self._brief: StoreReader | bool | None = None
        self.brief_answered = 0  # run_brief's calls answered on the event loop
        self.brief_handed_on = 0  # and those answered on a read thread

    def _get(self) -> StoreReader:
        store: StoreReader | None = getattr(self._local, "store", None)
        if store is None:
            try:
                store = self._open()
            except Exception as e:  # the worker may not have created it yet
                raise StoreUnavailable(f"store not available: {e}") from e
            self._local.store = store
            with self._opened_lock:
                self._opened.append(store)
        return store

    async def run(self, fn: Callable[[StoreReader], T]) -> T:
        """``fn(store)`` on one of the read threads. Damaged stored data it reads is
        :class:`StoreDamaged` (logged), for the APIs to answer as such."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: _reading(fn, self._get()))

    async def run_brief(self, fn: Callable[[StoreReader], T]) -> T:
        """``fn(store)`` on the event loop when it is a brief read (:meth:`StoreReader.brief_reads`)
        the store can answer at once, else on a read thread as :meth:`run`. ``fn`` may only make
        the reads a brief handle answers. The handle is opened on a read thread (opening may create
        or upgrade the store): the first call, and any call while it is opening, go to a thread."""
        brief = self._brief
        if brief is None:
            self._brief = False
            asyncio.get_running_loop().run_in_executor(self._pool, self._open_brief)
        elif brief is not False:
            assert isinstance(brief, StoreReader)
            try:
                brief.brief_reads()  # a new budget for this request
                got = _reading(fn, brief)
                self.brief_answered += 1
                return got
            except StoreWouldWait:
                pass
        self.brief_handed_on += 1
        return await self.run(fn)

    def _open_brief(self) -> None:
        try:
            store = self._open()
        except Exception:
            self._brief = None  # the store is not there yet: tried again on the next call
            return
        if store.brief_reads():
            with self._opened_lock:
                self._opened.append(store)
            self._brief = store
        else:
            store.close()

    async def _ledger(self, fn: Callable[[StoreReader], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._ledger_pool, lambda: fn(self._get()))

    async def stored_digests(
        self, tenant: str, agent: str, incarnation: str, seqs: list[SeqRange]
    ) -> dict[int, bytes]:
        """Digests of the stored reports among ``seqs`` (see :meth:`Store.stored_digests`).

        Most requests carry only new seqs: above both the incarnation's highest stored seq (cached
        like the replay ranges) and the highest this process acknowledged (:meth:`acknowledged`),
        they are answered without a store read.
        Bounded like :meth:`replay_wanted`, and a failure gives {}: the request is then acknowledged
        unchecked, and a conflict is caught by the worker instead (kept whole, never dropped)."""
        now = time.monotonic()
        if not seqs or now < self._skip_until:
            return {}
        key = (tenant, agent, incarnation)
        hit = self._top.get(key)
        try:
            if hit is None or now - hit[0] >= self._replay_ttl:
                top = await asyncio.wait_for(
                    self._ledger(lambda s: s.max_stored_seq(tenant, agent, incarnation)),
                    REPLAY_LOOKUP_TIMEOUT,
                )
                if len(self._top) >= MAX_CACHED:
                    self._top.clear()
                self._top[key] = (now, top)
            else:
                top = hit[1]
            if min(first for first, _ in seqs) > max(top, self._acked.get(key, 0)):
                return {}
            return await asyncio.wait_for(
                self._ledger(lambda s: s.stored_digests(tenant, agent, incarnation, seqs)),
                REPLAY_LOOKUP_TIMEOUT,
            )
        except Exception as e:
            self._skip_until = time.monotonic() + 1.0
            log.warning("ledger.lookup_failed", error=str(e) or type(e).__name__)
            return {}

    def acknowledged(self, tenant: str, agent: str, incarnation: str, seqs: list[SeqRange]) -> None:
        """Note seqs this process acknowledged: until they are stored (and for good after), a request
        that uses one of them again is looked up in the store, not waved through as new."""
        key = (tenant, agent, incarnation)
        top = max(last for _, last in seqs)
        if len(self._acked) >= MAX_CACHED and key not in self._acked:
            self._acked.clear()
        if top > self._acked.get(key, 0):
            self._acked[key] = top

    async def replay_wanted(
        self, tenant: str, agent: str, seen_before_ms: int, incarnation: str = ""
    ) -> list[SeqRange]:
        """Missing ranges to ask the agent for; cached briefly since it is asked on every request.

        A failure here never fails the request: the data is already durable, and the next
        request asks again."""
        key = (tenant, agent, incarnation)
        now = time.monotonic()
        hit = self._replay.get(key)
        if hit is not None and now - hit[0] < self._replay_ttl:
            return hit[1]
        if now < self._skip_until:
            return []
        try:
            # Bounded: a store that is down must not slow down acknowledging durable data.
            ranges = await asyncio.wait_for(
                self._ledger(lambda s: s.replay_wanted(tenant, agent, seen_before_ms, incarnation)),
                REPLAY_LOOKUP_TIMEOUT,
            )
        except Exception as e:
            self._skip_until = now + 1.0
            log.warning("ledger.lookup_failed", error=str(e) or type(e).__name__)
            return []
        if len(self._replay) > 100_000:
            self._replay.clear()
        self._replay[key] = (now, ranges)
        return ranges

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._ledger_pool.shutdown(wait=True)
        for store in self._opened:  # the threads are gone: nothing uses these any more
            store.close()
        self._opened.clear()


def _reading(fn: Callable[[StoreReader], T], store: StoreReader) -> T:
    try:
        return fn(store)
    except ChunkError as e:
        # the store's own data, not the request's: an error event for the operator, a clear answer
        # for the client (the query process moves nothing; the worker or `store check` sets it aside)
        log.error("query.stored_data_damaged", error=str(e))
        raise StoreDamaged(
            f"stored data is damaged ({e}); `lossproof store check --set-aside` sets the damaged rows aside"
        ) from e
