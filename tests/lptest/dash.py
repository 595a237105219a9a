"""Known data for the dashboard tests: one agent with a hole of every kind, one complete agent.

Agent ``web-01`` makes one report every 10 s for 30 minutes (seqs 1..180, report ``s`` at
``T0 + (s - 1) * 10 s``), each with ``cpu.user`` (= s) and ``http.requests`` (counter, 10 per report):

- seqs 41-60 are **lost**: never sent, reported as dropped with reason ``spool_full``;
- seqs 91-100 are **missing**: never sent, but outside the agent's pending range (acknowledged);
- seqs 171-180 are **delayed**: still in the agent's spool (``first_pending_seq`` 171).

Agent ``db-01`` sends every report (seqs 1..180) with ``cpu.user`` (= 100 + s).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from lptest.pipeline import HTTP, Pipeline


@dataclass
class Dash:
    """The dashboard tests' shared pipeline (the ``dash`` fixture), its other tenant's key and T0."""

    p: Pipeline
    other_key: str
    t0: int


STEP_MS = 10_000
N = 180
LOST = (41, 60)
MISSING = (91, 100)
DELAYED = (171, 180)


def t0(now_ms: int | None = None) -> int:
    now = now_ms or int(time.time() * 1000)
    return (now - N * STEP_MS) // STEP_MS * STEP_MS


def report(agent: str, seq: int, start: int, base: float = 0.0) -> dict[str, Any]:
    t = start + (seq - 1) * STEP_MS
    points = [
        {"metric": "cpu.user", "labels": {"host": agent, "dc": "eu"}, "t": t, "v": base + seq},
        {"metric": "http.requests", "labels": {"host": agent, "dc": "eu"}, "t": t, "v": 10.0 * seq},
    ]
    return {"seq": seq, "time": t, "points": points}


def post(p: Pipeline, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    r = HTTP.request("POST", p.url + "/v1/reports", body=json.dumps(body).encode(), headers=p.headers(key))
    assert r.status == 200, r.data
    return json.loads(r.data)  # type: ignore[no-any-return]


def load(p: Pipeline, key: str | None = None) -> int:
    """Post the data set; returns T0. Waits until the worker stored it."""
    start = t0()
    skip = set(range(LOST[0], LOST[1] + 1)) | set(range(MISSING[0], MISSING[1] + 1))
    skip |= set(range(DELAYED[0], DELAYED[1] + 1))
    web = [report("web-01", s, start) for s in range(1, N + 1) if s not in skip]
    for i in range(0, len(web), 50):
        post(p, {"agent": "web-01", "reports": web[i : i + 50]}, key)
    spool = {
        "pending_reports": 10,
        "pending_bytes": 4000,
        "oldest_pending_ms": start + (DELAYED[0] - 1) * STEP_MS,
        "first_pending_seq": DELAYED[0],
        "last_seq": DELAYED[1],
    }
    post(
        p,
        {
            "agent": "web-01",
            "reports": [],
            "dropped": [{"first": LOST[0], "last": LOST[1], "reason": "spool_full"}],
            "spool": spool,
        },
        key,
    )
    db = [report("db-01", s, start, base=100.0) for s in range(1, N + 1)]
    for i in range(0, len(db), 60):
        post(p, {"agent": "db-01", "reports": db[i : i + 60]}, key)
    p.wait_stored("db-01", set(range(1, N + 1)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        led = p.ledger("web-01")
        if led["lost"] and led["delayed"] and led["missing"]:
            return start
        time.sleep(0.1)
    raise AssertionError(f"web-01's ledger never showed every kind of hole: {led}")


def t0_of(start: int, seq: int) -> int:
    """The time of report ``seq``."""
    return start + (seq - 1) * STEP_MS
