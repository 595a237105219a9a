"""The per-tenant series limit (cardinality): a request that would take a tenant past its limit is
refused with 400 before anything is acknowledged, as Mimir does for its per-tenant series limit.

Every series costs memory and disk for as long as it is kept, so a runaway label (a request id, a
timestamp in a label) is refused where it enters, with a message that names the limit, rather than
acknowledged and then dropped. Series that already exist are always accepted.

Which series a request holds is found by the decoder the worker stores with
(:func:`lossproof.protocol.decode.record_parts`), so the two cannot disagree; it runs only for tenants
with a limit (``server.max_series_per_tenant``, ``tenants.<name>.max_series``), so the path of
everyone else is unchanged.

The series a tenant has are the store's (:meth:`Store.series_after`, read a batch at a time as new
ids appear: in the background every ``server.series_limit_refresh_seconds``, and waited for, briefly,
before a refusal and at a tenant's first request) plus those this process acknowledged since. Series
of requests not answered yet are held by them (counted), and given back only when no request holding
them was acknowledged. The limit is therefore exact with one ingest process and slightly soft with
several: each sees the others' new series once the worker has stored them. A slow or failing store
never delays an answer for more than those brief waits: ingest goes on with what it knows. Series
removed by retention still count until the process restarts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from lossproof.config import Config
from lossproof.httputil import ApiError
from lossproof.ingest.metrics import IngestMetrics
from lossproof.log.base import LogRecord
from lossproof.obs.logging import get
from lossproof.points import PointsBlock, each_series
from lossproof.protocol.decode import record_parts
from lossproof.store.access import StoreAccess
from lossproof.store.base import StoreReader, labels_text

log = get(__name__)

SERIES_LIMIT = "series_limit"  # the refusal's reason
READ_BATCH = 50_000  # series per store read
# Series ids a refresh reads again below the last one seen: PostgreSQL workers create series in
# concurrent transactions, so an id can become visible after a higher one.
ID_OVERLAP = 10_000
FULL_READ_SECONDS = 600.0  # and everything again this often, for any that the overlap missed
FIRST_READ_WAIT = 5.0  # a tenant's first request waits this long at most for its series to be read
REFUSAL_READ_WAIT = 1.0  # before refusing, a read not older than this is waited for this long


def _name(metric: str) -> str:
    # PostgreSQL keeps NUL as U+FFFD (store/postgres.py, pg_text): the same name either way
    return metric.replace("\x00", "\ufffd") if "\x00" in metric else metric


def series_key(metric: str, labels: Mapping[str, str]) -> int:
    """A series' identity within a tenant, as the stores define it (metric, canonical labels)."""
    return hash((_name(metric), labels_text(labels)))


def record_series(record: bytes) -> set[int]:
    """The series (:func:`series_key`) a log record's points go to, decoded as the worker does."""
    keys: set[int] = set()
    for part in record_parts(LogRecord(0, 0, b"", record, 0)):
        b = part.batch
        keys.update(series_key(p.metric, p.labels) for _, p in b.samples)
        keys.update(series_key(s.metric, s.labels) for s in each_series(x for _, x in b.series))
        for r in b.reports:
            pts = r.points
            if isinstance(pts, PointsBlock):  # its series, no Python object per point
                keys.update(series_key(m, labels) for m, labels in pts.block.series_list())
            else:
                keys.update(series_key(p.metric, p.labels) for p in pts)
    return keys


