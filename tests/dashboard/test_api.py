"""The Prometheus API and the dashboard's JSON against a running pipeline with known holes."""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

from lptest import dash as dd
from lptest.dash import Dash
from lptest.pipeline import HTTP


def get(d: Dash, path: str, key: str | None = None, **params: Any) -> tuple[int, Any]:
    qs = urllib.parse.urlencode(params, doseq=True)
    r = HTTP.request("GET", d.p.url + path + ("?" + qs if qs else ""), headers=d.p.headers(key))
    return r.status, json.loads(r.data)


def at_s(d: Dash, seq: int) -> float:
    return (d.t0 + (seq - 1) * dd.STEP_MS) / 1000


# --- Prometheus API ----------------------------------------------------------------------------------


def test_instant_query_shape_and_values(dash: Dash) -> None:
    status, body = get(dash, "/api/v1/query", query='cpu_user{host="web-01"}', time=at_s(dash, 30))
    assert status == 200, body
    assert body["status"] == "success" and body["data"]["resultType"] == "vector"
    [r] = body["data"]["result"]
    assert r["metric"] == {"__name__": "cpu_user", "host": "web-01", "dc": "eu"}
    assert r["value"] == [at_s(dash, 30), "30"]
    # in the lost range, the lookback (5 min) still finds seq 40
    status, body = get(dash, "/api/v1/query", query='cpu_user{host="web-01"}', time=at_s(dash, 50))
    assert body["data"]["result"][0]["value"][1] == "40"
    # scalar
    status, body = get(dash, "/api/v1/query", query="1 + 1")
    assert body["data"]["resultType"] == "scalar" and body["data"]["result"][1] == "2"
    # the stored name works too
    status, body = get(dash, "/api/v1/query", query='{__name__="cpu.user",host="db-01"}', time=at_s(dash, 10))
    assert body["data"]["result"][0]["value"][1] == "110"


def test_range_query_rate_and_sum(dash: Dash) -> None:
    # http.requests grows 10 per 10 s report: rate 1/s wherever both ends of the window have data
    status, body = get(
        dash,
        "/api/v1/query_range",
        query='rate(http_requests{host="db-01"}[1m])',
        start=at_s(dash, 20),
        end=at_s(dash, 30),
        step="10s",
    )
    assert status == 200, body
    [series] = body["data"]["result"]
    assert series["metric"] == {"host": "db-01", "dc": "eu"}
    assert [v for _, v in series["values"]] == ["1"] * 11
    status, body = get(
        dash,
        "/api/v1/query_range",
        query="sum by (dc) (cpu_user)",
        start=at_s(dash, 10),
        end=at_s(dash, 12),
        step=10,
    )
    [series] = body["data"]["result"]
    # web-01 (= seq) + db-01 (= 100 + seq)
    assert series["metric"] == {"dc": "eu"}
    assert series["values"] == [[at_s(dash, 10), "120"], [at_s(dash, 11), "122"], [at_s(dash, 12), "124"]]


