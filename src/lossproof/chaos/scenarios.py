"""The chaos scenarios: each a small description (what it does, topology tweaks, what must hold)
plus the step that injects its faults, called again and again on a seeded schedule while the load
runs. After ``duration`` the faults stop, the topology drains and the audit runs.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lossproof.chaos import damage, netns
from lossproof.chaos.brokers import Broker
from lossproof.chaos.topology import Proc, Topology


@dataclass
class Ctx:
    topo: Topology
    rng: random.Random
    deadline: float
    say: Callable[[str], None]
    notes: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sleep(self, lo: float, hi: float) -> None:
        time.sleep(max(0.0, min(self.rng.uniform(lo, hi), self.left())))

    def fault(self, what: str) -> None:
        self.topo.faults_injected += 1
        self.say(f"fault #{self.topo.faults_injected}: {what}")


Step = Callable[[Ctx], None]


@dataclass(frozen=True)
class Scenario:
    number: int
    name: str
    title: str
    step: Step
    spec: dict[str, Any] = field(default_factory=dict)  # TopologySpec overrides
    expect_silent_loss: bool = False  # the audit must FAIL (scenario 5)
    stop_agents_before_drain: bool = False
    skip: Callable[[], str | None] = lambda: None  # a reason to skip, or None
    # the logs it applies to, and why not the others
    backends: tuple[str, ...] = ("embedded", "kafka")
    why_not: str = ""
    min_agents: int = 1  # run with at least this many agents, whatever --agents says

    def skip_reason(self, log: str) -> str | None:
        if log not in self.backends:
            return self.why_not or f"does not apply to the {log} log"
        return self.skip()


def _kill_restart(ctx: Ctx, p: Proc, what: str) -> None:
    ctx.fault(f"kill -9 {p.name} ({what})")
    p.kill9()
    ctx.sleep(0.1, 1.0)
    p.start(wait=False)


def kill_ingest(ctx: Ctx) -> None:
    ctx.sleep(0.5, 2.0)
    _kill_restart(ctx, ctx.rng.choice(ctx.topo.ingests), "random moment")
    ctx.topo.ingests[0].wait_healthy(30)


def kill_worker(ctx: Ctx) -> None:
    ctx.sleep(0.3, 1.5)
    topo = ctx.topo
    if ctx.rng.random() < 0.5:
        _kill_restart(ctx, ctx.rng.choice(topo.workers), "while it writes batches")
        return
    # The exact moment: the batch's points, ledger and commits are written, COMMIT not yet run.
    topo.set_faults({"store.before_commit": {}})
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and all(w.alive() for w in topo.workers):
        time.sleep(0.02)
    topo.set_faults({})
    for w in topo.workers:
        if not w.alive():
            ctx.fault(f"kill -9 {w.name} inside its store transaction, before COMMIT")
            w.kill9()  # reap it
            ctx.sleep(0.1, 1.0)
            w.start(wait=False)


def kill_everything(ctx: Ctx) -> None:
    ctx.sleep(1.5, 3.0)
    topo = ctx.topo
    if topo.kafka is not None:
        _kill_everything_kafka(ctx)
        return
    procs = [*topo.ingests, *topo.workers]
    ctx.fault(f"kill -9 all {len(procs)} pipeline processes at once + power loss of the log")
    # a slow fsync first, so the log holds written-but-not-yet-durable records when the power goes
    topo.set_faults({"log.fsync": {"mode": "delay", "seconds": 1.0}})
    ctx.sleep(0.3, 0.8)
    for p in procs:
        p.signal(signal.SIGKILL)
    for p in procs:
        p.kill9()
    log_dir = topo.log_path
    cut = sum(damage.simulate_power_loss(log_dir, part) for part in damage.partitions(log_dir))
    ctx.say(f"power loss dropped {cut} un-fsync'd log records")
    topo.set_faults({})
    ctx.sleep(0.2, 1.0)
    for p in procs:
        p.start(wait=False)
    for p in topo.ingests:
        p.wait_healthy(30)


def _kill_everything_kafka(ctx: Ctx) -> None:
    """The second post-mortem: every server at once, brokers included. A broker acknowledges from
    its page cache, which a process kill does not lose, so this is kill -9 rather than power loss."""
    topo = ctx.topo
    procs: list[Proc | Broker] = [*topo.ingests, *topo.workers, *topo.brokers]
    ctx.fault(f"kill -9 all {len(procs)} pipeline processes and Kafka brokers at once")
    for p in procs:
        p.signal(signal.SIGKILL)  # all at once, then wait for each
    for p in procs:
        p.kill9()
    ctx.sleep(0.5, 2.0)
    for b in topo.brokers:
        b.start(wait=False)
    for p in [*topo.ingests, *topo.workers]:
        p.start(wait=False)
    topo.brokers[0].wait_healthy(120)
    for i in topo.ingests:
        i.wait_healthy(60)


def log_loses_data(ctx: Ctx) -> None:
    ctx.sleep(0.5, 1.5)
    topo = ctx.topo
    for w in topo.workers:
        w.stop()
    ctx.sleep(1.0, 2.0)  # ingest acknowledges; nothing consumes
    if topo.kafka is not None:
        ctx.say("workers stopped; deleting the topic's records up to its end")
        lost = topo.kafka.delete_past_committed()
        ctx.fault(f"Kafka lost {lost} acknowledged, unconsumed records (delete_records past the commits)")
        for w in topo.workers:
            w.start(wait=False)
        ctx.sleep(1.0, 2.0)
        return
    for p in topo.ingests:
        p.kill9()
    log_dir = topo.log_path
    lost = sum(damage.lose_unconsumed(log_dir, part) for part in damage.partitions(log_dir))
    ctx.fault(f"the log lost {lost} acknowledged, unconsumed records (past the committed offsets)")
    for p in [*topo.ingests, *topo.workers]:
        p.start(wait=False)
    for p in topo.ingests:
        p.wait_healthy(30)
    ctx.sleep(1.0, 2.0)


def ack_before_durable(ctx: Ctx) -> None:
    topo = ctx.topo
    if topo.faults_injected:
        time.sleep(max(0.0, ctx.left()))
        return
    topo.wait_stored()  # some reports stored normally first
    if topo.kafka is not None:
        down = topo.brokers[:2]
        ctx.fault("ingest acknowledges before (without) the log write while 2 of 3 brokers are down")
        for b in down:
            b.kill9()
        topo.set_faults({"ingest.ack_before_durable": {}})
    else:
        ctx.fault("ingest acknowledges before (without) the log write while the log's fsync fails")
        topo.set_faults({"ingest.ack_before_durable": {}, "log.fsync": {"mode": "fail"}})
    time.sleep(max(1.5, min(3.0, ctx.left())))
    # The agents go away with everything "acknowledged": nobody will ever ask them for it again.
    topo.stop_agents()
    topo.set_faults({})


def primary_down(ctx: Ctx) -> None:
    topo = ctx.topo
    if topo.faults_injected:
        time.sleep(max(0.0, ctx.left()))
        return
    ctx.sleep(0.5, 1.0)
    ctx.fault(f"all {len(topo.ingests)} ingest processes unreachable for the rest of the run")
    for p in topo.ingests:
        p.kill9()
    # until every agent has failed over (bounded), then for the rest of the run
    until = time.monotonic() + max(30.0, ctx.left())
    while time.monotonic() < until:
        if all(topo.status(i).get("destination") == "fallback" for i in range(len(topo.agents))):
            break
        time.sleep(0.2)
    time.sleep(max(1.0, ctx.left()))
    on_fallback = sum(1 for i in range(len(topo.agents)) if topo.status(i).get("destination") == "fallback")
    ctx.notes.append(f"{on_fallback}/{len(topo.agents)} agents on the fallback")
    ctx.say(ctx.notes[-1])


def spool_full(ctx: Ctx) -> None:
    topo = ctx.topo
    if topo.faults_injected:
        time.sleep(max(0.0, ctx.left()))
        return
    ctx.sleep(0.5, 1.0)
    assert topo.fallback is not None
    ctx.fault("outage of primary and fallback while agents' spools are tiny (max_spool_bytes 4096)")
    for p in [*topo.ingests, topo.fallback]:
        p.kill9()
    time.sleep(max(3.0, ctx.left()))


def pauses(ctx: Ctx) -> None:
    ctx.sleep(0.3, 1.0)
    targets: list[Proc | Broker] = [*ctx.topo.ingests, *ctx.topo.workers, *ctx.topo.brokers]
    p = ctx.rng.choice(targets)
    ctx.fault(f"SIGSTOP {p.name}")
    p.pause()
    ctx.sleep(0.5, 2.5)
    p.resume()


def slow_disk(ctx: Ctx) -> None:
    ctx.sleep(0.3, 1.0)
    # short stalls show as latency; one longer than server.append_timeout_seconds (3 s) as 503s
    delay = ctx.rng.choice([0.3, 1.0, 4.0])
    ctx.fault(f"log fsync delayed {delay}s")
    ctx.topo.set_faults({"log.fsync": {"mode": "delay", "seconds": delay}})
    ctx.sleep(1.0, 3.0)
    ctx.topo.set_faults({})
    answers = ctx.topo.ingest_answers()
    ctx.notes[:] = [f"ingest answers so far: {dict(sorted(answers.items()))}"]
    ctx.say(ctx.notes[0])


def network(ctx: Ctx) -> None:
    net = ctx.topo.net
    assert net is not None
    ctx.sleep(0.5, 1.5)
    ms = ctx.rng.randint(100, 600)
    if ctx.rng.random() < 0.4 and net.delay(ms, ms // 2):
        ctx.fault(f"network delay agents <-> pipeline {ms} ms ± {ms // 2} ms (netem)")
    else:
        ctx.fault("network partition agents <-> pipeline (veth link down)")
        net.partition()
    ctx.sleep(1.0, 4.0)
    held = sum(int(ctx.topo.status(i).get("pending", 0)) for i in range(len(ctx.topo.agents)))
    ctx.say(f"agents hold {held} pending reports; healing the network")
    ctx.notes.append(f"pending at heal: {held}")
    net.heal()


def wipe_spool(ctx: Ctx) -> None:
    """An agent's disk is wiped (reinstall, a container without its volume) while it holds reports:
    kill -9, spool gone, restart with a new incarnation that reuses seqs 1, 2, … In most rounds the
    pipeline is slowed first, so the old spool dies with requests in flight and reports the pipeline
    has heard of (its last spool state) but never got: those must end stored or lost `spool_reset`."""
    ctx.sleep(1.0, 2.5)
    topo = ctx.topo
    i = ctx.rng.randrange(len(topo.agents))
    a = topo.agents[i]
    ingest = topo.ingests[i % len(topo.ingests)]
    stall = ctx.rng.random() < 0.7
    if stall and topo.kafka is None:
        # acks come 1 s late: requests pile up in flight and the rest wait in the spool
        topo.set_faults({"log.fsync": {"mode": "delay", "seconds": 1.0}})
        ctx.sleep(0.5, 1.5)
    elif stall:
        ingest.pause()  # no fsync hook on Kafka: the agent's ingest stops answering instead
        ctx.sleep(0.3, 1.2)
    held = int(topo.status(i).get("pending", 0))
    ctx.fault(f"kill -9 {a.name}, wipe its spool ({held} reports pending), restart it: a new incarnation")
    a.kill9()
    topo.wipe_spool(i)
    if stall:
        topo.set_faults({})
        ingest.resume()
    a.start(wait=False)
    topo.wait_agents_started(30, which=[i])  # its new spool exists before the next fault or the drain


def shared_id(ctx: Ctx) -> None:
    """Agents 0 and 1 share one agent id, each with its own spool, at the same time; faults that make
    them resend (their restarts, an ingest's) keep both seq spaces busy with the same seqs."""
    ctx.sleep(0.5, 2.0)
    topo = ctx.topo
    if ctx.rng.random() < 0.5:
        _kill_restart(ctx, topo.agents[ctx.rng.randrange(2)], f"one of two agents with id {topo.agent_id(0)}")
    else:
        _kill_restart(ctx, ctx.rng.choice(topo.ingests), "while two agents share an id")
        topo.ingests[0].wait_healthy(30)


SCENARIOS: list[Scenario] = [
    Scenario(1, "kill-ingest", "kill -9 an ingest process at random moments", kill_ingest),
    Scenario(
        2,
        "kill-worker",
        "kill -9 a worker mid-batch: at random moments, and inside the store transaction before COMMIT",
        kill_worker,
    ),
    Scenario(
        3,
        "kill-all",
        "kill -9 every ingest and worker at once + drop the log's un-fsync'd tail (power loss)",
        kill_everything,
    ),
    Scenario(
        4,
        "log-loses-data",
        "the log loses acknowledged records past the committed offsets; must end complete via agent replay",
        log_loses_data,
    ),
    Scenario(
        5,
        "ack-before-durable",
        "BUG ON PURPOSE: ingest acks without the log while fsync fails; the audit must see the silent loss",
        ack_before_durable,
        expect_silent_loss=True,
        stop_agents_before_drain=True,
    ),
    Scenario(
        6,
        "primary-down",
        "every ingest unreachable → agents fail over to the fallback → `lossproof replay` drains it",
        primary_down,
    ),
    Scenario(
        7,
        "spool-full",
        "outage with a tiny agent spool limit: drops are accounted (spool_full), nothing unaccounted",
        spool_full,
        spec={"max_spool_bytes": 4096},
    ),
    Scenario(8, "pauses", "SIGSTOP/SIGCONT stalls of ingest, worker processes and Kafka brokers", pauses),
    Scenario(
        9,
        "net-partition",
        "network partition agents↔ingest with ip netns/veth/tc (skipped where not allowed)",
        network,
        spec={"netns": True},
        skip=netns.unavailable,
    ),
    Scenario(
        10,
        "slow-disk",
        "log fsync latency raised: back-pressure (503/latency), not loss",
        slow_disk,
        backends=("embedded",),
        why_not="the fsync fault hook is in the embedded log; Kafka broker stalls are scenario 8",
    ),
    Scenario(
        11,
        "wipe-spool",
        "an agent's spool wiped mid-run (kill -9, spool gone, restart): its reused seqs are a new "
        "incarnation; what the old spool never delivered is lost as spool_reset, not silently",
        wipe_spool,
        # small requests: with acks slowed, a backlog builds that the pipeline hears of (each
        # request's spool state) before the spool dies, which is what spool_reset accounts for
        spec={"max_batch_reports": 2},
    ),
    Scenario(
        12,
        "shared-id",
        "two agents with one agent id (separate spools) at once, with kill -9s: both stored in full",
        shared_id,
        spec={"shared_agent_id": True},
        min_agents=2,
    ),
]


def by_name(name: str) -> list[Scenario]:
    if name == "all":
        return list(SCENARIOS)
    for s in SCENARIOS:
        if name in (s.name, str(s.number)):
            return [s]
    raise KeyError(name)
