"""The sender against a scripted server: 413 splits, 400 drops only the culprit (with the server's
reason), 401 keeps everything spooled, Retry-After is honoured, at most max_in_flight requests, and
the agent's /metrics and /healthz say what is going on."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from lossproof.agent import Agent, AgentConfig
from lossproof.protocol.ack import PROTOCOL_HEADER
from lptest.agent import HTTP, Policy, Received, StandIn, free_port, scrape, wait_for

Answer = tuple[int, dict[str, Any], dict[str, str]]


def ok(req: Received) -> Answer:
    return 200, {"acked": [[s, s] for s in req.seqs], "replay": []}, {}


def _config(tmp_path: Path, url: str, **over: Any) -> AgentConfig:
    values: dict[str, Any] = {
        "agent_id": "sender-test",
        "api_key": "k",
        "primary_url": url,
        "spool_dir": tmp_path / "spool",
        "interval_seconds": 3600,
        "statsd_port": 0,
        "metrics_port": 0,
        "collect_host": False,
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 0.5,
    }
    values.update(over)
    return AgentConfig(**values)


def _reports(agent: Agent, n: int) -> list[int]:
    out = []
    for i in range(n):
        agent.record("s.v", float(i))
        out += agent.flush()
    return out


def _drained(agent: Agent) -> bool:
    s = agent.spool
    return s is not None and s.stats().pending_reports == 0 and not s.unreported_drops()


def test_413_splits_the_batch_until_it_fits(tmp_path: Path) -> None:
    state = {"up": False}

    def policy(srv: StandIn, req: Received) -> Answer:
        if not state["up"]:
            return 503, {"error": "down"}, {}
        if len(req.seqs) > 2:
            return 413, {"error": "body larger than server.max_body_bytes"}, {}
        return ok(req)

    srv = StandIn(policy).start()
    try:
        with Agent(_config(tmp_path, srv.url)) as agent:
            seqs = _reports(agent, 12)
            state["up"] = True
            wait_for(lambda: _drained(agent), 20, "all acknowledged")
            assert agent.spool is not None and agent.spool.dropped() == []
    finally:
        srv.stop()
    statuses = [r.status for r in srv.snapshot()]
    assert 413 in statuses and srv.acked_seqs() == set(seqs)


def test_400_drops_only_the_refused_report_with_the_reason(tmp_path: Path) -> None:
    state = {"up": False}

    def policy(srv: StandIn, req: Received) -> Answer:
        if not state["up"]:
            return 503, {"error": "wait"}, {}
        if 7 in req.seqs:
            return 400, {"error": "Expected `float`, got `str` - at `$.reports[0].points[0].v`"}, {}
        return ok(req)

    srv = StandIn(policy).start()
    try:
        with Agent(_config(tmp_path, srv.url)) as agent:
            seqs = _reports(agent, 10)
            state["up"] = True  # one batch of 10, split until seq 7 is alone
            wait_for(lambda: _drained(agent), 20, "all resolved")
            assert agent.spool is not None
            (a, b, why), *rest = agent.spool.dropped()
            assert (a, b) == (7, 7) and not rest
            assert why.startswith("rejected: 400 ") and "$.reports[0].points[0].v" in why
    finally:
        srv.stop()
    assert srv.acked_seqs() == set(seqs) - {7}
    assert [(a, b) for a, b, _ in srv.reported_drops()] == [(7, 7)]


def test_401_keeps_reports_spooled_and_retries(tmp_path: Path) -> None:
    start = time.monotonic()

    def policy(srv: StandIn, req: Received) -> Answer:
        if time.monotonic() - start < 1.5:
            return 401, {"error": "missing or unknown API key"}, {"WWW-Authenticate": "Bearer"}
        return ok(req)

    srv = StandIn(policy).start()
    try:
        with Agent(_config(tmp_path, srv.url, metrics_port=free_port())) as agent:
            seqs = _reports(agent, 3)
            wait_for(lambda: any(r.status == 401 for r in srv.snapshot()), 5, "a 401")
            assert agent.spool is not None and agent.spool.stats().pending_reports == 3
            assert agent.metrics_port is not None
            m = scrape(agent.metrics_port)
            assert m['lossproof_agent_send_errors_total{status="401"}'] >= 1
            wait_for(lambda: _drained(agent), 20, "delivery once the key works")
    finally:
        srv.stop()
    assert srv.acked_seqs() == set(seqs)
    # slow retries: not a tight loop of 401s
    assert sum(r.status == 401 for r in srv.snapshot()) <= 6


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    def policy(srv: StandIn, req: Received) -> Answer:
        if len(srv.requests) == 0:
            return 503, {"error": "busy"}, {"Retry-After": "2"}
        return ok(req)

    srv = StandIn(policy).start()
    try:
        with Agent(_config(tmp_path, srv.url)) as agent:
            _reports(agent, 1)
            wait_for(lambda: _drained(agent), 10, "delivery")
    finally:
        srv.stop()
    first, second = srv.snapshot()[:2]
    assert first.status == 503 and second.status == 200
    assert second.at - first.at >= 1.9


def test_at_most_max_in_flight_requests(tmp_path: Path) -> None:
    srv = StandIn(lambda s, r: ok(r), delay=0.3).start()
    try:
        with Agent(_config(tmp_path, srv.url, max_in_flight=2, max_batch_reports=1)) as agent:
            _reports(agent, 10)
            wait_for(lambda: _drained(agent), 20, "delivery")
    finally:
        srv.stop()
    assert srv.max_concurrent == 2


def test_metrics_and_healthz(tmp_path: Path) -> None:
    srv = StandIn(lambda s, r: ok(r)).start()
    try:
        with Agent(_config(tmp_path, srv.url, metrics_port=free_port())) as agent:
            _reports(agent, 3)
            wait_for(lambda: _drained(agent), 10, "delivery")
            port = agent.metrics_port
            assert port is not None
            m = scrape(port)
            assert m['lossproof_agent_destination{destination="primary"}'] == 1
            assert m['lossproof_agent_destination{destination="fallback"}'] == 0
            assert m['lossproof_agent_reports_acked_total{destination="primary"}'] == 3
            assert m['lossproof_agent_spool_reports{state="pending"}'] == 0
            assert m['lossproof_agent_spool_reports{state="window"}'] == 3
            assert m["lossproof_agent_oldest_pending_age_seconds"] == 0
            assert m["lossproof_agent_last_seq"] == 3
            r = HTTP.request("GET", f"http://127.0.0.1:{port}/healthz")
            body = json.loads(r.data)
            assert r.status == 200 and body["destination"] == "primary" and body["last_seq"] == 3
    finally:
        srv.stop()


def _maintenance_page(srv: StandIn, req: Received) -> Answer:
    """A proxy or a maintenance page: a 200 that nothing durable stands behind."""
    return 200, {"status": "ok"}, {PROTOCOL_HEADER: ""}


def _acked_without_protocol(srv: StandIn, req: Received) -> Answer:
    """Even an ``acked`` body is not an acknowledgement without the protocol header."""
    return 200, {"acked": [[s, s] for s in req.seqs]}, {PROTOCOL_HEADER: ""}


def _protocol_without_acked(srv: StandIn, req: Received) -> Answer:
    return 200, {"ok": True}, {}


def _https_port(srv: StandIn, req: Received) -> Answer:
    """nginx answering an http:// request on its https port: a 400 that is not lossproof's refusal."""
    return 400, {"error": "The plain HTTP request was sent to HTTPS port"}, {PROTOCOL_HEADER: ""}


