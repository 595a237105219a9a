"""The worker's background compaction: packs the store's small chunks (see ``Store.compact``).

It runs in a thread of the worker process on a store handle of its own, one bounded transaction at a
time, so the worker's writes wait for one compaction transaction at most. It keeps going while a call
says there is more to do, then sleeps ``interval``. A failure is logged and retried later: compaction
never decides whether a batch is stored, only how it is laid out.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from lossproof.obs.logging import get
from lossproof.store.base import StoreUnavailable, StoreWriter

log = get(__name__)


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


# A compaction step decodes, sorts and encodes up to ~500,000 points in this thread (tens of MiB of
# numpy arrays). glibc keeps what this thread freed in its own arena, where the worker's main thread
# does not reuse it, so it came on top of the main thread's biggest batch: the worker's peak RSS
# with big remote-write bodies went from 319 MiB without compaction to 358-398 MiB with it. Giving
# it back after each step brought that to ~290 MiB (tests/worker/test_worker_memory.py); the
# call costs far less than the step.
_MALLOC_TRIM = _libc_malloc_trim()


class CompactorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.chunks = Counter(
            "lossproof_store_compacted_chunks",
            "Chunks read (in) and written (out) by compaction.",
            ["direction"],
            registry=registry,
        )
        self.bytes = Counter(
            "lossproof_store_compacted_bytes",
            "Chunk bytes read (in) and written (out) by compaction.",
            ["direction"],
            registry=registry,
        )
        self.points = Counter("lossproof_store_compacted_points", "Points packed.", registry=registry)
        self.seconds = Counter(
            "lossproof_store_compaction_seconds", "Time spent compacting.", registry=registry
        )
        self.errors = Counter(
            "lossproof_store_compaction_errors", "Compaction calls that failed.", registry=registry
        )


class Compactor:
    def __init__(
        self,
        open_store: Callable[[], StoreWriter],
        registry: CollectorRegistry,
        interval: float,
        stop: threading.Event,
    ) -> None:
        self._open = open_store
        self.metrics = CompactorMetrics(registry)
        self.interval = interval
        self.stop = stop
        self._thread = threading.Thread(target=self._run, name="compactor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        store: StoreWriter | None = None
        while not self.stop.is_set():
            more = False
            try:
                if store is None:
                    store = self._open()
                more = self.once(store)
            except StoreUnavailable as e:
                self.metrics.errors.inc()
                log.warning("compaction.unavailable", error=str(e))
            except BaseException as e:  # logged; the next round tries again
                # BaseException: a panic in the native extension (pyo3's PanicException) is one, and
                # a dead compactor thread would leave parts to pile up for good
                self.metrics.errors.inc()
                log.error("compaction.failed", error=f"{type(e).__name__}: {e}")
            if not more:
                self.stop.wait(self.interval)
        if store is not None:
            store.close()

    def once(self, store: StoreWriter) -> bool:
        """One compaction call; whether it left work for another one."""
        started = time.monotonic()
        res = store.compact(int(time.time() * 1000))
        if _MALLOC_TRIM is not None and (res.series or res.more):
            _MALLOC_TRIM(0)
        self.metrics.seconds.inc(time.monotonic() - started)
        if res.series:
            m = self.metrics
            m.chunks.labels("in").inc(res.chunks_in)
            m.chunks.labels("out").inc(res.chunks_out)
            m.bytes.labels("in").inc(res.bytes_in)
            m.bytes.labels("out").inc(res.bytes_out)
            m.points.inc(res.points)
        return res.more
