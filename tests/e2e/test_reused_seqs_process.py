"""#14 item 1 with real processes: `lossproof up`, `lossproof agent`, `lossproof send`.

The issue's reproduction: an agent sends, its spool is wiped (or a second host with the same agent
id starts, or `send` runs with a fresh state dir), and the new reports reuse seqs 1, 2, ... Before,
every request got 200 and the second reports vanished as "duplicates". Now every report an agent
made is stored (incarnations), or refused with 409 and sent again under a new incarnation, or (only
when both were acknowledged before either was stored) kept whole as a visible conflict.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from lossproof import config as config_mod
from lossproof.store.base import Point, report_digest
from lossproof.store.factory import open_store
from lptest.agent import AgentProc, base_config, spool_records, wait_for, write_config
from lptest.pipeline import Pipeline

LOSSPROOF = [sys.executable, "-m", "lossproof"]


class _Report(msgspec.Struct):
    seq: int
    time: int
    points: list[Point]


_dec = msgspec.msgpack.Decoder(_Report)


def made(spool_dir: Path) -> dict[bytes, int]:
    """digest -> seq of every report in an agent's spool (its replay window keeps acknowledged ones)."""
    out = {}
    for seq, payload in spool_records(spool_dir).items():
        out[report_digest(_dec.decode(payload).points)] = seq
    return out


def kept(p: Pipeline, agent: str) -> tuple[set[bytes], set[bytes], list[str]]:
    """The digests of ``agent``'s stored reports and of its kept conflicts, and its incarnations."""
    store = open_store(config_mod.load(p.data_dir), readonly=True)
    try:
        incs = [a.incarnation for a in store.agents("default") if a.agent == agent]
        stored: set[bytes] = set()
        for inc in incs:
            stored |= set(store.stored_digests("default", agent, inc, [(1, 2**62)]).values())
        conflicts = {c.digest for c in store.conflicts("default", agent)}
        return stored, conflicts, incs
    finally:
        store.close()


def agent(p: Pipeline, tmp: Path, name: str, host: str, spool: Path | None = None) -> AgentProc:
    cfg = base_config(tmp, p.url, p.key, agent_id="shared-id", labels={"host": host})
    cfg["spool_dir"] = str(spool or tmp / f"spool-{name}")
    return AgentProc(write_config(tmp / f"{name}.toml", **cfg), cfg)


def run_for(a: AgentProc, seconds: float) -> None:
    a.start()
    a.wait_started()
    time.sleep(seconds)
    assert a.stop() == 0, a.logs()[-3000:]


def all_stored(p: Pipeline, reports: dict[bytes, int], timeout: float = 60) -> list[str]:
    def done() -> list[str] | None:
        stored, _conflicts, incs = kept(p, "shared-id")
        return incs if set(reports) <= stored else None

    incs: list[str] = wait_for(done, timeout, "every report the agents made stored")
    return incs


def test_a_wiped_spool_loses_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    a = agent(pipeline, tmp_path, "a", "host-a")
    run_for(a, 1.5)
    first = made(a.spool_dir)
    assert first and min(first.values()) == 1
    shutil.rmtree(a.spool_dir)  # reinstall / new disk / a container without its volume
    run_for(a, 1.5)
    second = made(a.spool_dir)
    assert min(second.values()) == 1  # the same seqs again, other reports
    incs = all_stored(pipeline, {**first, **second})
    assert len(incs) == 2 and all(incs), incs
    # the old incarnation is not "100 % stored" by forgetting: its ledger is complete, nothing pending
    led = pipeline.ledger("shared-id")
    assert led["incarnation"] == incs[-1] and led["missing"] == []


def test_two_live_agents_with_one_id_both_stored(pipeline: Pipeline, tmp_path: Path) -> None:
    a, b = agent(pipeline, tmp_path, "a", "host-a"), agent(pipeline, tmp_path, "b", "host-b")
    a.start()
    b.start()
    a.wait_started()
    b.wait_started()
    time.sleep(2.0)
    assert a.stop() == 0 and b.stop() == 0
    reports = {**made(a.spool_dir), **made(b.spool_dir)}
    incs = all_stored(pipeline, reports)
    assert len(incs) == 2, incs


def test_a_copied_spool_is_refused_409_and_recovers(pipeline: Pipeline, tmp_path: Path) -> None:
    """A spool copied to a second host (a cloned VM image): same incarnation, same next seq. The
    second host's reports are answered 409; it starts a new incarnation and sends them again."""
    a = agent(pipeline, tmp_path, "a", "host-a")
    run_for(a, 1.0)
    clone = tmp_path / "spool-clone"
    shutil.copytree(a.spool_dir, clone)
    run_for(a, 1.0)  # host a goes on: seqs after the copy are stored as host a's
    b = agent(pipeline, tmp_path, "b", "host-b", spool=clone)
    b.start()
    b.wait_started()
    wait_for(lambda: b.metrics().get("lossproof_agent_seq_conflicts_total", 0) >= 1, 30, "a 409 at b")
    time.sleep(1.0)
    assert b.stop() == 0
    incs = all_stored(pipeline, {**made(a.spool_dir), **made(clone)})
    assert len(incs) == 2, incs
    assert '"agent.seq_conflict"' in b.logs() and '"spool.new_incarnation"' in b.logs()
    assert '"ingest.seq_conflict"' in pipeline.logs()


def send(p: Pipeline, state: Path, lines: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOSSPROOF, "send", "--url", p.url, "--api-key", p.key, "--state-dir", str(state), "--agent", "cli"],
        input="".join(json.dumps(x) + "\n" for x in lines),
        capture_output=True,
        text=True,
        timeout=60,
    )


def cli_points(p: Pipeline, host: str) -> int:
    status, body = p.get(f"/v1/query?metric=m&from=0&to=4102444800000&label=host:{host}")
    assert status == 200, body
    return sum(len(s["points"]) for s in body["series"])


def test_send_with_a_fresh_or_copied_state_dir_loses_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    t = 1_767_225_600_000
    first = send(pipeline, tmp_path / "state-1", [{"metric": "m", "v": 1, "t": t, "labels": {"host": "one"}}])
    assert first.returncode == 0, first.stderr
    # a fresh state dir (another machine, a cleaned home): seq 1 again, other content
    fresh = send(pipeline, tmp_path / "state-2", [{"metric": "m", "v": 2, "t": t, "labels": {"host": "two"}}])
    assert fresh.returncode == 0, fresh.stderr
    wait_for(lambda: cli_points(pipeline, "one") == 1 and cli_points(pipeline, "two") == 1, 30, "both")
    # a copied state file: same incarnation, same next seq -> 409, a new incarnation, sent again
    shutil.copytree(tmp_path / "state-2", tmp_path / "state-3")
    a = send(pipeline, tmp_path / "state-2", [{"metric": "m", "v": 3, "t": t + 1, "labels": {"host": "two"}}])
    b = send(pipeline, tmp_path / "state-3", [{"metric": "m", "v": 4, "t": t, "labels": {"host": "three"}}])
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert "409" in b.stderr and "new incarnation" in b.stderr
    wait_for(lambda: cli_points(pipeline, "two") == 2 and cli_points(pipeline, "three") == 1, 30, "all")
    status, body = pipeline.get("/v1/agents")
    assert status == 200
    assert len([x for x in body["agents"] if x["agent"] == "cli"]) == 3