@dataclass
class _Known:
    """One tenant's series as this process knows them."""

    confirmed: set[int] = field(default_factory=set)  # stored, or acknowledged by this process
    # admitted for requests not answered yet, by how many of them: a series only those hold is given
    # back when the last of them fails, never while another one may still be acknowledged
    pending: dict[int, int] = field(default_factory=dict)
    after_id: int = 0
    read_at: float = float("-inf")  # when the last read of the store ended
    full_at: float = float("-inf")
    reading: asyncio.Task[None] | None = None

    def count(self) -> int:
        return len(self.confirmed) + sum(1 for k in self.pending if k not in self.confirmed)


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

    async def admit(self, tenant: str, series: set[int], protocol: str) -> set[int]:
        """Admit a request's series, or raise the 400. Returns what the request holds: pass it to
        :meth:`confirm` once the request is acknowledged, or to :meth:`release` if it is not."""
        limit = self.limit(tenant)
        if not limit:
            return set()
        known = self._known.setdefault(tenant, _Known())
        if known.read_at == float("-inf"):
            await self._wait_read(tenant, known, FIRST_READ_WAIT)
        elif time.monotonic() - known.read_at > self.cfg.server.series_limit_refresh_seconds:
            self._start_read(tenant, known)  # in the background: answers never wait for it
        new = series - known.confirmed - known.pending.keys()
        if new and known.count() + len(new) > limit and time.monotonic() - known.read_at > REFUSAL_READ_WAIT:
            # perhaps stored by another ingest process since the last read
            await self._wait_read(tenant, known, REFUSAL_READ_WAIT)
            new = series - known.confirmed - known.pending.keys()
        # no await from here on: the check and the count it relies on are one step
        if new and known.count() + len(new) > limit:
            self.metrics.series_limited.labels(tenant, protocol).inc()
            self.metrics.series_refused.labels(tenant, protocol).inc(len(new))
            have = known.count()
            raise ApiError(
                400,
                f"series limit: tenant {tenant!r} has {have} series and may have at most "
                f"{limit}; this request would add {len(new)} new ones (nothing of it was stored). "
                "Raise tenants.<name>.max_series or server.max_series_per_tenant, or drop the "
                "label that makes series unbounded",
                SERIES_LIMIT,
                detail={"reason": SERIES_LIMIT, "limit": limit, "series": have, "new": len(new)},
            )
        held = series - known.confirmed
        for k in held:
            known.pending[k] = known.pending.get(k, 0) + 1
        return held

    def confirm(self, tenant: str, held: set[int]) -> None:
        """The request holding ``held`` was acknowledged: its series count for good."""
        known = self._known.get(tenant)
        if known is not None and held:
            known.confirmed |= held
            self._drop(known, held)

    def release(self, tenant: str, held: set[int]) -> None:
        """The request holding ``held`` was not acknowledged (if its append lands after all, the
        next read of the store counts its series)."""
        known = self._known.get(tenant)
        if known is not None and held:
            self._drop(known, held)

    @staticmethod
    def _drop(known: _Known, held: set[int]) -> None:
        for k in held:
            n = known.pending.get(k, 0) - 1
            if n > 0:
                known.pending[k] = n
            else:
                known.pending.pop(k, None)

    def _start_read(self, tenant: str, known: _Known) -> asyncio.Task[None]:
        if known.reading is None or known.reading.done():
            known.reading = asyncio.get_running_loop().create_task(self._read(tenant, known))
        return known.reading

    async def _wait_read(self, tenant: str, known: _Known, timeout: float) -> None:
        # the read goes on if the wait ends: its result still counts when it comes
        await asyncio.wait({self._start_read(tenant, known)}, timeout=timeout)

    async def _read(self, tenant: str, known: _Known) -> None:
        """Add the series stored since the last read (or all, now and then) to what is known."""
        now = time.monotonic()
        full = now - known.full_at > FULL_READ_SECONDS
        after = 0 if full else max(0, known.after_id - ID_OVERLAP)
        try:
            last, found = await self.store.run(lambda s: _stored(s, tenant, after))
        except Exception as e:  # the store is down, locked or failing: go on with what is known
            if now - self._warned > 10:
                self._warned = now
                log.warning("ingest.series_limit_store_unreadable", tenant=tenant, error=str(e))
            known.read_at = time.monotonic()
            return
        known.confirmed |= found
        known.after_id = max(known.after_id, last)
        if full:
            known.full_at = now
        known.read_at = time.monotonic()


def _stored(store: StoreReader, tenant: str, after: int) -> tuple[int, set[int]]:
    """The tenant's series (:func:`series_key`) above id ``after``, and the highest id read."""
    keys: set[int] = set()
    for rows in _batches(store, tenant, after):
        keys.update(hash((_name(metric), text)) for _, metric, text in rows)
        after = rows[-1][0]
    return after, keys


def _batches(store: StoreReader, tenant: str, after: int) -> Iterator[list[tuple[int, str, str]]]:
    while True:
        rows = store.series_after(tenant, after, READ_BATCH)
        if rows:
            yield rows
        if len(rows) < READ_BATCH:
            return
        after = rows[-1][0]
