"""A whole pipeline as real processes in one directory, for the chaos harness to torment.

``Topology`` starts, in ``root``: N ``lossproof ingest`` processes (each owns one partition of the
embedded log: N = ``log.partitions``), M ``lossproof worker`` processes, one ``lossproof fallback``,
and K chaos agents (:mod:`lossproof.chaos.driver`: the real agent with its real spool), all with
``LOSSPROOF_FAULTS_FILE`` set. With ``log = "kafka"`` the log is a 3-node local Kafka cluster
instead (:mod:`lossproof.chaos.brokers`) and both ingest processes write to one 2-partition topic.
Every process, brokers included, can be killed -9, stopped, paused and restarted; a
sampler thread records each process's peak RSS. :meth:`drain` lets everything settle and
:meth:`audit` compares the agents' spools with the ledger and the store.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed; calls are plain
import tomli_w
import urllib3

import lossproof
from lossproof import config as config_mod
from lossproof.chaos import journal
from lossproof.chaos.audit import AuditReport
from lossproof.chaos.brokers import Broker, KafkaSide
from lossproof.chaos.faultable import Faultable
from lossproof.chaos.netns import AgentNet
from lossproof.chaos.remote import PipelineClient, RemoteError, run_audit
from lossproof.chaos.truth import read_truth, wiped_mark
from lossproof.children import die_with_parent
from lossproof.faults import write_faults

Progress = Callable[[str], None]
_HTTP = urllib3.PoolManager(maxsize=8, timeout=urllib3.Timeout(connect=2, read=5), retries=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def embedded_partitions_supported() -> bool:
    return "partitions" in config_mod.LogConfig.model_fields


@dataclass
class Proc(Faultable):
    """One child process, restartable; its output goes to ``logs/NAME-N.log``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    health_url: str | None = None
    # Removed before each start: what the last run of the process said of itself, which a restarted
    # one has not said yet (an agent's status file: the drain must not take the killed run's word).
    stale: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    paused: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True, timeout: float = 30.0) -> None:
        self.starts += 1
        if self.stale is not None:
            self.stale.unlink(missing_ok=True)
        with open(self.log_dir / f"{self.name}-{self.starts}.log", "wb") as log:
            # children die with the harness (PR_SET_PDEATHSIG), so an aborted run leaves no processes
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
        self.paused = False
        if wait and self.health_url:
            self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.returncode()}: {self.tail()}")
            try:
                if _HTTP.request("GET", f"{self.health_url}/healthz").status == 200:
                    return True
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.05)
        return False

    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def tail(self, n: int = 2000) -> str:
        p = self.log_dir / f"{self.name}-{self.starts}.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def kill9(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        self.proc.wait()
        self.paused = False

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        if self.paused:
            self.resume()
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()


@dataclass
class TopologySpec:
    agents: int = 3
    ingests: int = 2
    workers: int = 2
    tick_seconds: float = 0.1
    max_spool_bytes: int = 64 * 2**20
    max_batch_reports: int = 500
    replay_window_seconds: float = 3600.0
    fallback_after_seconds: float = 2.0
    append_timeout_seconds: float = 3.0
    # agents in their own network namespace, linked to the pipeline by a veth pair (scenario 9)
    netns: bool = False
    # "embedded", or "kafka": a 3-node local cluster (its brokers are faultable processes too)
    log: str = "embedded"
    # kafka: an existing `lossproof dev kafka` cluster directory to share (a fresh topic per
    # topology); empty: the topology starts its own cluster and removes it afterwards
    kafka_dir: str = ""
    # agents 0 and 1 run with one agent id (two hosts with the same host name), each with its own spool
    shared_agent_id: bool = False


