"""Issue 21 with real brokers and a real power cut: every broker of a 3-node cluster loses power at
once while ``lossproof up`` runs on it and real agents send.

The three brokers' data directories (log dirs and KRaft metadata) are on one power-cut file system
(``lptest.pcfs`` through ``lptest.kafka_powercut``). Each round kills -9 every broker, drops every
write Kafka did not fsync, and starts the brokers again on the remounted file system. Kafka fsyncs a
partition when it rolls a segment: here the topic rolls every 2 s and the consumer offsets every
0.25 s, so a cut loses the last 0-2 s of acknowledged records while the workers' commits survive to
within about 0.25 s. The surviving commit is then often above the new log end, and Kafka hands the
offsets in between out again to the reports the agents resend right after the restart.

Rounds:

- ``stopped-agent``: the worker is paused and agent X stopped, so X's last acknowledged reports
  are in Kafka only; the cluster rolls them to disk (others keep appending), then the cut.
- ``paused``: the worker is paused at the cut and resumed only after the restart: the reader is
  reassigned after the agents' first reports went to the reused offsets.
- ``restart-all``: ``lossproof up`` is killed -9 with the brokers and started again after them.
- ``live``: only the brokers; ``up`` and its reader keep running.

In every round agent Y is stopped once a report it made after the restart is acknowledged: what it
sent since the restart exists only in Kafka (at reused offsets when the commit survived above the
new end), and nobody would replay it. The other agents resend at once and keep sending.

Checked after each round, before X and Y come back (they would replay whatever the reader skipped):
every report in Kafka (read with a plain consumer, not lossproof's reader) is stored; each truncation
the reader reports starts exactly where the surviving log diverges (the first record written after
the restart); one is reported wherever the surviving commit is above that point, and the worker's
counters agree with the ranges shown on the dashboard. At the end, with every agent back and
drained, the chaos audit: every report the agents made is stored exactly once. And the run is not
vacuous: Kafka lost acknowledged records, a truncation was reported with a stopped agent's reports at
reused offsets, and X's unstored acknowledged reports survived in Kafka only and were stored.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lossproof import config as config_mod
from lossproof.chaos.remote import PipelineClient
from lossproof.protocol.native import log_key
from lptest.agent import scrape, wait_for
from lptest.kafka import new_topic
from lptest.kafka_powercut import (
    PowerCutCluster,
    TopicRecord,
    committed,
    end_offsets,
    partition_of,
    read_topic,
    set_rolls,
    worker_pid,
)
from lptest.marker_agents import MarkerAgent, audit, stored
from lptest.pipeline import Pipeline, free_port
from lptest.powercut import require_fuse

pytestmark = pytest.mark.process

PARTITIONS = 2
AGENTS_PER_PARTITION = 2
# Rolls fsync: the topic's every 3 s (a cut loses its last 0-3 s), the commits' every 0.2 s (they
# survive to within 0.2 s), so a cut mostly leaves a commit above the new log end.
TOPIC_ROLL_MS = 3000
OFFSETS_ROLL_MS = 200
LOAD_SECONDS = 3.0
ROLL_WAIT_SECONDS = TOPIC_ROLL_MS / 1000 + 1.0  # every segment open when X stopped has rolled
KINDS = ("stopped-agent", "restart-all", "live", "paused")
# Three rounds (one of each of the first three kinds) keep the test under 3 minutes here; more
# cycle through every kind.
ROUNDS = max(3, int(os.environ.get("LOSSPROOF_TEST_KAFKA_POWER_CUTS", "3")))
READER = 'lossproof_log_kafka_{}_total{{group="workers"}}'


@dataclass
class Round:
    kind: str
    stopped: list[str]
    lost: dict[int, int] = field(default_factory=dict)  # acknowledged records Kafka lost, per partition
    diverged: dict[int, int] = field(default_factory=dict)  # first offset written after the restart
    commits: dict[int, int] | None = None  # the workers' commits that survived the cut
    gaps: list[dict[str, Any]] = field(default_factory=list)  # truncations shown on the dashboard
    rechecked: float = 0.0  # processed records the reader fetched again to find the divergence
    restart_seconds: float = 0.0
    stopped_reused: int = 0  # records of stopped agents at reused offsets (all must be stored)
    x_only_in_kafka: int = 0  # X's acknowledged, unstored reports that survived the cut

    def line(self) -> str:
        gaps = ", ".join(f"p{g['partition']} [{g['first']}, {g['last']}]" for g in self.gaps) or "none"
        return (
            f"{self.kind:<13} Kafka lost {sum(self.lost.values()):>4} {self.lost}; log end after "
            f"{self.diverged}, commits {self.commits}; truncations {gaps}; re-read {self.rechecked:.0f}; "
            f"stopped agents' records at reused offsets {self.stopped_reused}; X only in Kafka "
            f"{self.x_only_in_kafka}; brokers back in {self.restart_seconds:.0f} s"
        )


@dataclass
class Run:
    kc: PowerCutCluster
    p: Pipeline
    topic: str
    worker_port: int
    agents: list[MarkerAgent]
    client: PipelineClient
    x: MarkerAgent

    def reader_counts(self) -> dict[str, float]:
        m = scrape(self.worker_port)
        names = ("truncations", "truncated_offsets", "rechecked_records")
        return {n: m.get(READER.format(n), 0.0) for n in names}

    def truncations_since(self, t_ms: int) -> list[dict[str, Any]]:
        status, body = self.p.get("/ui/api/health", key=self.p.operator_key)
        assert status == 200, body
        return [g for g in body["log_gaps"] if g["detected_ms"] >= t_ms]


@pytest.mark.timeout(600)
def test_power_cut_of_every_broker_under_lossproof_up(tmp_path: Path) -> None:
    require_fuse()
    kc = PowerCutCluster(tmp_path / "cluster", seed=21)
    p = Pipeline(tmp_path / "data", free_port(), "lp_test_" + secrets.token_hex(16))
    agents: list[MarkerAgent] = []
    try:
        kc.start()
        cfg = new_topic(kc.cluster, prefix="powercut", partitions=PARTITIONS)
        conf, _ = config_mod.init_data_dir(p.data_dir, p.key, p.port)
        conf.log.backend = "kafka"
        conf.log.kafka = cfg
        conf.worker.http_port = free_port()
        config_mod.save(conf)
        p.start()
        client = PipelineClient(p.url, p.key)
        ids = agent_ids()
        agents = [MarkerAgent(tmp_path / "agents", a, p.url, p.key) for q in sorted(ids) for a in ids[q]]
        for a in agents:
            a.start()
        for a in agents:
            a.wait_running()
        wait_for(lambda: all(stored(client, a.agent_id) for a in agents), 60, "every agent's first reports")
        set_rolls(kc.bootstrap, cfg.topic, topic_ms=TOPIC_ROLL_MS, offsets_ms=OFFSETS_ROLL_MS)
        where = {r.agent: r.partition for r in read_topic(kc.bootstrap, cfg.topic, PARTITIONS)}
        assert where == {a: q for q, names in ids.items() for a in names}, "not the partitions predicted"
        by_id = {a.agent_id: a for a in agents}
        # X shares partition 0 with an agent that keeps sending until the cut: those appends roll
        # the segment that holds X's last reports, which makes them durable.
        x = by_id[ids[0][0]]
        run = Run(kc, p, cfg.topic, conf.worker.http_port, agents, client, x)
        rounds = []
        for i in range(ROUNDS):
            # One Y on each partition, so every truncation has a stopped agent's reports in reach.
            ys = [by_id[ids[0][1]], by_id[ids[1][i % AGENTS_PER_PARTITION]]]
            rounds.append(power_cut_round(run, KINDS[i % len(KINDS)], ys))
        summary = "\n".join(r.line() for r in rounds)
        print(summary)
        final_audit(run, summary)

        assert any(sum(r.lost.values()) > 0 for r in rounds), f"the power cuts lost nothing:\n{summary}"
        assert any(r.gaps and r.stopped_reused for r in rounds), (
            f"no round put a stopped agent's reports at reused offsets below a surviving commit:\n{summary}"
        )
        assert rounds[0].x_only_in_kafka > 0, f"X had no acknowledged report in Kafka only:\n{summary}"
    except BaseException:
        print(kc.server_logs()[-6000:])
        print(p.logs()[-4000:])
        raise
    finally:
        for a in agents:
            if a.alive():
                a.proc.kill9()
        if p.proc is not None and p.proc.poll() is None:
            p.kill9()
        kc.close()


def agent_ids() -> dict[int, list[str]]:
    """``AGENTS_PER_PARTITION`` agent ids for each partition of the topic (by their records' key)."""
    ids: dict[int, list[str]] = {q: [] for q in range(PARTITIONS)}
    i = 0
    while any(len(names) < AGENTS_PER_PARTITION for names in ids.values()):
        name = f"pc-{i}"
        q = partition_of(log_key("default", name), PARTITIONS)
        if len(ids[q]) < AGENTS_PER_PARTITION:
            ids[q].append(name)
        i += 1
    return ids


def power_cut_round(run: Run, kind: str, ys: list[MarkerAgent]) -> Round:
    p, kc, client, x = run.p, run.kc, run.client, run.x
    stopped = [*ys, x] if kind == "stopped-agent" else ys
    r = Round(kind, [a.agent_id for a in stopped])
    time.sleep(LOAD_SECONDS)
    assert p.proc is not None
    wpid = worker_pid(p.proc.pid)
    counts_before = run.reader_counts()  # a paused worker cannot answer
    paused = kind in ("stopped-agent", "paused")
    if paused:
        os.kill(wpid, signal.SIGSTOP)
    x_unstored: set[int] = set()
    if kind == "stopped-agent":
        time.sleep(1.0)  # X's reports of this second are acknowledged, not stored
        x.stop()
        x_unstored = x.acked() - stored(client, x.agent_id)
        assert x_unstored, "the worker is paused: X's last acknowledged reports cannot be stored yet"
        time.sleep(ROLL_WAIT_SECONDS)
    before = end_offsets(kc.bootstrap, run.topic, PARTITIONS)
    if kind == "restart-all":
        p.kill9()
    kc.kill_all()
    kc.power_cut()
    # No broker runs now: whatever carries a later append time was written after the restart.
    restart_ms = int(time.time() * 1000)
    r.restart_seconds = kc.restart()
    if kind != "live":  # nothing can commit now: these are the commits the cut left
        r.commits = committed(kc.bootstrap, f"{run.topic}.workers", run.topic, PARTITIONS)
    if kind == "restart-all":
        p.start()

    # Y resends at once; as soon as a report it made after the restart is acknowledged, it stops:
    # everything it sent since the restart is then in Kafka only.
    marks = {y.agent_id: y.last_seq() for y in ys}
    for y in ys:
        wait_for(
            lambda y=y: max(y.acked(), default=0) > marks[y.agent_id],  # type: ignore[misc]
            90,
            f"{y.agent_id}: a report acknowledged after the restart",
        )
    for y in ys:
        y.stop()
    if paused:
        os.kill(wpid, signal.SIGCONT)

    # Nothing still in Kafka is skipped: every report there gets stored, the stopped agents' too.
    records = read_topic(kc.bootstrap, run.topic, PARTITIONS)
    in_kafka: dict[str, set[int]] = {}
    for rec in records:
        in_kafka.setdefault(rec.agent, set()).update(s for a, b in rec.seqs for s in range(a, b + 1))

    def missing() -> dict[str, list[int]]:
        out = {agent: sorted(seqs - stored(client, agent)) for agent, seqs in in_kafka.items()}
        return {agent: seqs for agent, seqs in out.items() if seqs}

    deadline = time.monotonic() + 90
    while (left := missing()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"round {kind}: reports still in Kafka were never stored: " + ", ".join(
        f"{agent}: {len(seqs)} (e.g. {seqs[:5]})" for agent, seqs in left.items()
    )
    r.x_only_in_kafka = len(x_unstored & in_kafka.get(x.agent_id, set()))

    check_truncations(run, r, records, before, restart_ms, wpid, counts_before)
    for a in stopped:
        a.start()
    for a in stopped:
        a.wait_running()
    return r


def check_truncations(
    run: Run,
    r: Round,
    records: list[TopicRecord],
    before: dict[int, int],
    restart_ms: int,
    wpid: int,
    counts_before: dict[str, float],
) -> None:
    """The reader's truncations against what the independent read shows happened."""
    ends = {
        q: 1 + max((x.offset for x in records if x.partition == q), default=-1) for q in range(PARTITIONS)
    }
    for q in range(PARTITIONS):
        new = [x.offset for x in records if x.partition == q and x.ts_ms >= restart_ms]
        r.diverged[q] = min(new, default=ends[q])
        r.lost[q] = max(0, before[q] - r.diverged[q])
    r.gaps = run.truncations_since(restart_ms)
    assert all("truncated" in g["reason"] and run.topic in g["reason"] for g in r.gaps), r.gaps
    by_p: dict[int, dict[str, Any]] = {}
    for g in r.gaps:
        assert g["partition"] not in by_p, f"round {r.kind}: one truncation reported twice: {r.gaps}"
        by_p[g["partition"]] = g
        assert g["first"] == r.diverged[g["partition"]], (
            f"round {r.kind}: truncation {g} does not start where the log diverged ({r.diverged})"
        )
        assert g["last"] >= g["first"], g
    if r.commits is not None:
        for q, c in r.commits.items():
            if c > r.diverged[q]:
                assert q in by_p and by_p[q]["last"] >= c - 1, (
                    f"round {r.kind}: partition {q}'s commit {c} survived above the new log end "
                    f"{r.diverged[q]} but the reader reported {by_p.get(q)}"
                )
            elif r.kind == "restart-all":  # a fresh reader knows only the commit
                assert q not in by_p, f"round {r.kind}: truncation {by_p[q]} below the commit {c}"
    stopped = set(r.stopped)
    r.stopped_reused = sum(
        1
        for x in records
        if x.agent in stopped
        and x.ts_ms >= restart_ms
        and x.partition in by_p
        and by_p[x.partition]["first"] <= x.offset <= by_p[x.partition]["last"]
    )
    # The worker's counters say the same (a restarted worker counts from zero).
    assert run.p.proc is not None
    now = run.reader_counts()
    base = counts_before if worker_pid(run.p.proc.pid) == wpid else dict.fromkeys(now, 0.0)
    assert now["truncations"] - base["truncations"] == len(r.gaps), (now, base, r.gaps)
    offsets = sum(g["last"] - g["first"] + 1 for g in r.gaps)
    assert now["truncated_offsets"] - base["truncated_offsets"] == offsets, (now, base, r.gaps)
    r.rechecked = now["rechecked_records"] - base["rechecked_records"]


def final_audit(run: Run, summary: str) -> None:
    """Every agent back, no longer making reports; once nothing is pending or missing, the audit."""
    for a in run.agents:
        if not a.alive():
            a.start()
    for a in run.agents:
        a.wait_running()
    for a in run.agents:
        a.proc.signal(signal.SIGUSR1)  # stop making reports; keep sending what is pending

    def settled() -> bool:
        for a in run.agents:
            st = a.status()
            if st.get("producing", True) or st.get("pending", 1):
                return False
            if run.client.unsettled(a.agent_id, int(st.get("last_seq", 0))):
                return False
        return True

    wait_for(settled, 120, "every agent drained and nothing missing in the ledgers", every=0.5)
    for a in run.agents:
        a.stop()
    report = audit(run.client, run.agents)
    table = "\n".join(report.table())
    print(table)
    t = report.totals()
    assert report.ok, f"{summary}\n{table}"
    assert t["created"] == t["stored_once"] > 0 and t["delayed"] == 0, f"{summary}\n{table}"
