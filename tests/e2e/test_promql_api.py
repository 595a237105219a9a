"""The Prometheus API's answers to the whole language, over HTTP on the real app (``InProcess``):
result types and order as Prometheus gives them (a string, a subquery's matrix, ``sort_desc``), the
errors in Prometheus' shape, and the ``[query]`` limits as 422s that name the limit."""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lptest.inproc import InProcess
from lptest.pipeline import HTTP


@dataclass
class Env:
    p: InProcess
    t: int  # unix ms of the newest point


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("promql-api")
    limits = {"LOSSPROOF_QUERY_MAX_SERIES": "3", "LOSSPROOF_QUERY_MAX_SAMPLES": "100"}
    p = InProcess(base / "data", "lp_test_" + secrets.token_hex(16), env=limits)
    p.start()
    try:
        t = (int(time.time() * 1000) - 60_000) // 1000 * 1000
        points = [
            {"metric": "g", "labels": {"h": h}, "t": t, "v": v}
            for h, v in [("a", 3.0), ("b", 1.0), ("c", 2.0)]
        ]
        points += [{"metric": "wide", "labels": {"i": str(i)}, "t": t, "v": 1.0} for i in range(4)]
        points += [{"metric": "long", "labels": {}, "t": t - k * 1000, "v": float(k)} for k in range(150)]
        r = p.post_reports("a1", [{"seq": 1, "points": points}])
        assert r.status == 200, r.data
        p.wait_stored("a1", {1})
        yield Env(p, t)
    finally:
        p.stop()


def _get(e: Env, path: str, **params: Any) -> tuple[int, Any]:
    qs = urllib.parse.urlencode(params)
    r = HTTP.request("GET", f"{e.p.url}{path}?{qs}", headers=e.p.headers(), timeout=30)
    return r.status, json.loads(r.data)


def test_sort_desc_keeps_its_order(env: Env) -> None:
    status, body = _get(env, "/api/v1/query", query="sort_desc(g)", time=env.t / 1000)
    assert status == 200, body
    assert [r["metric"]["h"] for r in body["data"]["result"]] == ["a", "c", "b"]
    status, body = _get(env, "/api/v1/query", query="sort(g)", time=env.t / 1000)
    assert [r["metric"]["h"] for r in body["data"]["result"]] == ["b", "c", "a"]
    status, body = _get(env, "/api/v1/query", query="topk(1, g)", time=env.t / 1000)
    assert [(r["metric"]["h"], r["value"][1]) for r in body["data"]["result"]] == [("a", "3")]


def test_result_types(env: Env) -> None:
    status, body = _get(env, "/api/v1/query", query='"hello"', time=100)
    assert status == 200 and body["data"] == {"resultType": "string", "result": [100, "hello"]}
    # a subquery at the top of an instant query: its points, like a range selector
    # (the points of the minute after the sample: the lookback finds it at each 15 s step)
    status, body = _get(env, "/api/v1/query", query="g{h='a'}[1m:15s]", time=env.t / 1000 + 60)
    assert status == 200, body
    assert body["data"]["resultType"] == "matrix"
    [series] = body["data"]["result"]
    assert series["metric"] == {"__name__": "g", "h": "a"}
    assert [v for _, v in series["values"]] == ["3"] * 4
    assert all(ts % 15 == 0 and env.t / 1000 <= ts <= env.t / 1000 + 60 for ts, _ in series["values"])
    status, body = _get(env, "/api/v1/query_range", query="g[1m:15s]", start=0, end=60, step=15)
    assert status == 400 and body["errorType"] == "bad_data" and '"range vector"' in body["error"]


def test_execution_errors_are_422_in_prometheus_shape(env: Env) -> None:
    status, body = _get(
        env, "/api/v1/query", query='label_replace(g, "h", "x", "h", ".*")', time=env.t / 1000
    )
    assert status == 422, body
    assert body["status"] == "error" and body["errorType"] == "execution"
    assert "vector cannot contain metrics with the same labelset" in body["error"]
    status, body = _get(env, "/api/v1/query", query='label_replace(g, "d", "x", "h", "(")', time=env.t / 1000)
    assert status == 400 and body["errorType"] == "bad_data" and "invalid regular expression" in body["error"]


def test_limits_are_422_naming_the_limit(env: Env) -> None:
    status, body = _get(env, "/api/v1/query", query="count(wide)", time=env.t / 1000)
    assert status == 422, body
    assert body["errorType"] == "execution" and "max_series = 3" in body["error"]
    status, body = _get(env, "/api/v1/query", query="sum_over_time(long[10m])", time=env.t / 1000)
    assert status == 422, body
    assert "too many samples" in body["error"] and "max_samples = 100" in body["error"]
    # within the limits the same server answers
    status, body = _get(env, "/api/v1/query", query="sum_over_time(long[50s])", time=env.t / 1000)
    assert status == 200 and body["data"]["result"][0]["value"][1] == str(sum(range(50)))


def test_the_completeness_page_links_the_alert_rules(env: Env) -> None:
    r = HTTP.request("GET", env.p.url + "/", headers=env.p.headers(), timeout=30)
    assert 'href="/ui/alerts.yml"' in r.data.decode()
    r = HTTP.request("GET", env.p.url + "/ui/alerts.yml", headers=env.p.headers(), timeout=30)
    assert r.status == 200 and b"LossproofNoDataNativeAgents" in r.data and b"absent(" in r.data
