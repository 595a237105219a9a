"""Prometheus HTTP API (read side), so Grafana and other Prometheus tools can use lossproof as a
Prometheus data source: ``/api/v1/query``, ``/api/v1/query_range``, ``/api/v1/series``,
``/api/v1/labels``, ``/api/v1/label/<name>/values``, ``/api/v1/metadata`` (GET, or POST with a form
body, as Prometheus).

Answers use Prometheus' envelope: ``{"status": "success", "data": ...}`` or
``{"status": "error", "errorType": "bad_data", "error": "..."}``. A key sees only its tenant.
PromQL and the metric-name mapping are described in :mod:`lossproof.query.promql`; what a query may
cost is bounded by :class:`lossproof.query.promql.Limits` (``[query]`` in the configuration).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import promql_parser as pp
from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from lossproof.auth import KeyRing
from lossproof.config import ServerConfig
from lossproof.httputil import (
    CLOSE_STATUSES,
    ApiError,
    BodyLimits,
    client_reason,
    close_after,
    json_body,
    json_response,
    read_form,
)
from lossproof.query import params, promql
from lossproof.query.promref import unparen
from lossproof.store.access import StoreAccess, StoreDamaged, StoreUnavailable
from lossproof.store.base import Matcher, StoreReader

T = TypeVar("T")
TRUNCATED = "results truncated due to limit"  # Prometheus' warning for a metadata answer cut at limit=
MAX_MATCH = 256  # match[] selectors in one request: each is parsed and read on its own
CLIENT_CHECK_SECONDS = 0.5  # how often a running query looks whether its client is still there
# errorType of a body that could not be read (read_form's ApiError), by status: Prometheus has no
# 408/413 of its own; "timeout" tells a client the request was not evaluated.
_BODY_ERROR_TYPES = {408: "timeout", 413: "bad_data", 400: "bad_data"}


class ApiFailure(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def _error(status: int, error_type: str, message: str) -> web.Response:
    return json_response({"status": "error", "errorType": error_type, "error": message}, status)


def _success(data: Any, warnings: list[str] | None = None) -> web.Response:
    return web.Response(body=_success_body(data, warnings), content_type="application/json")


def _success_body(data: Any, warnings: list[str] | None = None) -> bytes:
    """:func:`_success`'s body, for the thread that builds a query's answer to encode it too: an
    answer can be hundreds of MB, which the event loop that acknowledges writes would otherwise spend
    a second or more on (and a hop to a thread of its own would cost a small answer more than that)."""
    if warnings:
        return json_body({"status": "success", "data": data, "warnings": warnings})
    return json_body({"status": "success", "data": data})


def _answer(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def parse_time(raw: str, name: str) -> int:
    """Unix seconds (float) or RFC 3339, to unix ms (bounded: see :mod:`lossproof.query.params`)."""
    return params.parse_time(raw, name)


def parse_step(raw: str, name: str = "step") -> int:
    """Seconds (float) or a PromQL duration (``15s``, ``1m``), to ms."""
    return params.parse_duration(raw, name)


def _ts(ms: int) -> float | int:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


class PromApi:
    def __init__(
        self,
        keys: KeyRing,
        store: StoreAccess,
        limits: promql.Limits | None = None,
        closed_windows: bool = False,
        body: BodyLimits | None = None,
    ) -> None:
        """``body``: how a form body is read (``[server]``'s body limits; their defaults if None)."""
        self.keys = keys
        self.store = store
        self.limits = limits or promql.Limits()
        self.body = body or BodyLimits.of(ServerConfig())
        # Prometheus 2's closed windows rather than 3's left-open ones ([query] windows)
        self.closed = closed_windows

    def routes(self) -> list[web.RouteDef]:
        out: list[web.RouteDef] = []
        for path, handler in (
            ("/api/v1/query", self.query),
            ("/api/v1/query_range", self.query_range),
            ("/api/v1/series", self.series),
            ("/api/v1/labels", self.labels),
            ("/api/v1/label/{name}/values", self.label_values),
            ("/api/v1/metadata", self.metadata),
            ("/api/v1/status/buildinfo", self.buildinfo),
        ):
            wrapped = self._wrap(handler)
            out += [web.get(path, wrapped, allow_head=False), web.post(path, wrapped)]
        return out

    def _wrap(
        self, handler: Callable[[web.Request, str, MultiDictProxy[str]], Any]
    ) -> Callable[[web.Request], Any]:
        async def run(request: web.Request) -> web.Response:
            tenant = self.keys.tenant(request)
            if tenant is None:
                return _error(401, "unauthorized", "missing or unknown API key (Authorization: Bearer <key>)")
            q: MultiDict[str] = MultiDict(request.query)
            if request.method == "POST":
                # Bounded as every body the server reads: a stalled or dribbled form gets its 408
                # instead of holding the connection (and one of max_connections) forever.
                try:
                    form = await read_form(request, self.body)
                except ApiError as e:
                    resp = _error(e.status, _BODY_ERROR_TYPES.get(e.status, "bad_data"), e.message)
                    if resp.status in CLOSE_STATUSES:  # the rest of the body is not worth waiting for
                        await close_after(request, resp)
                    return resp
                for k, v in form.items():
                    q.add(k, v)
            try:
                result: web.Response = await handler(request, tenant, MultiDictProxy(q))
                return result
            except ApiFailure as e:
                return _error(e.status, e.error_type, e.message)
            except params.ParamError as e:
                return _error(400, "bad_data", str(e))
            except promql.PromQLError as e:
                return _error(e.status, e.error_type, str(e))
            except StoreUnavailable as e:
                return _error(503, "unavailable", client_reason(str(e)))
            except StoreDamaged as e:  # (Prometheus answers its storage's failures as "internal")
                return _error(500, "internal", client_reason(str(e)))

        return run

    async def _run(self, fn: Callable[[StoreReader], T]) -> T:
        return await self.store.run(fn)

    async def _evaluate(self, request: web.Request, fn: Callable[[StoreReader, promql.Budget], T]) -> T:
        """``fn(store, budget)`` on a read thread, with a budget of this API's limits that is
        cancelled once the client has gone away (or the handler is cancelled): the evaluation then
        stops at its next check instead of holding a read thread for an answer nobody reads."""
        budget = promql.Budget(self.limits)
        task = asyncio.ensure_future(self.store.run(lambda s: fn(s, budget)))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=CLIENT_CHECK_SECONDS)
                transport = request.transport
                if transport is None or transport.is_closing():
                    budget.cancel()
            return task.result()
        except asyncio.CancelledError:
            budget.cancel()
            raise

    # --- queries -----------------------------------------------------------------------------------

    async def query(self, request: web.Request, tenant: str, q: MultiDictProxy[str]) -> web.Response:
        expr = await promql.parse_async(q.get("query", ""))
        at = parse_time(q["time"], "time") if q.get("time") else int(time.time() * 1000)
        if q.get("timeout"):  # (Prometheus checks it after the time, before the query)
            params.check_timeout(q["timeout"])
        lookback = _lookback(q)
        limit = _limit(q)
        inner = unparen(expr)
        limits, closed = self.limits, self.closed
        if isinstance(inner, pp.StringLiteral):
            return _success({"resultType": "string", "result": [_ts(at), str(inner.val)]})
        if isinstance(inner, (pp.MatrixSelector, pp.SubqueryExpr)):
            raw = await self._evaluate(
                request, lambda s, b: promql.instant_raw(s, tenant, inner, at, limits, closed, lookback, b)
            )

            def encode_raw() -> bytes:
                rows, warnings = _cut(_raw_rows(raw), limit)
                return _success_body({"resultType": "matrix", "result": rows}, warnings)

            return _answer(await asyncio.to_thread(encode_raw))
        grid = promql.Grid(at, at, 1)

        def run(s: StoreReader, budget: promql.Budget) -> bytes:
            # the answer's rows built here too, off the event loop (a vector of many series takes
            # milliseconds, which acknowledgements would wait for)
            value = promql.Evaluator(s, tenant, grid, lookback, budget=budget, closed=closed).answer(expr)
            if isinstance(value, promql.Scalar):
                return _success_body(
                    {"resultType": "scalar", "result": [_ts(at), promql.format_value(value.values[0])]}
                )
            present = [i for i in promql.instant_order(expr, value) if value.present[i, 0]]
            order, warnings = _cut(present, limit)
            texts = promql.format_values(value.values[order, 0].tolist())
            t = _ts(at)
            rows = [{"metric": value.labels[i], "value": [t, v]} for i, v in zip(order, texts, strict=True)]
            return _success_body({"resultType": "vector", "result": rows}, warnings)

        return _answer(await self._evaluate(request, run))

    async def query_range(self, request: web.Request, tenant: str, q: MultiDictProxy[str]) -> web.Response:
        for name in ("start", "end", "step"):
            if not q.get(name):
                raise ApiFailure(400, "bad_data", f"invalid parameter {name!r}: missing")
        start = parse_time(q["start"], "start")
        end = parse_time(q["end"], "end")
        if end < start:
            raise ApiFailure(
                400, "bad_data", "invalid parameter 'end': end timestamp must not be before start time"
            )
        step = parse_step(q["step"])
        if (end - start) // step + 1 > promql.MAX_POINTS:
            raise ApiFailure(
                400,
                "bad_data",
                "exceeded maximum resolution of 11,000 points per timeseries. "
                "Try decreasing the query resolution (?step=XX)",
            )
        if q.get("timeout"):
            params.check_timeout(q["timeout"])
        expr = await promql.parse_async(q.get("query", ""))
        top = unparen(expr)
        if isinstance(top, (pp.MatrixSelector, pp.SubqueryExpr, pp.StringLiteral)):
            kind = "string" if isinstance(top, pp.StringLiteral) else "range vector"
            raise ApiFailure(
                400,
                "bad_data",
                f'invalid expression type "{kind}" for range query, must be Scalar or instant Vector',
            )
        grid = promql.Grid(start, end, step)
        lookback = _lookback(q)
        limit = _limit(q)
        closed = self.closed
        value = await self._evaluate(
            request,
            lambda s, b: promql.Evaluator(s, tenant, grid, lookback, budget=b, closed=closed).answer(expr),
        )
        def encode() -> bytes:
            rows, warnings = _cut(promql.matrix_rows(value, grid.times(), _ts), limit)
            result = [{"metric": labels, "values": pts} for labels, pts in rows]
            return _success_body({"resultType": "matrix", "result": result}, warnings)

        return _answer(await asyncio.to_thread(encode))

    # --- metadata ----------------------------------------------------------------------------------

    @staticmethod
    async def _selectors(q: MultiDictProxy[str], required: bool) -> list[pp.VectorSelector] | None:
        """The ``match[]`` selectors, parsed; None when there are none (and none are ``required``).
        A bad one is a 400 before the store is asked (even when it is unavailable). Parsed off the
        event loop, except those remembered from earlier requests: dashboards send the same few again
        and again, and a thread hop costs more than answering them from the series index."""
        selectors = q.getall("match[]", [])
        if not selectors:
            if required:
                raise ApiFailure(400, "bad_data", "no match[] parameter provided")
            return None
        if len(selectors) > MAX_MATCH:
            raise ApiFailure(400, "bad_data", f"{len(selectors)} match[] parameters, at most {MAX_MATCH}")
        if any(sel not in _SELECTORS for sel in selectors):
            await asyncio.to_thread(lambda: [_selector(sel) for sel in selectors])
        return [_selector(sel) for sel in selectors]

    @staticmethod
    def _matcher_sets(
        s: StoreReader, tenant: str, parsed: list[pp.VectorSelector] | None
    ) -> list[list[Matcher]] | None:
        """Store matchers for each selector (those no stored metric name can match left out); None
        for no selectors: every series."""
        if parsed is None:
            return None
        ev = promql.Evaluator(s, tenant, promql.Grid(0, 0, 1))
        return [ms for ms in map(ev.matchers, parsed) if ms is not None]

    async def _series(self, tenant: str, q: MultiDictProxy[str], required: bool) -> list[dict[str, str]]:
        parsed = await self._selectors(q, required)

        def run(s: StoreReader) -> list[dict[str, str]]:
            sets = self._matcher_sets(s, tenant, parsed)
            found = [s.series(tenant, ms) for ms in ([[]] if sets is None else sets)]
            if len(found) == 1:
                ordered = _in_label_order(found[0])
                if ordered is not None:
                    return ordered
            seen: dict[promql.Key, dict[str, str]] = {}
            for one in found:
                for metric, labels in one:
                    full = {**labels, promql.NAME: promql.promql_name(metric)}
                    seen.setdefault(promql.key_of(full), full)
            return [seen[k] for k in sorted(seen)]

        return await self.store.run_brief(run)

    async def series(self, request: web.Request, tenant: str, q: MultiDictProxy[str]) -> web.Response:
        limit = _metadata_args(q)
        return _success_limited(await self._series(tenant, q, required=True), limit)

    async def labels(self, request: web.Request, tenant: str, q: MultiDictProxy[str]) -> web.Response:
        limit = _metadata_args(q)
        parsed = await self._selectors(q, required=False)
        names = await self.store.run_brief(
            lambda s: s.label_names(tenant, self._matcher_sets(s, tenant, parsed))
        )
        return _success_limited(names, limit)

    async def label_values(self, request: web.Request, tenant: str, q: MultiDictProxy[str]) -> web.Response:
        limit = _metadata_args(q)
        name = request.match_info["name"]
        parsed = await self._selectors(q, required=False)
        if name == promql.NAME and parsed is None:
            metrics = await self.store.run_brief(lambda s: s.metric_names(tenant))
            return _success_limited(sorted({promql.promql_name(m) for m in metrics}), limit)
        values = await self.store.run_brief(
            lambda s: s.label_values(tenant, name, self._matcher_sets(s, tenant, parsed))
        )
        if name == promql.NAME:
            values = sorted({promql.promql_name(m) for m in values})
        return _success_limited(values, limit)

    async def metadata(self, request: web.Request, tenant: str, q: MultiDictProxy[str]) -> web.Response:
        """Metric metadata sent by remote write: ``{"<metric>": [{"type", "help", "unit"}]}``.
        ``metric=`` narrows to one metric, ``limit=`` caps the number of metrics (negative: all).
        ``limit_per_metric=`` is checked and has nothing to cut: a metric has one entry here (the
        last sent), where Prometheus keeps one per target."""
        limit: int | None = None
        if q.get("limit"):
            limit = params.parse_int(q["limit"], "limit")
            if limit < 0:
                limit = None
        if q.get("limit_per_metric"):
            params.parse_int(q["limit_per_metric"], "limit_per_metric")
        metric = q.get("metric") or None
        found = await self._run(lambda s: s.metadata(tenant, metric, limit))
        data: dict[str, list[dict[str, str]]] = {}
        for m in found:
            data.setdefault(m.metric, []).append({"type": m.type, "help": m.help, "unit": m.unit})
        return _success(data)

    async def buildinfo(self, request: web.Request, tenant: str, q: MultiDictProxy[str]) -> web.Response:
        return _success(
            {
                "version": "2.45.0",
                "revision": "lossproof",
                "branch": "",
                "buildUser": "",
                "buildDate": "",
                "goVersion": "",
            }
        )