def test_post_form_like_grafana(dash: Dash) -> None:
    r = HTTP.request(
        "POST",
        dash.p.url + "/api/v1/query",
        body=urllib.parse.urlencode({"query": "count(cpu_user)", "time": at_s(dash, 10)}),
        headers={
            "Authorization": f"Bearer {dash.p.key}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    body = json.loads(r.data)
    assert r.status == 200 and body["data"]["result"][0]["value"][1] == "2"


def test_series_labels_values(dash: Dash) -> None:
    status, body = get(dash, "/api/v1/series", **{"match[]": "cpu_user"})
    assert status == 200
    assert body["data"] == [
        {"__name__": "cpu_user", "dc": "eu", "host": "db-01"},
        {"__name__": "cpu_user", "dc": "eu", "host": "web-01"},
    ]
    status, body = get(dash, "/api/v1/labels")
    assert body["data"] == ["__name__", "dc", "host"]
    status, body = get(dash, "/api/v1/label/__name__/values")
    assert body["data"] == ["cpu_user", "http_requests"]
    status, body = get(dash, "/api/v1/label/host/values", **{"match[]": '{host=~"web.*"}'})
    assert body["data"] == ["web-01"]
    status, body = get(dash, "/api/v1/series")
    assert status == 400 and body["errorType"] == "bad_data"


def test_unsupported_and_invalid_give_400(dash: Dash) -> None:
    for query, named in [
        ('histogram_quantiles(cpu_user, "q", 0.5)', "histogram_quantiles()"),
        ("integral(cpu_user[5m])", "integral()"),
    ]:
        status, body = get(dash, "/api/v1/query", query=query)
        assert status == 400, body
        assert body["status"] == "error" and body["errorType"] == "bad_data"
        assert "not supported" in body["error"] and named in body["error"]
    status, body = get(dash, "/api/v1/query", query="sum(")
    assert status == 400 and body["errorType"] == "bad_data" and "invalid PromQL" in body["error"]
    status, body = get(dash, "/api/v1/query_range", query="up", start=10, end=5, step=1)
    assert status == 400
    status, body = get(dash, "/api/v1/query_range", query="up", start=0, end=100000, step=1)
    assert status == 400 and "11,000" in body["error"]


def test_an_invalid_timeout_is_a_400_as_in_prometheus(dash: Dash) -> None:
    """Prometheus' API refuses a ``timeout`` its parseDuration does not take; lossproof ran the query
    as if the parameter were not there."""
    for path, extra in [("/api/v1/query", {}), ("/api/v1/query_range", {"start": 0, "end": 60, "step": 15})]:
        for bad in ("abc", "1e10", "30s1m"):
            status, body = get(dash, path, query="1", timeout=bad, **extra)
            assert status == 400 and body["errorType"] == "bad_data", (path, bad, body)
            assert "'timeout'" in body["error"]
        status, body = get(dash, path, query="1", timeout="1m30s", **extra)
        assert status == 200, body


def test_tenancy(dash: Dash) -> None:
    status, body = get(dash, "/api/v1/query", key="lp_nobody", query="cpu_user")
    assert status == 401 and body["status"] == "error"
    status, body = get(dash, "/api/v1/query", key=dash.other_key, query="cpu_user", time=at_s(dash, 1))
    assert [r["metric"]["host"] for r in body["data"]["result"]] == ["other-01"]
    status, body = get(dash, "/api/v1/label/host/values", key=dash.other_key)
    assert body["data"] == ["other-01"]
    status, body = get(dash, "/ui/api/completeness", key=dash.other_key)
    assert [a["agent"] for a in body["agents"]] == ["other-01"]
    status, body = get(dash, "/ui/api/series", key=dash.other_key)
    assert body["total"] == 2 and {s["labels"]["host"] for s in body["series"]} == {"other-01"}
    status, body = get(dash, "/ui/api/chart", key="lp_nobody", match="cpu_user")
    assert status == 401


# --- the dashboard's JSON ----------------------------------------------------------------------------


def test_chart_holes_of_each_kind(dash: Dash) -> None:
    now = int(time.time() * 1000)
    status, body = get(
        dash, "/ui/api/chart", match='cpu_user{host="web-01"}', **{"from": dash.t0, "to": now, "width": 400}
    )
    assert status == 200, body
    [s] = body["series"]
    assert s["agent"] == "web-01"
    kinds = {h["kind"]: h for h in s["holes"]}
    assert set(kinds) == {"lost", "missing", "delayed"}, s["holes"]
    t = lambda seq: dd.t0_of(dash.t0, seq)  # noqa: E731
    lost, missing, delayed = kinds["lost"], kinds["missing"], kinds["delayed"]
    # lost: between the last point before (seq 40) and the first after (seq 61), with the reason
    assert (lost["from"], lost["to"]) == (t(40), t(61)) and "spool_full" in lost["text"]
    assert (missing["from"], missing["to"]) == (t(90), t(101)) and "replay" in missing["text"]
    # delayed: from the oldest report in the agent's spool to the chart's end
    end = body["start"] + (body["n"] - 1) * body["step"]
    assert delayed["from"] == t(171) and delayed["to"] == end and "spool" in delayed["text"]
    # values: one per step, null in the holes
    assert len(s["values"]) == body["n"]
    i = (t(50) - body["start"]) // body["step"]
    assert s["values"][i] is None
    # a complete agent has no hole (except, perhaps, "pending" after its last point)
    status, body = get(
        dash, "/ui/api/chart", match='cpu_user{host="db-01"}', **{"from": dash.t0, "to": t(180)}
    )
    assert body["series"][0]["holes"] == []


def test_chart_of_the_past_labels_by_kind(dash: Dash) -> None:
    t = lambda seq: dd.t0_of(dash.t0, seq)  # noqa: E731
    status, body = get(
        dash, "/ui/api/chart", match='cpu_user{host="web-01"}', **{"from": t(1), "to": t(80), "width": 200}
    )
    assert status == 200
    [s] = body["series"]
    # a chart of the past: the stored reports' times place the lost run exactly (#18)
    [h] = s["holes"]
    assert (h["kind"], h["from"], h["to"]) == ("lost", t(40), t(61)) and "spool_full" in h["text"]


def test_completeness(dash: Dash) -> None:
    status, body = get(dash, "/ui/api/completeness")
    assert status == 200
    assert body["totals"] == {"stored": 320, "delayed": 10, "missing": 10, "lost": 20, "conflict": 0}
    web = next(a for a in body["agents"] if a["agent"] == "web-01")
    assert [(r["kind"], r["first"], r["last"]) for r in web["ranges"]] == [
        ("stored", 1, 40),
        ("lost", 41, 60),
        ("stored", 61, 90),
        ("missing", 91, 100),
        ("stored", 101, 170),
        ("delayed", 171, 180),
    ]
    assert web["ranges"][1]["reason"] == "spool_full"
    assert web["spool"]["first_pending_seq"] == 171


def test_health_and_ledger_metrics(dash: Dash) -> None:
    status, body = get(dash, "/ui/api/health")
    assert status == 200
    assert body["log"]["healthy"] == 1 and body["dead_letters"] == 0 and body["log_gaps"] == []
    assert body["damaged"] is None  # a part holds many tenants' points: operators see them
    assert get(dash, "/ui/api/health", key=dash.p.operator_key)[1]["damaged"] == {"rows": 0, "points": 0}
    assert body["worker"]["lag_records"] is not None
    assert body["ingest"]["by_status"] is not None and body["agents"] == 2
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = dash.p.metrics()
        if 'lossproof_ledger_reports{state="lost",tenant="default"} 20.0' in text:
            break
        time.sleep(0.5)
    assert 'lossproof_ledger_reports{state="missing",tenant="default"} 10.0' in text
    assert 'lossproof_agents{tenant="other"} 1.0' in text
    assert "lossproof_store_damaged_rows 0.0" in text and "lossproof_store_damaged_points 0.0" in text
    # #15: cardinality, the tenant's own on the dashboard and per tenant on /metrics
    assert body["series"] > 0
    assert f'lossproof_store_series{{tenant="default"}} {float(body["series"])}' in text


def test_ui_is_served(dash: Dash) -> None:
    r = HTTP.request("GET", dash.p.url + "/")
    assert r.status == 200 and b"lossproof" in r.data
    for path in ("/ui/static/app.js", "/ui/static/app.css", "/ui/vendor/uPlot.iife.min.js"):
        assert HTTP.request("GET", dash.p.url + path).status == 200, path
    assert HTTP.request("GET", dash.p.url + "/ui/static/..%2Fdashboard.py").status == 404


# --- metric names with dots, the Prometheus 3 way ------------------------------------------------------


def test_quoted_utf8_metric_names_in_the_prometheus_api(dash: Dash) -> None:
    for query in ('{"cpu.user", host="db-01"}', '{"cpu.user",host="db-01"}', '{host="db-01", "cpu.user"}'):
        status, body = get(dash, "/api/v1/query", query=query, time=at_s(dash, 10))
        assert status == 200, (query, body)
        [r] = body["data"]["result"]
        assert r["value"][1] == "110" and r["metric"]["host"] == "db-01", (query, r)
    status, body = get(dash, "/api/v1/query", query='{"cpu.user"}', time=at_s(dash, 10))
    assert status == 200 and {r["metric"]["host"] for r in body["data"]["result"]} >= {"db-01", "web-01"}
    status, body = get(
        dash, "/api/v1/query_range", query='rate({"http.requests", host="db-01"}[1m])',
        start=at_s(dash, 20), end=at_s(dash, 30), step="10s",
    )
    assert status == 200 and [v for _, v in body["data"]["result"][0]["values"]] == ["1"] * 11
    # a bare dotted name is not PromQL, in the API as in Prometheus: a 400 that says where
    status, body = get(dash, "/api/v1/query", query="cpu.user")
    assert status == 400 and body["errorType"] == "bad_data"


def test_the_dashboard_takes_names_as_listed(dash: Dash) -> None:
    status, body = get(dash, "/ui/api/series", match='{"cpu.user", host="db-01"}')
    assert status == 200, body
    [s] = body["series"]
    assert s["selector"] == '{"cpu.user",dc="eu",host="db-01"}'
    now = int(time.time() * 1000)
    for typed in ("cpu.user", 'cpu.user{host="db-01"}', s["selector"]):
        status, chart = get(dash, "/ui/api/chart", match=typed, **{"from": dash.t0, "to": now, "width": 100})
        assert status == 200, (typed, chart)
        assert {c["metric"] for c in chart["series"]} == {"cpu.user"}, typed
        assert "db-01" in {c["labels"]["host"] for c in chart["series"]}
    status, body = get(dash, "/ui/api/chart", match="cpu.user{host=")
    assert status == 400 and "invalid PromQL" in body["error"]


def test_an_irregular_senders_outage_is_placed_by_report_times_and_its_jitter_is_no_hole(dash: Dash) -> None:
    """#18: an agent reporting every 1-3 s loses reports 40-60 during a 60 s outage. Through the real
    pipeline, the chart puts the red band on that outage (from the stored reports' times), and none
    on the sender's usual spacing, also right before now."""
    import random

    key = dash.p.add_key("jitter")
    rnd = random.Random(3)
    now = int(time.time() * 1000)
    made = [now - 260_000]
    for s in range(2, 121):
        made.append(made[-1] + (60_000 if s == 61 else rnd.choice((1000, 1000, 1000, 2000, 3000))))
    shift = now - 2000 - made[-1]  # the newest report 2 s before now: within the sender's jitter
    made = [t + shift for t in made]
    reports = [
        {"seq": s, "time": t, "points": [{"metric": "load", "labels": {"host": "jit-01"}, "t": t, "v": 1.0}]}
        for s, t in enumerate(made, 1)
        if not 40 <= s <= 60
    ]
    dropped = [{"first": 40, "last": 60, "reason": "spool_full"}]
    dd.post(dash.p, {"agent": "jit-01", "reports": reports, "dropped": dropped}, key=key)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, got = get(dash, "/v1/agents/jit-01/ledger", key=key)
        if status == 200 and got["stored"] == [[1, 39], [61, 120]]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"not stored: {got}")
    status, chart = get(
        dash, "/ui/api/chart", key=key, match="load", **{"from": made[0] - 5000, "to": now, "width": 2000}
    )
    assert status == 200, chart
    [s] = chart["series"]
    assert [(h["kind"], h["from"], h["to"]) for h in s["holes"]] == [("lost", made[38], made[60])], s["holes"]