def _proxy_too_large(srv: StandIn, req: Received) -> Answer:
    return 413, {"error": "Request Entity Too Large"}, {PROTOCOL_HEADER: ""}


@pytest.mark.parametrize(
    "policy",
    [_maintenance_page, _acked_without_protocol, _protocol_without_acked, _https_port, _proxy_too_large],
)
def test_an_answer_that_is_not_lossproof_s_deletes_and_drops_nothing_and_fails_over(
    tmp_path: Path, policy: Policy
) -> None:
    impostor = StandIn(policy).start()
    fallback = StandIn().start()
    try:
        cfg = _config(
            tmp_path,
            impostor.url,
            metrics_port=free_port(),
            fallback_urls=[fallback.url],
            fallback_after_seconds=1.0,  # a protocol error counts as the primary failing, like a 5xx
        )
        with Agent(cfg) as agent:
            seqs = _reports(agent, 5)
            wait_for(lambda: len(impostor.snapshot()) >= 2, 10, "requests to the impostor")
            assert agent.metrics_port is not None
            m = scrape(agent.metrics_port)
            assert m['lossproof_agent_requests_total{destination="primary",status="protocol_error"}'] >= 1
            assert m['lossproof_agent_send_errors_total{status="protocol_error"}'] >= 1
            for status in ("200", "400", "413"):
                name = f'lossproof_agent_requests_total{{destination="primary",status="{status}"}}'
                assert m.get(name, 0) == 0
            # the spool still has every report until a real acknowledgement: here from the fallback
            wait_for(lambda: fallback.acked_seqs() >= set(seqs), 30, "delivery to the fallback")
            wait_for(lambda: _drained(agent), 10, "acknowledged by the fallback")
            assert agent.spool is not None and agent.spool.dropped() == []
    finally:
        impostor.stop()
        fallback.stop()


def test_a_200_that_is_not_an_acknowledgement_keeps_reports_spooled(tmp_path: Path) -> None:
    real = {"on": False}

    def policy(srv: StandIn, req: Received) -> Answer:
        return ok(req) if real["on"] else _maintenance_page(srv, req)

    srv = StandIn(policy).start()
    try:
        with Agent(_config(tmp_path, srv.url)) as agent:
            seqs = _reports(agent, 4)
            wait_for(lambda: len(srv.snapshot()) >= 3, 10, "several answered requests")
            assert agent.spool is not None and agent.spool.stats().pending_reports == 4
            real["on"] = True
            wait_for(lambda: _drained(agent), 20, "delivery once the real ingest answers")
            assert agent.spool.dropped() == []
    finally:
        srv.stop()
    assert set(seqs) <= {s for r in srv.snapshot() if r.status == 200 for s in r.seqs}