_SELECTORS: dict[str, pp.VectorSelector] = {}
_SELECTORS_MAX = 256
_SELECTORS_LOCK = threading.Lock()  # filled from the event loop and from worker threads


def _selector(sel: str) -> pp.VectorSelector:
    """A ``match[]`` selector, parsed and remembered (the parser's nodes are only read); a bad one is
    an :class:`ApiFailure`."""
    e = _SELECTORS.get(sel)
    if e is None:
        parsed = unparen(promql.parse(sel))
        if not isinstance(parsed, pp.VectorSelector):
            raise ApiFailure(400, "bad_data", f"match[] must be a series selector, got {sel!r}")
        with _SELECTORS_LOCK:
            if len(_SELECTORS) >= _SELECTORS_MAX:
                _SELECTORS.pop(next(iter(_SELECTORS)))  # the oldest: dicts keep insertion order
            _SELECTORS[sel] = e = parsed
    return e


def _in_label_order(found: list[tuple[str, dict[str, str]]]) -> list[dict[str, str]] | None:
    """One selector's series (the store's order: by metric, then labels) as Prometheus orders them
    (by the whole label set, ``__name__`` included), when those orders are the same: every metric
    name is its own PromQL spelling and no label name sorts before ``__name__`` (only one starting
    with an upper-case letter does). None when they may differ. A series' key built and sorted was
    a third of ``/api/v1/series``' time (85 of 250 us for 111 series)."""
    if any(promql.promql_name(m) != m or (labels and min(labels) < promql.NAME) for m, labels in found):
        return None
    for metric, labels in found:
        labels[promql.NAME] = metric
    return [labels for _, labels in found]


