"""The web UI at ``/`` and the JSON it reads (``/ui/api/...``), plus the Prometheus API's routes.

Pages (one static page, ``static/index.html`` + ``app.js``): series browser and charts, completeness per
agent and per tenant, pipeline health. The UI asks for an API key, keeps it in sessionStorage and sends
it as ``Authorization: Bearer``; every ``/ui/api`` answer is scoped to that key's tenant.

Also here: a background sampler of the pipeline's own metrics (the health page's rates and history,
:mod:`~lossproof.query.samples`) and the ledger gauges on ``/metrics``
(:mod:`~lossproof.query.ledgergauges`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import numpy as np
import promql_parser as pp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from lossproof.auth import KeyRing
from lossproof.config import Config
from lossproof.httputil import ApiError, BodyLimits, client_reason, json_response
from lossproof.obs.logging import get
from lossproof.query import holes, params, promql, uplot, utf8names
from lossproof.query.healthhistory import Entry, HistoryFile, Sample
from lossproof.query.ledgergauges import SILENT_AFTER_S, LedgerCollector, LedgerSnapshot, ledger_snapshot
from lossproof.query.promapi import PromApi
from lossproof.query.samples import hist_quantile, parse_metrics, sum_of, value_of
from lossproof.query.unconfirmed import unconfirmed
from lossproof.store.access import StoreAccess, StoreDamaged, StoreUnavailable
from lossproof.store.base import AgentSummary, Ledger, LogGap, SteppedArrays, StoreReader

T = TypeVar("T")
log = get(__name__)

STATIC = Path(__file__).parent / "static"
# The alert rules (deploy/alerts.yml of a source checkout), linked from the completeness page.
ALERT_RULES = Path(__file__).resolve().parents[3] / "deploy" / "alerts.yml"
_STATIC_FILES = frozenset(p.name for p in STATIC.iterdir() if p.is_file() and not p.name.startswith("."))
MAX_CHART_SERIES = 200
MAX_WIDTH = 4000
# The newest runs of missing / lost seqs placed in time, per agent and per chart (see holes.py);
# older ones are matched by order.
MAX_PLACED_RUNS = 100
MAX_PLACED_RUNS_PER_CHART = 1000
SAMPLE_EVERY_S = 5.0
LEDGER_EVERY_S = 15.0
HISTORY = 180  # samples kept: 15 minutes at 5 s
SCRAPE_TIMEOUT_S = 2.0  # per /metrics scrape of another process (worker, fallback receivers)
# what the health page shows of each fallback receiver: JSON key -> its gauge (no labels)
FALLBACK_GAUGES = {
    "pending_replay_bytes": "lossproof_fallback_pending_replay_bytes",
    "journal_bytes": "lossproof_fallback_journal_bytes",
    "healthy": "lossproof_fallback_healthy",
}


def register(
    app: web.Application, cfg: Config, keys: KeyRing, store: StoreAccess, registry: CollectorRegistry
) -> None:
    """Add the UI, its JSON API and the Prometheus API to the HTTP process."""
    dash = Dashboard(cfg, keys, store, registry)
    q = cfg.query
    limits = promql.Limits(q.max_samples, q.max_series, q.timeout_seconds, q.max_values)
    closed = q.windows == "prometheus2"
    prom = PromApi(keys, store, limits, closed, body=BodyLimits.of(cfg.server))
    app.add_routes([*dash.routes(), *prom.routes()])
    app.on_startup.append(dash.start)
    app.on_cleanup.append(dash.stop)


register_dashboard = register  # the name the query package exports


# --- the dashboard -----------------------------------------------------------------------------------


class Dashboard:
    def __init__(self, cfg: Config, keys: KeyRing, store: StoreAccess, registry: CollectorRegistry) -> None:
        self.cfg = cfg
        self.keys = keys
        self.store = store
        self.registry = registry
        # kept in run/ across restarts of this process (healthhistory.py)
        self.history_file = HistoryFile(cfg.run_dir / "health-history.jsonl", HISTORY)
        self.history: deque[Entry] = deque(maxlen=HISTORY)
        self.ledger = LedgerCollector()
        registry.register(self.ledger)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # the fallback receivers at the last sample (see _fallback), in config order
        self.fallbacks: list[dict[str, Any]] = []
        # this process's ingest counters (possibly dropped requests) count from here
        self.started_ms = _now_ms()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/ui/static/{name}", self.static),
            web.get("/ui/alerts.yml", self.alert_rules),
            web.get("/ui/vendor/{name}", self.vendor),
            web.get("/ui/api/status", self.status),
            web.get("/ui/api/series", self.series),
            web.get("/ui/api/chart", self.chart),
            web.get("/ui/api/completeness", self.completeness),
            web.get("/ui/api/health", self.health),
        ]

    # lifecycle

    async def start(self, app: web.Application) -> None:
        self.history.extend(await asyncio.to_thread(self.history_file.load))
        uplot.ensure_in_background()
        self._task = asyncio.create_task(self._loop())

    async def stop(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        last_ledger = 0.0
        while True:
            try:
                await self.sample()
                if time.monotonic() - last_ledger >= LEDGER_EVERY_S:
                    last_ledger = time.monotonic()
                    self.ledger.snap = await self.store.run(self._snapshot)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the UI's sampler must never take the process down
                log.warning("dashboard.sample_failed", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(SAMPLE_EVERY_S)

    def _snapshot(self, store: StoreReader) -> LedgerSnapshot:
        return ledger_snapshot(store, sorted(self.keys.tenants))

    async def sample(self) -> Sample:
        """Scrape the ingest's registry, the worker's /metrics and every configured fallback receiver's
        (concurrently, each within SCRAPE_TIMEOUT_S). The fallbacks' numbers are kept apart from
        ``history``: they are other processes, and some of their metric names would mix with ours."""
        worker, *fallbacks = await asyncio.gather(
            self._worker_metrics(), *(self._fallback(url) for url in self.cfg.health.fallback_urls)
        )
        snap = parse_metrics(generate_latest(self.registry).decode() + worker)
        entry = Entry(time.time(), self.started_ms, snap)
        self.history.append(entry)
        await asyncio.to_thread(self.history_file.append, entry, list(self.history))
        self.fallbacks = list(fallbacks)
        return snap

    async def _fetch(self, url: str) -> tuple[str | None, str]:
        """GET ``url`` within SCRAPE_TIMEOUT_S: (body, "") or (None, why not). Never raises."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with (
                asyncio.timeout(SCRAPE_TIMEOUT_S),
                self._session.get(url, timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)) as r,
            ):
                if r.status != 200:
                    return None, f"HTTP {r.status}"
                return (await r.read()).decode(errors="replace"), ""
        except TimeoutError:
            return None, f"no answer within {SCRAPE_TIMEOUT_S:g} s"
        except aiohttp.ClientError as e:
            return None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        except Exception as e:  # a scrape of another process must never fail the page
            return None, f"{type(e).__name__}: {e}"

    async def _worker_metrics(self) -> str:
        try:
            addr = (self.cfg.run_dir / "worker.addr").read_text().strip()
        except OSError:
            return ""
        text, _ = await self._fetch(f"http://{addr}/metrics")
        return text or ""

    async def _fallback(self, url: str) -> dict[str, Any]:
        """One fallback receiver's state. Only its unlabelled, pipeline-wide gauges are read: its
        per-tenant counters must not reach another tenant's health page."""
        out: dict[str, Any] = {"url": url, "reachable": False, "error": ""}
        out.update(dict.fromkeys(FALLBACK_GAUGES))
        text, error = await self._fetch(url + "/metrics")
        if text is None:
            out["error"] = error
            return out
        try:
            snap = parse_metrics(text)
        except Exception as e:  # whatever answered is not Prometheus text
            out["error"] = f"cannot parse its /metrics: {e}"
            return out
        out["reachable"] = True
        for key, name in FALLBACK_GAUGES.items():
            v = snap.get((name, ()))
            out[key] = v if v is not None and math.isfinite(v) else None
        if out["pending_replay_bytes"] is None:
            out["error"] = (
                "no lossproof_fallback_pending_replay_bytes in its /metrics "
                "(not a lossproof fallback receiver, or its journal is unreadable)"
            )
        return out

    # helpers

    def _tenant(self, request: web.Request) -> str:
        tenant = self.keys.tenant(request)
        if tenant is None:
            raise _fail(401, "missing or unknown API key (Authorization: Bearer <key>)")
        return tenant

    async def _run(self, fn: Callable[[StoreReader], T]) -> T:
        try:
            return await self.store.run(fn)
        except StoreUnavailable as e:
            raise _fail(503, client_reason(str(e))) from None
        except StoreDamaged as e:
            raise _fail(500, client_reason(str(e))) from None
        except promql.PromQLError as e:  # e.g. a regex RE2 refuses, found when matchers are built
            raise _fail(e.status, str(e)) from None

    # static files

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        # Looked up among the files shipped, never opened by a client's name (a 256-character one
        # is an OSError, not a 404).
        if name not in _STATIC_FILES:
            raise _fail(404, f"no such file: {name[:100]}")
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    async def alert_rules(self, request: web.Request) -> web.StreamResponse:
        if not ALERT_RULES.is_file():  # an installed package has no deploy/
            raise _fail(404, "the alert rules are deploy/alerts.yml in lossproof's source tree")
        return web.FileResponse(ALERT_RULES, headers={"Content-Type": "text/plain; charset=utf-8"})

    async def vendor(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        d = uplot.find()
        if name not in uplot.FILES.values():
            raise _fail(404, f"not found: {name}")
        if d is None:
            raise _fail(404, f"charting library not installed: run {uplot.HINT}")
        return web.FileResponse(d / name, headers={"Cache-Control": "public, max-age=86400"})

    async def status(self, request: web.Request) -> web.Response:
        tenant = self.keys.tenant(request)
        return json_response({"tenant": tenant, "uplot": uplot.status(), "now": _now_ms()})

    # series browser and charts

    async def _selector(self, raw: str) -> pp.VectorSelector:
        try:
            # a name typed as the series list shows it (system.load.1) is read as {"system.load.1"}
            e = await promql.parse_async(utf8names.quote_bare_name(raw))
        except promql.PromQLError as err:
            raise _fail(400, str(err)) from None
        while isinstance(e, pp.ParenExpr):
            e = e.expr
        if not isinstance(e, pp.VectorSelector):
            raise _fail(400, 'expected a series selector such as cpu_user{host="a"} or {"cpu.user",host="a"}')
        return e

    async def series(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        raw = request.query.get("match", "").strip()
        try:
            limit = min(params.parse_int(request.query.get("limit") or "500", "limit", lo=0), 5000)
        except params.ParamError as e:
            raise _fail(400, str(e)) from None
        sel = await self._selector(raw) if raw else None

        def run(s: StoreReader) -> dict[str, Any]:
            if sel is None:
                found = s.series(tenant, [])
            else:
                ms = promql.Evaluator(s, tenant, promql.Grid(0, 0, 1)).matchers(sel)
                found = [] if ms is None else s.series(tenant, ms)
            labels: dict[str, set[str]] = {}
            for m, lab in found:
                labels.setdefault("__name__", set()).add(m)
                for k, v in lab.items():
                    labels.setdefault(k, set()).add(v)
            return {
                "total": len(found),
                "series": [
                    {"metric": m, "labels": lab, "selector": _selector_text(m, lab)}
                    for m, lab in found[:limit]
                ],
                "labels": {k: sorted(v)[:200] for k, v in sorted(labels.items())},
                "metrics": s.metric_names(tenant)[:2000],
            }

        return json_response(await self._run(run))

    async def chart(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        tenant = self._tenant(request)
        q = request.query
        sel = await self._selector(q.get("match", ""))
        now = _now_ms()
        try:
            to_ms = params.check_time_ms(params.parse_int(q.get("to") or str(now), "to"), "to")
            from_raw = q.get("from") or str(to_ms - 3_600_000)
            from_ms = params.check_time_ms(params.parse_int(from_raw, "from"), "from")
            width = max(10, min(params.parse_int(q.get("width") or "1000", "width"), MAX_WIDTH))
        except params.ParamError as e:
            raise _fail(400, f"{e} (from/to are unix ms, width an integer)") from None
        if from_ms >= to_ms:
            raise _fail(400, "'from' must be before 'to'")
        step = max(1, -(-(to_ms - from_ms) // width))
        n = -(-(to_ms - from_ms) // step) + 1
        # The grid ends exactly at `to`: a point sent a moment ago is on the chart (a grid anchored at
        # `from` could end up to a step before `to` and leave the newest point out).
        start = to_ms - (n - 1) * step

        def run(s: StoreReader) -> dict[str, Any]:
            cpu0 = time.thread_time()
            ev = promql.Evaluator(s, tenant, promql.Grid(from_ms, from_ms, 1))
            ms = ev.matchers(sel)
            found = [] if ms is None else s.select_last_arrays(tenant, ms, start, to_ms, step, step)
            truncated = len(found) > MAX_CHART_SERIES
            found = found[:MAX_CHART_SERIES]
            agents = {a.agent: a for a in s.agents(tenant)}
            ledgers: dict[str, Ledger | None] = {}
            placed = _Placed(s, tenant)
            out = []
            for st in found:
                agent = holes.agent_of(st.labels, set(agents))
                if agent is not None and agent not in ledgers:
                    ledgers[agent] = s.ledger(tenant, agent)
                summary: AgentSummary | None = agents.get(agent) if agent else None
                ledger = ledgers.get(agent) if agent else None
                gaps = holes.gaps_of(st.t[st.present], len(st.t), start, step, min(to_ms, now))
                inner = any(not trailing for _, _, trailing in gaps.found)
                found_holes = holes.classify(
                    gaps,
                    summary,
                    ledger,
                    now,
                    to_ms >= now - 2 * step,
                    placed.get(agent, ledger) if agent and ledger and inner else [],
                )
                out.append(
                    {
                        "metric": st.metric,
                        "labels": st.labels,
                        "selector": _selector_text(st.metric, st.labels),
                        "agent": agent,
                        "values": _values(st),
                        "holes": [h.as_json() for h in found_holes],
                    }
                )
            # CPU time of the store thread: what the answer costs without other load on the machine
            cpu_ms = round((time.thread_time() - cpu0) * 1000, 1)
            return {"series": out, "truncated": truncated, "store_cpu_ms": cpu_ms}

        body = await self._run(run)
        body.update(start=start, step=step, n=n, now=now, took_ms=round((time.perf_counter() - t0) * 1000, 1))
        return json_response(body)

    # completeness

    async def completeness(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        now = _now_ms()

        def run(s: StoreReader) -> dict[str, Any]:
            agents = s.agents(tenant)
            rows = []
            totals = {"stored": 0, "delayed": 0, "missing": 0, "lost": 0, "conflict": 0}
            incarnations: dict[str, int] = {}
            for a in agents:
                incarnations[a.agent] = incarnations.get(a.agent, 0) + 1
            # the most troubled first; ledgers for the first 300. One row per incarnation of an agent.
            agents.sort(
                key=lambda a: (
                    -(a.lost_reports + a.missing_reports + a.delayed_reports + a.conflict_reports),
                    a.agent,
                    a.first_seen_ms,
                )
            )
            for i, a in enumerate(agents):
                totals["stored"] += a.stored_reports
                totals["delayed"] += a.delayed_reports
                totals["missing"] += a.missing_reports
                totals["lost"] += a.lost_reports
                totals["conflict"] += a.conflict_reports
                row: dict[str, Any] = {
                    "agent": a.agent,
                    "incarnation": a.incarnation,
                    "incarnations": incarnations[a.agent],
                    "first_seq": a.first_seq,
                    "first_seen_ms": a.first_seen_ms,
                    "conflict": a.conflict_reports,
                    "max_seq": a.max_seq,
                    "stored": a.stored_reports,
                    "delayed": a.delayed_reports,
                    "missing": a.missing_reports,
                    "lost": a.lost_reports,
                    "last_stored_ms": a.last_stored_ms,
                    "last_seen_ms": a.last_seen_ms,
                    "heard_ms": a.heard_ms,
                    "one_shot": a.one_shot,
                    # a one-shot sender is expected to go quiet between runs
                    "silent": not a.one_shot and now - a.heard_ms > SILENT_AFTER_S * 1000,
                }
                if i < 300:
                    led = s.ledger(tenant, a.agent, a.incarnation)
                    if led is not None:
                        row["ranges"] = _ranges(led)
                        row["conflicts"] = [list(r) for r in led.conflicts]
                        row["spool"] = (
                            None
                            if led.spool is None
                            else {
                                "pending_reports": led.spool.pending_reports,
                                "pending_bytes": led.spool.pending_bytes,
                                "oldest_pending_ms": led.spool.oldest_pending_ms,
                                "first_pending_seq": led.spool.first_pending_seq,
                                "last_seq": led.spool.last_seq,
                                "reported_ms": led.spool.reported_ms,
                            }
                        )
                rows.append(row)
            return {"agents": rows, "totals": totals}

        body = await self._run(run)
        latest = self.history[-1].snap if self.history else {}
        body.update(
            tenant=tenant,
            now=now,
            possibly_dropped=unconfirmed(self.registry, tenant, self.started_ms),
            worker={
                "lag_records": value_of(latest, "lossproof_worker_lag_records"),
                "lag_seconds": value_of(latest, "lossproof_worker_lag_seconds"),
            },
            # reports answered 409 at ingest (a reused seq): the agent was told and starts anew
            refused_conflicts=sum_of(latest, "lossproof_ingest_seq_conflicts_total", tenant=tenant),
        )
        return json_response(body)

    # pipeline health

    async def health(self, request: web.Request) -> web.Response:
        """The pipeline's health. A tenant key sees its own tenant's traffic, agents and dead letters,
        and of the pipeline only what says whether its data is safe and on time (durability, latency,
        lag, errors, fallback backlog); an operator key sees the pipeline-wide traffic (requests and
        points of every tenant, statuses, dead letters, log gaps) and no tenant's agents."""
        operator = self.keys.operator(request)
        tenant = None if operator else self._tenant(request)
        mine = {} if tenant is None else {"tenant": tenant}
        now = _now_ms()
        stale = not self.history or time.time() - self.history[-1].t > SAMPLE_EVERY_S
        # A worker not seen in the last sample may just have started since (its address is written
        # when it listens): look again rather than show it unknown for up to SAMPLE_EVERY_S.
        if stale or value_of(self.history[-1].snap, "lossproof_worker_healthy") is None:
            await self.sample()
        hist = list(self.history)
        latest = hist[-1].snap
        # rates over about the last minute (or whatever history there is) of this process's run:
        # its counters started at 0
        this_run = [e for e in hist if e.run == hist[-1].run]
        base_t, base = this_run[0].t, this_run[0].snap
        for e in this_run:
            if hist[-1].t - e.t <= 65:
                base_t, base = e.t, e.snap
                break
        dt = max(hist[-1].t - base_t, 1e-9)

        def rate(name: str, **match: str) -> float | None:
            if len(this_run) < 2:
                return None
            return max(0.0, (sum_of(latest, name, **match) - sum_of(base, name, **match)) / dt)

        statuses: dict[str, float] = {}
        for (name, labels), _ in latest.items():
            if name == "lossproof_ingest_requests_total":
                code = dict(labels).get("status", "?")
                statuses[code] = rate("lossproof_ingest_requests_total", status=code) or 0.0

        def series(fn: Callable[[Sample, Sample, float], float | None]) -> list[list[float | None]]:
            out: list[list[float | None]] = []
            for e1, e2 in itertools.pairwise(hist):
                # across a restart the counters start again: no value for that step (a gap)
                same_run = e1.run == e2.run
                out.append([round(e2.t * 1000), fn(e1.snap, e2.snap, e2.t - e1.t) if same_run else None])
            return out

        def counter_rate(name: str, **match: str) -> Callable[[Sample, Sample, float], float | None]:
            return lambda a, b, d: (
                max(0.0, (sum_of(b, name, **match) - sum_of(a, name, **match)) / d) if d > 0 else None
            )

        def gauge(name: str) -> Callable[[Sample, Sample, float], float | None]:
            return lambda a, b, d: value_of(b, name)

        def quant(name: str, q: float) -> Callable[[Sample, Sample, float], float | None]:
            return lambda a, b, d: hist_quantile(a, b, name, q)

        def run(s: StoreReader) -> dict[str, Any]:
            if tenant is None:
                rows, points = s.set_aside_count()
                return {
                    "series": sum(s.series_counts().values()),
                    "dead_letters": s.dead_letter_count(),
                    "damaged": {"rows": rows, "points": points},
                    "log_gaps": [_gap_json(g) for g in s.log_gaps()],
                    "silent_agents": [],
                    "agents": None,
                }
            agents = s.agents(tenant)
            silent = [
                {"agent": a.agent, "last_seen_ms": a.heard_ms}
                for a in agents
                if not a.one_shot and now - a.heard_ms > SILENT_AFTER_S * 1000
            ]
            return {
                "series": s.series_counts().get(tenant, 0),
                "dead_letters": s.dead_letter_count(tenant),
                "damaged": None,  # a part holds many tenants' points: operators see them
                "log_gaps": [],  # log ranges are the pipeline's: operators see them
                "silent_agents": silent,
                "agents": len(agents),
            }

        store_part = await self._run(run)
        body = {
            "now": now,
            "window_s": round(dt, 1),
            "scope": "pipeline" if tenant is None else "tenant",
            "tenant": tenant,
            "ingest": {
                # requests carry no tenant label: every tenant's traffic, for operators only
                "requests_per_s": rate("lossproof_ingest_requests_total") if operator else None,
                "points_per_s": rate("lossproof_ingest_points_total", **mine),
                "by_status": statuses if operator else {},
                "p99_s": hist_quantile(base, latest, "lossproof_ingest_request_seconds", 0.99),
                "history": series(counter_rate("lossproof_ingest_points_total", **mine)),
            },
            "log": {
                "healthy": value_of(latest, "lossproof_log_healthy"),
                "append_p50_s": hist_quantile(base, latest, "lossproof_log_append_seconds", 0.5),
                "append_p99_s": hist_quantile(base, latest, "lossproof_log_append_seconds", 0.99),
                "fsync_p50_s": hist_quantile(base, latest, "lossproof_log_fsync_seconds", 0.5),
                "fsync_p99_s": hist_quantile(base, latest, "lossproof_log_fsync_seconds", 0.99),
                "append_errors": sum_of(latest, "lossproof_log_append_errors_total"),
                "history_fsync_p99": series(quant("lossproof_log_fsync_seconds", 0.99)),
            },
            "worker": {
                "healthy": value_of(latest, "lossproof_worker_healthy"),
                "lag_records": value_of(latest, "lossproof_worker_lag_records"),
                "lag_seconds": value_of(latest, "lossproof_worker_lag_seconds"),
                "points_per_s": rate("lossproof_worker_points_total") if operator else None,
                "store_errors": sum_of(latest, "lossproof_worker_store_errors_total"),
                "history_lag_seconds": series(gauge("lossproof_worker_lag_seconds")),
            },
            "fallback": self._fallback_health(),
            "series_limit": self.cfg.series_limit(tenant) if tenant is not None else 0,
            **store_part,
        }
        return json_response(body)

    def _fallback_health(self) -> dict[str, Any]:
        urls = list(self.cfg.health.fallback_urls)
        receivers = [dict(r) for r in self.fallbacks]
        reachable = [r["pending_replay_bytes"] for r in receivers if r["pending_replay_bytes"] is not None]
        pending = sum(reachable) if reachable else None
        if not urls:
            note = (
                "no fallback receiver configured: set [health] fallback_urls in lossproof.toml "
                '(e.g. ["http://10.0.0.5:8081"]) or LOSSPROOF_HEALTH_FALLBACK_URLS to show their backlog'
            )
        elif len(reachable) < len(urls):
            note = (
                f"{len(urls) - len(reachable)} of {len(urls)} fallback receivers not read: "
                "the backlog shown is that of the others only"
            )
        else:
            note = ""
        return {
            "configured": urls,
            "pending_replay_bytes": pending,
            "receivers": receivers,
            # every configured receiver answered: the total is the whole backlog
            "known": bool(urls) and len(reachable) == len(urls),
            "note": note,
        }


# --- small helpers -----------------------------------------------------------------------------------


class _Placed:
    """Per agent, the times of the stored reports around its newest runs of missing / lost seqs
    (where a chart's holes go), read once per chart and only for agents with a gap to explain,
    within a budget of runs per chart: each run is two index seeks."""

    def __init__(self, store: StoreReader, tenant: str) -> None:
        self.store, self.tenant = store, tenant
        self.budget = MAX_PLACED_RUNS_PER_CHART
        self.known: dict[str, list[tuple[int, int]]] = {}

    def get(self, agent: str, ledger: Ledger) -> list[tuple[int, int]]:
        if agent not in self.known:
            n = min(MAX_PLACED_RUNS, self.budget)
            runs = [holes.run_span(r) for r in holes.seq_holes(ledger)[:n]]
            self.budget -= len(runs)
            got = self.store.report_times_around(self.tenant, agent, ledger.incarnation, runs) if runs else []
            self.known[agent] = got
        return self.known[agent]


def _gap_json(g: LogGap) -> dict[str, Any]:
    return {
        "partition": g.partition,
        "first": g.first,
        "last": g.last,
        "reason": g.reason,
        "detected_ms": g.detected_ms,
    }


def _fail(status: int, message: str) -> ApiError:
    """Answered as ``{"error": message}`` by the app's error middleware."""
    return ApiError(status, message, "dashboard")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _values(st: SteppedArrays) -> list[float | str | None]:
    """A chart's values: None where a step has no point, the value (NaN and infinities as text)."""
    out: list[float | str | None] = st.v.tolist()
    for k in np.flatnonzero(~np.isfinite(st.v)).tolist():  # steps without a point are NaN too
        out[k] = _num(st.v[k]) if st.present[k] else None
    return out


def _num(v: float) -> float | str:
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")


def _selector_text(metric: str, labels: dict[str, str]) -> str:
    return utf8names.selector(metric, [utf8names.equals(k, v) for k, v in sorted(labels.items())])


def _ranges(led: Ledger) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"kind": "stored", "first": a, "last": b} for a, b in led.stored]
    out += [{"kind": "missing", "first": a, "last": b, "since_ms": since} for a, b, since in led.missing]
    out += [{"kind": "lost", "first": a, "last": b, "reason": why} for a, b, why in led.lost]
    out += [{"kind": "delayed", "first": a, "last": b, "since_ms": since} for a, b, since in led.delayed]
    out.sort(key=lambda r: int(r["first"]))
    return out
