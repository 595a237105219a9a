"""One-shot senders (`lossproof send`, scripts: no spool state) are not flagged as silent when they
have not sent for a while; agents that report on an interval (with their spool state) are. The
agents API gives both a `last_seen_ms`."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lossproof.store.base import Point, ReportWrite, SpoolState, WriteBatch
from lossproof.store.factory import open_store
from lptest.inproc import InProcess

HOUR_MS = 3_600_000


@pytest.fixture
def p(tmp_path: Path) -> Iterator[InProcess]:
    pl = InProcess(tmp_path / "data", "lp_test_" + secrets.token_hex(16))
    pl.start(worker=False)
    then = int(time.time() * 1000) - HOUR_MS  # both last sent an hour ago
    store = open_store(pl.config())
    try:
        pts = [Point("m", {"host": "h"}, then, 1.0)]
        store.write_batch(
            WriteBatch(
                reports=[ReportWrite("default", "once", 1, pts), ReportWrite("default", "every", 1, pts)],
                spool=[SpoolState("default", "every", 0, 0, 0, 0, 1, then)],
                now_ms=then,
            )
        )
    finally:
        store.close()
    yield pl
    pl.stop()


def test_a_one_shot_sender_is_not_silent_an_interval_agent_is(p: InProcess) -> None:
    status, body = p.get("/ui/api/completeness")
    assert status == 200, body
    rows = {a["agent"]: a for a in body["agents"]}
    assert rows["once"]["one_shot"] is True and rows["once"]["silent"] is False
    assert rows["every"]["one_shot"] is False and rows["every"]["silent"] is True
    status, health = p.get("/ui/api/health")
    assert status == 200, health
    assert [a["agent"] for a in health["silent_agents"]] == ["every"], health


def test_agents_api_gives_last_seen_for_a_send_only_agent(p: InProcess) -> None:
    status, body = p.get("/v1/agents")
    assert status == 200
    rows = {a["agent"]: a for a in body["agents"]}
    assert rows["once"]["last_seen_ms"] == rows["once"]["last_stored_ms"] > 0
    assert rows["once"]["one_shot"] is True and rows["every"]["one_shot"] is False