def _metadata_args(q: MultiDictProxy[str]) -> int | None:
    """The ``limit`` of a metadata endpoint (:func:`_limit`), after checking ``start``/``end``: they
    are accepted and validated, and series and labels are answered over all time."""
    for name in ("start", "end"):
        if q.get(name):
            parse_time(q[name], name)
    return _limit(q)


def _limit(q: MultiDictProxy[str]) -> int | None:
    """``limit=``, as Prometheus has it on the metadata endpoints (2.49) and the queries (3.x): at
    most that many entries or series, None (no limit) for 0 or none; negative is bad data."""
    if not q.get("limit"):
        return None
    limit = params.parse_int(q["limit"], "limit")
    if limit < 0:
        raise params.ParamError("limit", "limit must be non-negative")  # Prometheus' words
    return limit or None


def _cut(items: list[T], limit: int | None) -> tuple[list[T], list[str]]:
    """The first ``limit`` of ``items`` (in the answer's order) and, when some were left out,
    Prometheus' warning: a client can tell a cut answer from a whole one."""
    if limit is None or len(items) <= limit:
        return items, []
    return items[:limit], [TRUNCATED]


def _success_limited(items: list[Any], limit: int | None) -> web.Response:
    kept, warnings = _cut(items, limit)
    return _success(kept, warnings)


def _lookback(q: MultiDictProxy[str]) -> int:
    raw = q.get("lookback_delta")
    return parse_step(raw, "lookback_delta") if raw else promql.LOOKBACK_MS


def _raw_rows(raw: promql.RawMatrix) -> list[dict[str, Any]]:
    """A range selector's samples in Prometheus' JSON shape (points as tuples: see
    :func:`promql.matrix_rows`)."""
    out = []
    for labels, pts in raw.series:
        strs = promql.format_values([v for _, v in pts])
        out.append({"metric": labels, "values": list(zip([_ts(t) for t, _ in pts], strs, strict=True))})
    return out
