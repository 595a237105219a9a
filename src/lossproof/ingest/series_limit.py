"""The per-tenant series limit (cardinality): a request that would take a tenant past its limit is
refused with 400 before anything is acknowledged, as Mimir does for its per-tenant series limit.

Every series costs memory and disk for as long as it is kept, so a runaway label (a request id, a
timestamp in a label) is refused where it enters, with a message that names the limit, rather than
acknowledged and then dropped. Series that already exist are always accepted.

Which series a request holds is found by the decoder the worker stores with
(:func:`lossproof.worker.decode.record_parts`), so the two cannot disagree; it runs only for tenants
with a limit (``server.max_series_per_tenant``, ``tenants.<name>.max_series``), so the path of
everyone else is unchanged.

The series a tenant has are the store's (:meth:`Store.series_after`, read a batch at a time as new
ids appear, every ``server.series_limit_refresh_seconds``) plus those this process admitted since.
The limit is therefore exact with one ingest process and slightly soft with several: each sees the
others' new series once the worker has stored them. While the store cannot be read, a process goes on
with what it knows (ingest stays available; the limit is then only as exact as that knowledge).
Series removed by retention still count until the process restarts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from lossproof.config import Config
from lossproof.httputil import ApiError
from lossproof.ingest.metrics import IngestMetrics
from lossproof.log.base import LogRecord
from lossproof.obs.logging import get
from lossproof.query.access import StoreAccess
from lossproof.store.base import Store, StoreUnavailable, labels_text
from lossproof.worker.decode import record_parts

log = get(__name__)

SERIES_LIMIT = "series_limit"  # the refusal's reason
READ_BATCH = 50_000  # series per store read
# Series ids a refresh reads again below the last one seen: PostgreSQL workers create series in
# concurrent transactions, so an id can become visible after a higher one.
ID_OVERLAP = 10_000
FULL_READ_SECONDS = 600.0  # and everything again this often, for any that the overlap missed
REFUSED_REREAD_SECONDS = 1.0  # a refusal first re-reads the store, at most this often


def series_key(metric: str, labels: Mapping[str, str]) -> int:
    """A series' identity within a tenant, as the stores define it (metric, canonical labels)."""
    return hash((metric, labels_text(labels)))


def record_series(record: bytes) -> set[int]:
    """The series (:func:`series_key`) a log record's points go to, decoded as the worker does."""
    keys: set[int] = set()
    for part in record_parts(LogRecord(0, 0, b"", record, 0)):
        b = part.batch
        keys.update(series_key(p.metric, p.labels) for _, p in b.samples)
        keys.update(series_key(s.metric, s.labels) for _, s in b.series)
        keys.update(series_key(p.metric, p.labels) for r in b.reports for p in r.points)
    return keys


@dataclass
class _Known:
    keys: set[int] = field(default_factory=set)
    after_id: int = 0
    read_at: float = float("-inf")
    full_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SeriesLimit:
    def __init__(self, cfg: Config, store: StoreAccess, metrics: IngestMetrics) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self._known: dict[str, _Known] = {}
        self._warned = 0.0

    def limit(self, tenant: str) -> int:
        """The tenant's limit; 0 for none."""
        return self.cfg.series_limit(tenant)

    async def admit(self, tenant: str, series: Iterable[int], protocol: str) -> set[int]:
        """Admit a request's series, or raise the 400. Returns the series new to this process: pass
        them to :meth:`release` if the request is not acknowledged after all."""
        limit = self.limit(tenant)
        if not limit:
            return set()
        known = self._known.setdefault(tenant, _Known())
        async with known.lock:
            await self._read(tenant, known, self.cfg.server.series_limit_refresh_seconds)
            new = set(series) - known.keys
            if new and len(known.keys) + len(new) > limit:
                # perhaps stored by another ingest process since the last read
                await self._read(tenant, known, REFUSED_REREAD_SECONDS)
                new -= known.keys
            if new and len(known.keys) + len(new) > limit:
                self.metrics.series_limited.labels(tenant, protocol).inc()
                self.metrics.series_refused.labels(tenant, protocol).inc(len(new))
                raise ApiError(
                    400,
                    f"series limit: tenant {tenant!r} has {len(known.keys)} series and may have at most "
                    f"{limit}; this request would add {len(new)} new ones (nothing of it was stored). "
                    "Raise tenants.<name>.max_series or server.max_series_per_tenant, or drop the "
                    "label that makes series unbounded",
                    SERIES_LIMIT,
                    detail={
                        "reason": SERIES_LIMIT,
                        "limit": limit,
                        "series": len(known.keys),
                        "new": len(new),
                    },
                )
            known.keys |= new
            return new

    def release(self, tenant: str, new: set[int]) -> None:
        known = self._known.get(tenant)
        if known is not None and new:
            known.keys -= new

    async def _read(self, tenant: str, known: _Known, max_age: float) -> None:
        now = time.monotonic()
        if now - known.read_at < max_age:
            return
        if now - known.full_at > FULL_READ_SECONDS:
            after, known.full_at = 0, now
        else:
            after = max(0, known.after_id - ID_OVERLAP)
        try:
            last, found = await self.store.run(lambda s: _stored(s, tenant, after))
        except StoreUnavailable as e:
            if now - self._warned > 10:
                self._warned = now
                log.warning("ingest.series_limit_store_unavailable", tenant=tenant, error=str(e))
        else:
            known.keys |= found
            known.after_id = max(known.after_id, last)
        known.read_at = now


def _stored(store: Store, tenant: str, after: int) -> tuple[int, set[int]]:
    """The tenant's series (:func:`series_key`) above id ``after``, and the highest id read."""
    keys: set[int] = set()
    for rows in _batches(store, tenant, after):
        keys.update(hash((metric, text)) for _, metric, text in rows)
        after = rows[-1][0]
    return after, keys


def _batches(store: Store, tenant: str, after: int) -> Iterator[list[tuple[int, str, str]]]:
    while True:
        rows = store.series_after(tenant, after, READ_BATCH)
        if rows:
            yield rows
        if len(rows) < READ_BATCH:
            return
        after = rows[-1][0]
