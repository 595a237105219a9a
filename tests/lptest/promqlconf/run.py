"""One conformance run: both servers up, the data loaded, every query asked of both, verdicts."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

from lptest.promqlconf import compare, data, servers
from lptest.promqlconf.queries import Query

Say = Callable[[str], None]


@dataclass
class Outcome:
    query: Query
    verdict: str
    instant: tuple[str, str]  # (verdict, detail) of the instant query at data.END_MS
    range: tuple[str, str]  # ... of the range query over the 10 minutes before it, step 10 s
    reference_empty: bool  # Prometheus answered no series (both queries)
    reference_points: int  # points in Prometheus' answer to the range query


@dataclass
class Report:
    prometheus: str
    windows: str  # lossproof's [query] windows
    series: int
    samples: int
    stale_markers: int
    counts: dict[str, float]
    outcomes: list[Outcome] = field(default_factory=list)
    load_seconds: float = 0.0
    query_seconds: float = 0.0

    def by_verdict(self, verdict: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.verdict == verdict]

    @property
    def passing(self) -> list[str]:
        return [o.query.text for o in self.outcomes if o.verdict == compare.PASS]

    def lines(self) -> list[str]:
        n = len(self.outcomes)
        passed = len(self.by_verdict(compare.PASS))
        by_source: dict[str, list[int]] = {}
        for o in self.outcomes:
            row = by_source.setdefault(o.query.source, [0, 0])
            row[0] += o.verdict == compare.PASS
            row[1] += 1
        out = [
            f"PromQL conformance: lossproof (windows = {self.windows}) against "
            f"{self.prometheus or 'prometheus'}",
            f"data: {self.series} series, {self.samples:,} samples ({self.stale_markers} staleness markers); "
            f"count_over_time answers " + ", ".join(f"{k} {v:,.0f}" for k, v in self.counts.items()),
            f"queries: each as an instant query at {data.END_MS / 1000:.0f} and a range query over the "
            f"{data.RANGE_MS // 60_000} minutes before it, step {data.STEP_MS // 1000} s; load "
            f"{self.load_seconds:.1f} s, queries {self.query_seconds:.1f} s",
            f"score: {passed} / {n} passed ({100 * passed / max(n, 1):.1f} %), "
            f"{len(self.by_verdict(compare.WRONG))} wrong, "
            f"{len(self.by_verdict(compare.UNSUPPORTED))} unsupported, "
            f"{len(self.by_verdict(compare.ERROR))} errors",
            "by source: " + ", ".join(f"{s} {p} / {t}" for s, (p, t) in by_source.items()),
        ]
        for verdict in (compare.WRONG, compare.ERROR, compare.UNSUPPORTED):
            failed = self.by_verdict(verdict)
            if not failed:
                continue
            out.append(f"{verdict} ({len(failed)}):")
            for o in failed:
                details = [
                    f"{mode}: {d}"
                    for mode, (v, d) in (("instant", o.instant), ("range", o.range))
                    if v != compare.PASS
                ]
                out.append(f"  {o.query.text}")
                if verdict != compare.UNSUPPORTED:
                    out.extend(f"      {d}" for d in details)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "prometheus": self.prometheus,
            "windows": self.windows,
            "total": len(self.outcomes),
            **{v: len(self.by_verdict(v)) for v in compare.RANK},
            "outcomes": [
                {
                    "query": o.query.text,
                    "source": o.query.source,
                    "verdict": o.verdict,
                    "instant": list(o.instant),
                    "range": list(o.range),
                }
                for o in self.outcomes
            ],
        }


def _ask(server: servers.Server, path: str, params: dict[str, str]) -> compare.Answer:
    try:
        return server.get(path, params)
    except urllib3.exceptions.HTTPError as e:
        return 0, {"error": f"{type(e).__name__}: {e}"}


def _points(answer: compare.Answer) -> int:
    if _empty(answer):
        return 0
    result = answer[1]["data"]["result"]
    if answer[1]["data"].get("resultType") != "matrix":
        return 1
    return sum(len(s["values"]) for s in result)


def _empty(answer: compare.Answer) -> bool:
    status, body = answer
    if status != 200 or not isinstance(body, dict):
        return True
    result = body.get("data", {}).get("result")
    return isinstance(result, list) and not result


def evaluate(q: Query, prom: servers.Server, lp: servers.Server) -> Outcome:
    end_s = data.END_MS / 1000
    instant = {"query": q.text, "time": f"{end_s:.3f}"}
    ranged = {
        "query": q.text,
        "start": f"{(data.END_MS - data.RANGE_MS) / 1000:.3f}",
        "end": f"{end_s:.3f}",
        "step": f"{data.STEP_MS / 1000:g}",
    }
    ref_i, got_i = _ask(prom, "/api/v1/query", instant), _ask(lp, "/api/v1/query", instant)
    ref_r, got_r = _ask(prom, "/api/v1/query_range", ranged), _ask(lp, "/api/v1/query_range", ranged)
    vi = compare.verdict(ref_i, got_i, compare.ordered(q.text))
    vr = compare.verdict(ref_r, got_r)
    worst = max(vi[0], vr[0], key=compare.RANK.__getitem__)
    return Outcome(q, worst, vi, vr, _empty(ref_i) and _empty(ref_r), _points(ref_r))


def run(
    work: Path,
    queries: list[Query],
    say: Say = lambda s: None,
    workers: int = 4,
    windows: str = "prometheus3",
) -> Report:
    """Every query asked of Prometheus and of lossproof with ``[query] windows = windows``."""
    ds = data.build()
    version = servers.prometheus_version()
    report = Report(version, windows, len(ds.series), ds.samples, ds.stale_markers, {})
    with (
        servers.prometheus(work / "prometheus") as prom,
        servers.lossproof(work / "lossproof", windows) as lp,
    ):
        say(f"loading {ds.samples:,} samples of {len(ds.series)} series into both …")
        t0 = time.monotonic()
        report.counts = servers.load([prom, lp], ds)
        report.load_seconds = time.monotonic() - t0
        say(f"loaded in {report.load_seconds:.1f} s; {len(queries)} queries …")
        t0 = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            report.outcomes = list(pool.map(lambda q: evaluate(q, prom, lp), queries))
        report.query_seconds = time.monotonic() - t0
    return report
