"""The ledger through the API: stored, delayed (in the agent's spool), missing (replayable), lost."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from lptest.pipeline import HTTP, Pipeline, report


def _post(p: Pipeline, body: dict[str, Any], key: str | None = None, **headers: str) -> tuple[int, Any]:
    r = HTTP.request(
        "POST", p.url + "/v1/reports", body=json.dumps(body).encode(), headers={**p.headers(key), **headers}
    )
    return r.status, json.loads(r.data)


def _wait_ledger(p: Pipeline, agent: str, pred: Any, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    ledger: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, ledger = p.get(f"/v1/agents/{agent}/ledger")
        if status == 200 and pred(ledger):
            return ledger
        time.sleep(0.1)
    raise AssertionError(f"ledger never matched: {ledger}")


def test_dropped_seqs_are_lost_with_their_reason(pipeline: Pipeline) -> None:
    status, _ = _post(
        pipeline,
        {"agent": "d", "reports": [report(5)], "dropped": [{"first": 1, "last": 3, "reason": "spool_full"}]},
    )
    assert status == 200
    ledger = _wait_ledger(pipeline, "d", lambda lg: lg["stored"] == [[5, 5]])
    assert ledger["lost"] == [{"range": [1, 3], "reason": "spool_full"}]
    assert ledger["missing"] == [[4, 4]]
    # a request that only reports drops is fine too
    status, _ = _post(
        pipeline, {"agent": "d", "reports": [], "dropped": [{"first": 4, "last": 4, "reason": "x"}]}
    )
    assert status == 200
    ledger = _wait_ledger(pipeline, "d", lambda lg: lg["missing"] == [])
    assert {"range": [4, 4], "reason": "x"} in ledger["lost"]
    # a lost report that turns up after all is stored
    assert _post(pipeline, {"agent": "d", "reports": [report(2)]})[0] == 200
    ledger = _wait_ledger(pipeline, "d", lambda lg: [2, 2] in lg["stored"])
    assert {"range": [1, 1], "reason": "spool_full"} in ledger["lost"]


def test_spool_state_separates_delayed_from_missing(pipeline: Pipeline) -> None:
    # the agent has made 20 reports; 11..20 are still in its spool; 1..10 were acked (say by a
    # fallback) but the pipeline has only 1..4: 5..10 are missing, 11..20 delayed
    spool = {
        "pending_reports": 10,
        "pending_bytes": 5000,
        "oldest_pending_ms": 1_700_000_000_000,
        "first_pending_seq": 11,
        "last_seq": 20,
    }
    status, _body = _post(
        pipeline, {"agent": "s", "reports": [report(s) for s in range(1, 5)], "spool": spool}
    )
    assert status == 200
    ledger = _wait_ledger(pipeline, "s", lambda lg: lg["stored"] == [[1, 4]])
    assert ledger["missing"] == [[5, 10]]
    assert ledger["delayed"] == [{"range": [11, 20], "pending_since_ms": 1_700_000_000_000}]
    assert ledger["spool"]["last_seq"] == 20
    # the missing ones are asked for (after the 1 s grace in tests), the delayed ones are not
    deadline = time.monotonic() + 10
    replay: list[list[int]] = []
    while time.monotonic() < deadline and not replay:
        time.sleep(0.3)
        replay = _post(pipeline, {"agent": "s", "reports": [report(4)]})[1]["replay"]
    assert replay == [[5, 10]]
    # the spool drains: everything arrives, nothing is delayed or missing any more
    spool = {
        "pending_reports": 0,
        "pending_bytes": 0,
        "oldest_pending_ms": 0,
        "first_pending_seq": 0,
        "last_seq": 20,
    }
    assert (
        _post(pipeline, {"agent": "s", "reports": [report(s) for s in range(5, 21)], "spool": spool})[0]
        == 200
    )
    ledger = _wait_ledger(pipeline, "s", lambda lg: lg["stored"] == [[1, 20]])
    assert ledger["missing"] == [] and ledger["delayed"] == []
    status, agents = pipeline.get("/v1/agents")
    a = agents["agents"][0]
    assert (a["stored"], a["missing"], a["delayed"], a["max_seq"]) == (20, 0, 0, 20)


def test_replay_key_writes_for_a_tenant_and_reads_nothing(pipeline: Pipeline) -> None:
    pipeline.stop()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lossproof",
            "keys",
            "create",
            "--replay",
            "--data-dir",
            str(pipeline.data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    replay_key = out.stdout.strip()
    bad = subprocess.run(
        [sys.executable, "-m", "lossproof", "keys", "create", "--data-dir", str(pipeline.data_dir)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "--tenant" in bad.stderr and "Traceback" not in bad.stderr
    pipeline.start()
    body = {"agent": "r", "reports": [report(1)]}
    status, err = _post(pipeline, body, key=replay_key)
    assert status == 401 and "X-Lossproof-Tenant" in err["error"]
    status, err = _post(pipeline, body, key=replay_key, **{"X-Lossproof-Tenant": "nobody"})
    assert status == 401
    status, _ = _post(pipeline, body, key=replay_key, **{"X-Lossproof-Tenant": "default"})
    assert status == 200
    pipeline.wait_stored("r", {1})
    status, _ = pipeline.get("/v1/agents", key=replay_key)
    assert status == 401
    # a tenant key cannot write as another tenant
    status, err = _post(pipeline, body, **{"X-Lossproof-Tenant": "other"})
    assert status == 403
