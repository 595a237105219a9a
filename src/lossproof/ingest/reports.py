"""``POST /v1/reports``: the native protocol. Answers 200 only once the log has the data durably.

The hot path authenticates, bounds sizes, checks the body decodes into the protocol's types (in
msgspec's C code), and appends the body *as received* to the log. Points are never touched one by
one in Python here: the worker decodes them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiohttp import web

from lossproof.auth import KeyRing
from lossproof.config import Config
from lossproof.httputil import (
    ApiError,
    accounted,
    await_durable,
    continue_or,
    json_response,
    native_content_type,
    read_body,
    unavailable,
)
from lossproof.ingest.metrics import IngestMetrics
from lossproof.ingest.series_limit import SeriesLimit, record_series
from lossproof.log.base import LogUnavailable, LogWriter
from lossproof.obs.logging import get
from lossproof.protocol import native
from lossproof.protocol.compression import BadEncoding, TooLarge, decompress
from lossproof.receipt import Receipt, acked, covers_a_record
from lossproof.store.access import StoreAccess

log = get(__name__)


class Ingest:
    """The part of every ingest endpoint that makes "acknowledged means durable" true: a bounded
    body read, and an append to the log that is awaited until durable (or answered 503). The native
    handler and the third-party protocols (``ingest/protocols.py``) share it."""

    query_auth = False  # may the key come in the query string (InfluxDB 1.x)?

    def __init__(
        self,
        cfg: Config,
        keys: KeyRing,
        writer: LogWriter,
        metrics: IngestMetrics,
        series_limit: SeriesLimit | None = None,
    ) -> None:
        self.cfg = cfg
        self.keys = keys
        self.writer = writer
        self.metrics = metrics
        self.series_limit = series_limit

    def unavailable(self, reason: str) -> ApiError:
        return unavailable("log", reason, self.cfg.server.retry_after_seconds)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: the key is checked first, so a client with a wrong key gets its
        401/403 without sending the body; aiohttp's default would ask for the body unconditionally."""
        try:
            self.keys.writer(request, query=self.query_auth)
        except ApiError as e:
            self.metrics.rejected.labels(e.reason).inc()
            return await continue_or(request, self.refusal(request, e))
        return await continue_or(request, None)

    def refusal(self, request: web.Request, e: ApiError) -> web.StreamResponse:
        """The answer to a request refused before its body is read (native; protocols override)."""
        self.metrics.requests.labels("native", str(e.status)).inc()
        return json_response({"error": e.message}, e.status, e.headers)

    async def read(self, request: web.Request) -> bytes:
        srv = self.cfg.server
        return await read_body(request, srv.max_body_bytes, srv.body_idle_seconds, srv.body_read_max_seconds)

    async def append_limited(
        self, tenant: str, protocol: str, key: bytes, record: bytes, seqs: Sequence[tuple[int, int]] = ()
    ) -> Receipt:
        """:meth:`append_durable`, once the tenant's series limit admitted the record's series (or
        raised the 400). The record is decoded as the worker will decode it, off the event loop."""
        limit = self.series_limit
        if limit is None or not limit.limit(tenant):
            return await self.append_durable(key, record, seqs)
        held = await limit.admit(tenant, await asyncio.to_thread(record_series, record), protocol)
        try:
            receipt = await self.append_durable(key, record, seqs)
        except BaseException:
            limit.release(tenant, held)
            raise
        limit.confirm(tenant, held)
        return receipt

    async def append_durable(
        self, key: bytes, record: bytes, seqs: Sequence[tuple[int, int]] = ()
    ) -> Receipt:
        """Append ``record`` and return the log's durable receipt; raise the 503 otherwise. The
        receipt is what the 2xx is built from (:mod:`lossproof.receipt`)."""
        timeout = self.cfg.server.append_timeout_seconds
        receipt = await await_durable(
            self.writer.append(key, record, seqs), timeout, LogUnavailable, self.unavailable
        )
        return covers_a_record(receipt)  # before anything counts it as acknowledged