@dataclass
class Topology:
    root: Path
    spec: TopologySpec = field(default_factory=TopologySpec)
    progress: Progress = lambda _m: None
    ingests: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    agents: list[Proc] = field(default_factory=list)
    fallback: Proc | None = None
    peak_rss: dict[str, int] = field(default_factory=dict)
    rss_samples: dict[tuple[str, int], list[tuple[float, int]]] = field(default_factory=dict)
    faults_injected: int = 0
    _sampler: threading.Thread | None = None
    _sampling: threading.Event = field(default_factory=threading.Event)
    _last_seq: dict[int, int] = field(default_factory=dict)
    net: AgentNet | None = None
    kafka: KafkaSide | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.root / "pipeline"
        self.fallback_dir = self.root / "fallback"
        self.log_dir = self.root / "logs"
        self.faults_file = self.root / "faults.json"
        self.key = config_mod.new_key()
        self.replay_key = config_mod.new_key()
        if self.spec.log == "kafka":
            self.kafka = KafkaSide(self.root, self.spec.kafka_dir)
        elif not embedded_partitions_supported():
            self.spec.ingests = 1
        self.partitions = self.spec.ingests

    @property
    def brokers(self) -> list[Broker]:
        return self.kafka.brokers if self.kafka is not None else []

    # -- setup ----------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        # The children run the same lossproof as the harness, whatever else is installed.
        src = str(Path(lossproof.__file__).resolve().parents[1])
        path = os.pathsep.join([src, *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])])
        return {
            **os.environ,
            "PYTHONPATH": path,
            "LOSSPROOF_FAULTS_FILE": str(self.faults_file),
            "LOSSPROOF_LEDGER_REPLAY_GRACE_SECONDS": "1",
            "LOSSPROOF_SERVER_APPEND_TIMEOUT_SECONDS": str(self.spec.append_timeout_seconds),
            **({"LOSSPROOF_LOG_PARTITIONS": str(self.partitions)} if embedded_partitions_supported() else {}),
        }

    @property
    def url(self) -> str:
        return self.ingests[0].health_url or ""

    @property
    def log_path(self) -> Path:
        cfg = config_mod.load(self.data_dir, env=self.env())
        return cfg.path(cfg.log.dir)

    def set_faults(self, faults: dict[str, Any]) -> None:
        write_faults(str(self.faults_file), faults)

    def start(self) -> None:
        for d in (self.data_dir, self.fallback_dir, self.log_dir, self.root / "agents"):
            d.mkdir(parents=True, exist_ok=True)
        self.set_faults({})
        cfg, _ = config_mod.init_data_dir(self.data_dir, self.key)
        cfg.replay.key_hashes.append(config_mod.hash_key(self.replay_key))
        if self.kafka is not None:
            self.progress("starting the 3-node Kafka cluster" if self.kafka.owned else "Kafka: a fresh topic")
            cfg.log.backend = "kafka"
            cfg.log.kafka = self.kafka.start()
        config_mod.save(cfg)
        env = self.env()
        exe = [sys.executable, "-m", "lossproof"]
        host = "127.0.0.1"
        if self.spec.netns:
            self.net = AgentNet()
            self.net.create()
            host = self.net.host_ip
        for i in range(self.spec.ingests):
            port = free_port()
            # the product's ingest, its log writer wrapped so scenario 5 can make it lie (early_ack)
            argv = [sys.executable, "-m", "lossproof.chaos.early_ack"]
            argv += ["--data-dir", str(self.data_dir), "--port", str(port), "--host", host]
            p = Proc(f"ingest{i}", argv, env, self.log_dir, f"http://{host}:{port}")
            self.ingests.append(p)
            p.start()
        for i in range(self.spec.workers):
            argv = [*exe, "worker", "--data-dir", str(self.data_dir), "--http-port", "0"]
            p = Proc(f"worker{i}", argv, env, self.log_dir)
            self.workers.append(p)
            p.start()
        fport = free_port()
        fargv = [
            *exe,
            "fallback",
            "--data-dir",
            str(self.fallback_dir),
            "--port",
            str(fport),
            "--api-key",
            self.key,
        ]
        self.fallback = Proc("fallback", fargv, env, self.log_dir, f"http://127.0.0.1:{fport}")
        self.fallback.start()
        for i in range(self.spec.agents):
            self.agents.append(self._agent(i, env))
        for a in self.agents:
            a.start()
        self.wait_agents_started()
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._sampler.start()
        log = (
            f"Kafka topic {self.kafka.topic} on {len(self.brokers)} brokers"
            if self.kafka is not None
            else f"embedded log, {self.partitions} partitions"
        )
        self.progress(
            f"topology up: {self.spec.ingests} ingest, {self.spec.workers} worker, 1 fallback, "
            f"{self.spec.agents} agents, {log} in {self.root}"
        )

    def _agent(self, i: int, env: dict[str, str]) -> Proc:
        d = self.root / "agents" / f"a{i}"
        d.mkdir(parents=True, exist_ok=True)
        assert self.fallback is not None
        s = self.spec
        cfg: dict[str, Any] = {
            "agent_id": self.agent_id(i),
            "api_key": self.key,
            "primary_url": self.ingests[i % len(self.ingests)].health_url,
            "fallback_urls": [self.fallback.health_url],
            "spool_dir": str(d / "spool"),
            "interval_seconds": 3600.0,
            "max_spool_bytes": s.max_spool_bytes,
            "max_batch_reports": s.max_batch_reports,
            "replay_window_seconds": s.replay_window_seconds,
            "spool_segment_bytes": 64 * 1024,
            "max_in_flight": 2,
            "request_timeout_seconds": 5.0,
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 0.5,
            "fallback_after_seconds": s.fallback_after_seconds,
            "probe_interval_seconds": 1.0,
            "statsd_port": 0,
            "metrics_port": 0,
            "collect_host": False,
            "shutdown_drain_seconds": 2.0,
            "log_level": "WARNING",
            "labels": {"chaos": "1"},
        }
        (d / "agent.toml").write_text(tomli_w.dumps(cfg))
        argv = [
            *(self.net.exec_prefix() if self.net else []),
            sys.executable,
            "-m",
            "lossproof.chaos.driver",
            "--config",
            str(d / "agent.toml"),
            "--tick",
            str(s.tick_seconds),
            "--status",
            str(d / "status.json"),
        ]
        return Proc(f"agent{i}", argv, env, self.log_dir, stale=d / "status.json")

    def agent_id(self, i: int) -> str:
        if self.spec.shared_agent_id and i == 1:
            return "chaos-0"
        return f"chaos-{i}"

    def wait_agents_started(self, timeout: float = 60.0, which: list[int] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.status(i).get("last_seq", 0) for i in (which or range(len(self.agents)))):
                return
            for a in self.agents:
                if not a.alive():
                    raise RuntimeError(f"{a.name} exited with {a.returncode()}: {a.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"agents not producing after {timeout}s")

    def wait_stored(self, timeout: float = 30.0) -> None:
        """Until the pipeline has stored something from every agent."""
        client = PipelineClient(self.url, self.key)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ids = {self.agent_id(i) for i in range(len(self.agents))}
                if all(client.ledger(agent).get("stored") for agent in ids):
                    return
            except RemoteError:
                pass
            time.sleep(0.2)

    def spool_dirs(self) -> list[tuple[str, Path]]:
        """Each agent's current spool."""
        return [(self.agent_id(i), self.root / "agents" / f"a{i}" / "spool") for i in range(len(self.agents))]

    def all_spools(self) -> list[tuple[str, Path, str]]:
        """Every spool an agent has had, wiped ones included, as (agent id, dir, name for the table)."""
        out: list[tuple[str, Path, str]] = []
        for i, (agent, d) in enumerate(self.spool_dirs()):
            for old in sorted(d.parent.glob("wiped-*/spool"), key=lambda p: int(p.parent.name[6:])):
                out.append((agent, old, f"{agent} a{i}/{old.parent.name}"))
            out.append((agent, d, f"{agent} a{i}"))
        return out

    def wipe_spool(self, i: int) -> Path:
        """Take agent ``i``'s spool away (it must be stopped): for the agent it is as if the disk had
        been wiped, and the audit still reads it (with its marker journal) as a spool that is gone."""
        d = self.root / "agents" / f"a{i}"
        k = 1 + sum(1 for _ in d.glob("wiped-*"))
        dest = d / f"wiped-{k}"
        dest.mkdir()
        # the status file goes too: it is the old process's, and must not pass for the new one's
        for name in ("spool", f"spool{journal.SUFFIX}", "spool.agent_id", "status.json"):
            if (d / name).exists():
                os.rename(d / name, dest / name)
        wiped_mark(dest / "spool").write_text(f"wiped from agent a{i} at {time.time():.3f}\n")
        return dest / "spool"

    def status(self, i: int) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.root / "agents" / f"a{i}" / "status.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def processes(self) -> list[Proc]:
        return [*self.ingests, *self.workers, *([self.fallback] if self.fallback else []), *self.agents]

    # -- RSS ------------------------------------------------------------------------------------------

    def _sample(self) -> None:
        while not self._sampling.wait(0.5):
            now = time.monotonic()
            targets: list[Proc | Broker] = [*self.processes(), *self.brokers]
            for p in targets:
                pid = p.pid
                if pid is None or not p.alive():
                    continue
                try:
                    rss = int(psutil.Process(pid).memory_info().rss)
                except psutil.Error:
                    continue
                role = p.name.rstrip("0123456789")
                self.peak_rss[role] = max(self.peak_rss.get(role, 0), rss)
                self.rss_samples.setdefault((role, pid), []).append((now, rss))

    def rss_growth(self) -> dict[str, int]:
        """Per role, the largest growth of one process's RSS from the first to the last quarter of its
        life (peak against peak): how a soak shows memory that keeps growing. A restarted process is a
        new process (a new pid); one that lived less than a minute tells nothing and is left out."""
        out: dict[str, int] = {}
        for (role, _pid), samples in list(self.rss_samples.items()):
            if len(samples) < 8 or samples[-1][0] - samples[0][0] < 60:
                continue
            q = len(samples) // 4
            growth = max(r for _, r in samples[-q:]) - max(r for _, r in samples[:q])
            out[role] = max(out.get(role, growth), growth)
        return out

    # -- settling -------------------------------------------------------------------------------------

    def heal(self) -> None:
        """Clear faults; resume paused processes; restart any pipeline process that is down."""
        self.set_faults({})
        if self.net is not None:
            self.net.heal()
        if self.kafka is not None:
            self.kafka.heal()
        for p in self.processes():
            if p.paused:
                p.resume()
        for p in [*self.ingests, *self.workers, *([self.fallback] if self.fallback else [])]:
            if not p.alive():
                self.progress(f"restarting {p.name}")
                p.start(wait=False)
        for p in [*self.ingests, *([self.fallback] if self.fallback else [])]:
            if not p.wait_healthy(60):
                self.progress(f"warning: {p.name} not healthy after 60 s")

    def replay_fallback(self) -> int:
        argv = [
            sys.executable,
            "-m",
            "lossproof",
            "replay",
            "--from",
            str(self.fallback_dir),
            "--to",
            self.url,
            "--api-key",
            self.replay_key,
        ]
        with open(self.log_dir / "replay.log", "ab") as log:
            return subprocess.run(
                argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT, timeout=300
            ).returncode

    def drain(self, timeout: float = 90.0, keep_agents: bool = True) -> bool:
        """Heal, stop producing, replay the fallback, and wait until every agent holds nothing pending
        and the ledgers show nothing missing or delayed. Returns whether it settled in time."""
        self.heal()
        client = PipelineClient(self.url, self.key)
        deadline = time.monotonic() + timeout
        # first let the agents come back to the primary
        while time.monotonic() < deadline and keep_agents:
            if all(
                self.status(i).get("destination") == "primary" or not a.alive()
                for i, a in enumerate(self.agents)
            ):
                break
            time.sleep(0.2)
        for a in self.agents:
            a.signal(signal.SIGUSR1)
        rc = self.replay_fallback()
        if rc != 0:
            self.progress(f"warning: lossproof replay exited {rc} (see {self.log_dir / 'replay.log'})")
        idle_since: dict[int, float] = {}
        last_msg = 0.0
        remote_error = ""
        while time.monotonic() < deadline:
            pending = 0
            unsettled = 0
            for i, a in enumerate(self.agents):
                st = self.status(i)
                # a running agent without a status file has not opened its spool yet: not settled
                p = int(st.get("pending", 1 if not st else 0)) if a.alive() else 0
                pending += p
                inc = st.get("incarnation")
                try:
                    u = client.unsettled(
                        self.agent_id(i),
                        int(st.get("last_seq", 0)) if a.alive() else 0,
                        incarnation=inc if isinstance(inc, str) else None,
                    )
                except RemoteError as e:
                    u = 1
                    remote_error = str(e)
                unsettled += u
                # A hole the pipeline found is asked for in a response: give an idle agent a request.
                if a.alive() and p == 0 and u > 0:
                    since = idle_since.setdefault(i, time.monotonic())
                    if time.monotonic() - since > 2.0:
                        a.signal(signal.SIGUSR2)
                        time.sleep(self.spec.tick_seconds * 2)
                        a.signal(signal.SIGUSR1)
                        idle_since[i] = time.monotonic()
                else:
                    idle_since.pop(i, None)
            if pending == 0 and not keep_agents:
                # the agents are gone: only let the workers catch up with what the log holds
                time.sleep(3.0)
                self.progress("agents stopped; nothing pending in their spools")
                return True
            if pending == 0 and unsettled == 0:
                self.progress("drained: nothing pending, nothing missing or delayed")
                return True
            if time.monotonic() - last_msg > 5:
                last_msg = time.monotonic()
                self.progress(
                    f"draining: {pending} pending in agents, {unsettled} missing/delayed in ledgers"
                    + (f" (last query error: {remote_error[:200]})" if remote_error else "")
                )
                remote_error = ""
            time.sleep(0.3)
        self.progress("warning: did not drain in time")
        return False

    def stop_agents(self) -> None:
        for a in self.agents:
            a.stop()

    def audit(self) -> AuditReport:
        """Stop the agents (their spools are then at rest) and audit."""
        self.stop_agents()
        truths = [read_truth(agent, d, name) for agent, d, name in self.all_spools()]
        return run_audit(PipelineClient(self.url, self.key), truths)

    def close(self) -> None:
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join(2)
        for p in reversed(self.processes()):
            p.stop(10)
        if self.kafka is not None:
            self.kafka.close()
        if self.net is not None:
            self.net.destroy()

    def ingest_answers(self) -> dict[str, float]:
        """Native requests by HTTP status, summed over the running ingest processes (since their start)."""
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[str, float] = {}
        for p in self.ingests:
            try:
                r = _HTTP.request("GET", f"{p.health_url}/metrics")
            except urllib3.exceptions.HTTPError:
                continue
            for fam in text_string_to_metric_families(r.data.decode()):
                if fam.name != "lossproof_ingest_requests":
                    continue
                for smp in fam.samples:
                    if smp.name.endswith("_total") and smp.labels.get("protocol") == "native":
                        st = smp.labels.get("status", "?")
                        out[st] = out.get(st, 0.0) + smp.value
        return out

    def counters(self) -> dict[str, int]:
        for i in range(len(self.agents)):
            seq = int(self.status(i).get("last_seq", 0))
            self._last_seq[i] = max(self._last_seq.get(i, 0), seq)
        return {"created": sum(self._last_seq.values())}
