"""Query API: series, agents and their ledgers. A key only ever sees its own tenant's data."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from lossproof.auth import UNAUTHORIZED, KeyRing
from lossproof.httputil import ApiError, client_reason, json_response
from lossproof.query import params
from lossproof.store.access import StoreAccess, StoreDamaged, StoreUnavailable
from lossproof.store.base import SpoolState, StoreReader

T = TypeVar("T")


class QueryApi:
    def __init__(self, keys: KeyRing, store: StoreAccess) -> None:
        self.keys = keys
        self.store = store

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/query", self.query),
            web.get("/v1/agents", self.agents),
            web.get("/v1/agents/{agent}/ledger", self.ledger),
        ]

    def _tenant(self, request: web.Request) -> str:
        tenant = self.keys.tenant(request)
        if tenant is None:
            raise ApiError(401, UNAUTHORIZED, "unauthorized", {"WWW-Authenticate": "Bearer"})
        asked = request.query.get("tenant")
        if asked is not None and asked != tenant:
            raise ApiError(403, f"this key belongs to another tenant than {asked!r}", "forbidden")
        return tenant

    async def query(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        q = request.query
        metric = q.get("metric", "")
        if not metric:
            raise ApiError(400, "query parameter 'metric' is required", "bad_request")
        now = int(time.time() * 1000)
        try:
            from_ms = params.parse_ms(q.get("from"), "from", now - 3_600_000)
            to_ms = params.parse_ms(q.get("to"), "to", now)
        except params.ParamError as e:
            raise ApiError(400, str(e), "bad_request") from None
        if from_ms > to_ms:
            raise ApiError(400, "'from' is after 'to'", "bad_request")
        labels: dict[str, str] = {}
        for f in q.getall("label", []):
            k, sep, v = f.partition(":")
            if not sep or not k:
                raise ApiError(400, f"label filter {f!r} is not of the form key:value", "bad_request")
            labels[k] = v
        series = await self._run(lambda s: s.query(tenant, metric, from_ms, to_ms, labels))
        return json_response(
            {
                "series": [
                    {"metric": s.metric, "labels": s.labels, "points": [[t, _num(v)] for t, v in s.points]}
                    for s in series
                ]
            }
        )

    async def agents(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        agents = await self._run(lambda s: s.agents(tenant))
        return json_response(
            {
                "agents": [
                    {
                        "agent": a.agent,
                        "max_seq": a.max_seq,
                        "stored": a.stored_reports,
                        "missing": a.missing_reports,
                        "lost": a.lost_reports,
                        "last_stored_ms": a.last_stored_ms,
                        "delayed": a.delayed_reports,
                        "last_seen_ms": a.heard_ms,
                        "one_shot": a.one_shot,
                        "incarnation": a.incarnation,
                        "first_seq": a.first_seq,
                        "first_seen_ms": a.first_seen_ms,
                        "conflicts": a.conflict_reports,
                    }
                    for a in agents
                ]
            }
        )

    async def ledger(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        agent = request.match_info["agent"]
        # ?incarnation= picks one (an empty value: the agent's reports sent without one); by
        # default the incarnation first seen last.
        incarnation = request.query.get("incarnation")
        ledger = await self._run(lambda s: s.ledger(tenant, agent, incarnation))
        if ledger is None:
            which = "" if incarnation is None else f" with incarnation {incarnation!r}"
            raise ApiError(404, f"no agent {agent!r}{which} in this tenant", "not_found")
        incarnations = await self._run(
            lambda s: [a.incarnation for a in s.agents(tenant) if a.agent == agent]
        )
        conflicts = await self._run(lambda s: s.conflicts(tenant, agent))
        return json_response(
            {
                "incarnation": ledger.incarnation,
                "first_seq": ledger.first_seq,
                "incarnations": incarnations,
                "conflicts": [
                    {
                        "id": c.id,
                        "seq": c.seq,
                        "points": c.points,
                        "detected_ms": c.detected_ms,
                        "applied_ms": c.applied_ms,
                    }
                    for c in conflicts
                    if c.incarnation == ledger.incarnation
                ],
                "stored": [list(r) for r in ledger.stored],
                "missing": [[a, b] for a, b, _ in ledger.missing],
                "missing_since_ms": [since for _, _, since in ledger.missing],
                "lost": [{"range": [a, b], "reason": why} for a, b, why in ledger.lost],
                "delayed": [{"range": [a, b], "pending_since_ms": since} for a, b, since in ledger.delayed],
                "spool": None if ledger.spool is None else _spool(ledger.spool),
            }
        )

    async def _run(self, fn: Callable[[StoreReader], T]) -> T:
        try:
            return await self.store.run(fn)
        except StoreUnavailable as e:
            raise ApiError(503, client_reason(str(e)), "unavailable", {"Retry-After": "1"}) from None
        except StoreDamaged as e:
            raise ApiError(500, client_reason(str(e)), "damaged") from None


def _spool(s: SpoolState) -> dict[str, int]:
    return {
        "pending_reports": s.pending_reports,
        "pending_bytes": s.pending_bytes,
        "oldest_pending_ms": s.oldest_pending_ms,
        "first_pending_seq": s.first_pending_seq,
        "last_seq": s.last_seq,
        "reported_ms": s.reported_ms,
    }


def _num(v: float) -> float | str:
    # JSON has no NaN/Inf; spell them the way Prometheus' API does.
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