class ReportsHandler(Ingest):
    def __init__(
        self,
        cfg: Config,
        keys: KeyRing,
        writer: LogWriter,
        store: StoreAccess,
        metrics: IngestMetrics,
        series_limit: SeriesLimit | None = None,
    ) -> None:
        super().__init__(cfg, keys, writer, metrics, series_limit)
        self.store = store

    async def _conflicts(
        self, tenant: str, checked: native.Checked, body: bytes, ctype: str
    ) -> list[tuple[int, int]]:
        """The request's seqs already stored with other content (a reused seq: a wiped spool, a second
        host with the same agent id, a copied spool). Only the stored ones among the request's seqs
        are looked up, and only then is the (decompressed) body decoded and their reports hashed.
        Without an answer from the store the request goes on: the worker then sees the conflict and
        keeps the report whole (never dropped)."""
        if not checked.seqs:
            return []
        stored = await self.store.stored_digests(tenant, checked.agent, checked.incarnation, checked.seqs)
        if not stored:
            return []
        try:
            req = native.decode(body, ctype)
        except native.BadRequest as e:  # the check passed it: only a body at msgspec's own limits
            raise ApiError(400, str(e), "bad_request") from None
        return native.conflicting(req, stored)

    def _refuse_conflict(
        self, tenant: str, checked: native.Checked, conflicts: list[tuple[int, int]]
    ) -> None:
        n = sum(b - a + 1 for a, b in conflicts)
        self.metrics.seq_conflicts.labels(tenant).inc(n)
        log.warning(
            "ingest.seq_conflict",
            tenant=tenant,
            agent=checked.agent,
            incarnation=checked.incarnation,
            seqs=[list(r) for r in conflicts][:20],
            hint="another agent uses this agent id, or its spool was reset or copied",
        )
        raise ApiError(
            409,
            f"seqs {[list(r) for r in conflicts][:20]} of agent {checked.agent!r} (incarnation "
            f"{checked.incarnation!r}) are already stored with other content: start a new incarnation "
            "and send these reports again (see docs/protocol.md)",
            native.SEQ_CONFLICT,
            detail={
                "reason": native.SEQ_CONFLICT,
                "conflicts": [list(r) for r in conflicts],
                "incarnation": checked.incarnation,
            },
        )

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        m = self.metrics
        return await accounted(
            self._handle,
            request,
            requests=m.requests,
            latency=m.latency,
            rejected=m.rejected,
            labels=("native",),
        )

    async def _handle(self, request: web.Request) -> web.Response:
        srv = self.cfg.server
        tenant = self.keys.writer(request)
        ctype = native_content_type(request)
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        raw = await self.read(request)
        try:
            body = decompress(raw, encoding, srv.max_decoded_bytes)
            checked = native.check(body, ctype)
        except TooLarge as e:
            raise ApiError(413, str(e), "too_large") from None
        except (BadEncoding, native.BadRequest) as e:
            raise ApiError(400, str(e), "bad_request") from None
        seqs, agent = checked.seqs, checked.agent
        # A replay (a fallback receiver drained) already had its 200 from the fallback: refusing it
        # would make it given up; the worker keeps such a conflict whole instead.
        replaying = self.keys.is_replay(request)
        conflicts = [] if replaying else await self._conflicts(tenant, checked, body, ctype)
        del body  # not held while waiting for the log: the log gets the body as it came
        if conflicts:
            self._refuse_conflict(tenant, checked, conflicts)
        record = native.encode_envelope(
            native.Envelope(
                version=1,
                tenant=tenant,
                protocol="native",
                content_type=ctype,
                encoding="" if encoding == "identity" else encoding,
                received_ms=int(time.time() * 1000),
                agent=agent,
                seqs=seqs,
                body=raw,
            )
        )
        key = native.log_key(tenant, agent)
        if replaying:  # the fallback answered 200 for it already: refusing it now would lose it
            receipt = await self.append_durable(key, record, seqs)
        else:
            receipt = await self.append_limited(tenant, "native", key, record, seqs)
        if seqs:
            self.store.acknowledged(tenant, agent, checked.incarnation, seqs)

        self.metrics.reports.labels(tenant).inc(checked.reports)
        self.metrics.points.labels(tenant).inc(checked.points)
        self.metrics.bytes.labels(tenant).inc(len(raw))
        grace_ms = int(self.cfg.ledger.replay_grace_seconds * 1000)
        replay = await self.store.replay_wanted(
            tenant, agent, int(time.time() * 1000) - grace_ms, checked.incarnation
        )
        if replay:
            self.metrics.replay_requested.inc(sum(b - a + 1 for a, b in replay))
        return json_response({"acked": acked(receipt), "replay": replay})
