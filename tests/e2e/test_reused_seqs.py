"""#14 item 1: a reused seq is never answered 200 and thrown away.

Before: a second agent with the same id (or one whose spool was wiped) sending *different* reports
with seqs already stored got 200 for all of them; the worker counted them as duplicates and the
ledger said 100 % stored. Now ingest answers 409 ``seq_conflict`` for a seq stored with other
content, incarnations give every spool its own seq space, and a conflict only the worker can see
is kept whole and shown. Fast tier: the real app, log, worker and store in this process.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from lossproof import config as config_mod
from lptest.agent import wait_for
from lptest.inproc import InProcess
from lptest.pipeline import HTTP, report

T0 = 1_767_225_600_000
REPLAY_KEY = config_mod.new_key()  # what `lossproof replay` drains a fallback receiver with


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    pl = InProcess(tmp_path_factory.mktemp("reused") / "data", "lp_test_" + secrets.token_hex(16))
    with config_mod.editing(pl.data_dir) as cfg:
        cfg.replay.key_hashes.append(config_mod.hash_key(REPLAY_KEY))
    pl.start()
    yield pl
    pl.stop()


def post(
    p: InProcess, agent: str, reports: list[dict[str, Any]], key: str | None = None, **extra: Any
) -> urllib3.BaseHTTPResponse:
    body = json.dumps({"agent": agent, "reports": reports, **extra}).encode()
    headers = p.headers(key)
    if key is not None and key != p.key:
        headers["X-Lossproof-Tenant"] = "default"
    r: urllib3.BaseHTTPResponse = HTTP.request("POST", p.url + "/v1/reports", body=body, headers=headers)
    return r


def points_of(p: InProcess, host: str) -> int:
    status, body = p.get(f"/v1/query?metric=cpu.user&from=0&to={T0 * 2}&label=host:{host}")
    assert status == 200, body
    return sum(len(s["points"]) for s in body["series"])


def agents(p: InProcess, agent: str) -> list[dict[str, Any]]:
    status, body = p.get("/v1/agents")
    assert status == 200, body
    return [a for a in body["agents"] if a["agent"] == agent]


def test_reused_seq_with_other_content_is_refused_409(p: InProcess) -> None:
    first = [report(s, host="host-a") for s in (1, 2, 3)]
    assert post(p, "reused-1", first).status == 200
    p.wait_stored("reused-1", {1, 2, 3})
    # a second host with the same agent id (or a wiped spool): seqs 1-3 again, other points
    r = post(p, "reused-1", [report(s, host="host-b") for s in (2, 3, 4)])
    assert r.status == 409, r.data
    answer = json.loads(r.data)
    assert answer["reason"] == "seq_conflict" and answer["conflicts"] == [[2, 3]], answer
    assert "already stored with other content" in answer["error"]
    assert "ACK" not in json.dumps(answer) and "acked" not in answer
    # nothing of the refused request was written (seq 4 neither: it was not acknowledged)
    p.wait_stored("reused-1", {1, 2, 3})
    assert points_of(p, "host-b") == 0
    # the same reports again are a harmless resend
    assert post(p, "reused-1", first).status == 200
    assert "lossproof_ingest_seq_conflicts_total" in p.metrics()
    assert 'lossproof_ingest_seq_conflicts_total{tenant="default"} 2.0' in p.metrics()
    assert '"ingest.seq_conflict"' in p.logs()


def test_a_new_incarnation_has_its_own_seq_space(p: InProcess) -> None:
    assert post(p, "reused-2", [report(s, host="inc-a") for s in (1, 2, 3)], incarnation="aaa").status == 200
    wait_for(lambda: points_of(p, "inc-a") == 9, 30, "the first incarnation stored")
    assert post(p, "reused-2", [report(s, host="inc-b") for s in (1, 2)], incarnation="bbb").status == 200
    wait_for(lambda: points_of(p, "inc-a") == 9 and points_of(p, "inc-b") == 6, 30, "both stored")
    rows = agents(p, "reused-2")
    assert [(a["incarnation"], a["stored"]) for a in rows] == [("aaa", 3), ("bbb", 2)]
    status, ledger = p.get("/v1/agents/reused-2/ledger?incarnation=aaa")
    assert status == 200 and ledger["stored"] == [[1, 3]] and ledger["incarnation"] == "aaa"
    latest = p.ledger("reused-2")
    assert latest["incarnation"] == "bbb" and sorted(latest["incarnations"]) == ["aaa", "bbb"]
    assert p.get("/v1/agents/reused-2/ledger?incarnation=nope")[0] == 404


def test_new_incarnation_accounts_the_old_spools_pending_seqs_as_spool_reset(p: InProcess) -> None:
    spool = {"pending_reports": 2, "pending_bytes": 10, "oldest_pending_ms": T0, "first_pending_seq": 3,
             "last_seq": 4}  # fmt: skip
    assert post(p, "reused-3", [report(1), report(2)], incarnation="old", spool=spool).status == 200
    wait_for(lambda: [a["delayed"] for a in agents(p, "reused-3")] == [2], 30, "delayed 3-4")
    # the spool is wiped: a new incarnation starts; seqs 3-4 of the old one will never come
    assert post(p, "reused-3", [report(1, host="new")], incarnation="new").status == 200
    wait_for(lambda: len(agents(p, "reused-3")) == 2, 30, "the new incarnation")
    status, old = p.get("/v1/agents/reused-3/ledger?incarnation=old")
    assert status == 200
    assert old["lost"] == [{"range": [3, 4], "reason": "spool_reset"}] and old["delayed"] == [], old


def test_a_conflict_only_the_worker_sees_is_kept_whole_and_shown(p: InProcess) -> None:
    """Both reports acknowledged before either was stored (here: the second came through
    ``lossproof replay``, which ingest does not refuse): the worker keeps it whole, visibly."""
    assert post(p, "reused-4", [report(1, host="first")]).status == 200
    p.wait_stored("reused-4", {1})
    r = post(p, "reused-4", [report(1, host="second")], key=REPLAY_KEY)
    assert r.status == 200, r.data
    wait_for(lambda: [a["conflicts"] for a in agents(p, "reused-4")] == [1], 30, "a kept conflict")
    ledger = p.ledger("reused-4")
    [c] = ledger["conflicts"]
    assert (c["seq"], c["points"], c["applied_ms"]) == (1, 3, 0)
    assert points_of(p, "second") == 0  # not applied by itself: an operator decides
    status, comp = p.get("/ui/api/completeness")
    assert status == 200
    row = next(a for a in comp["agents"] if a["agent"] == "reused-4")
    assert row["conflict"] == 1 and row["conflicts"] == [[1, 1]]
    assert comp["totals"]["conflict"] >= 1
    assert '"worker.seq_conflict"' in p.logs()


def test_refused_conflicts_are_on_the_completeness_view(p: InProcess) -> None:
    assert post(p, "reused-5", [report(1, host="x")]).status == 200
    p.wait_stored("reused-5", {1})
    assert post(p, "reused-5", [report(1, host="y")]).status == 409

    def refused() -> float:
        status, comp = p.get("/ui/api/completeness")
        assert status == 200
        return float(comp["refused_conflicts"])

    wait_for(lambda: refused() >= 1, 30, "refused conflicts on the completeness view")


def test_a_bad_incarnation_is_a_400(p: InProcess, tmp_path: Path) -> None:
    r = post(p, "reused-6", [report(1)], incarnation="has space")
    assert r.status == 400 and "$.incarnation" in json.loads(r.data)["error"]
    r = post(p, "reused-6", [report(1)], incarnation="x" * 65)
    assert r.status == 400
