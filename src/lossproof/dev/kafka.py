"""A real Apache Kafka cluster on 127.0.0.1 for development and tests: ``lossproof dev kafka ...``.

The broker jars come from Maven Central (``org.apache.kafka:kafka_2.13`` and its runtime
dependencies, copied by ``mvn dependency:copy-dependencies`` from a pom generated in the cache
directory, plus the log4j2 binding for slf4j) and are cached in
``~/.cache/lossproof/kafka/<version>/libs`` (``LOSSPROOF_KAFKA_CACHE`` overrides the base).

Each node is a combined KRaft broker+controller started as ``java -cp 'libs/*' kafka.Kafka
server.properties`` with its own ports and data directory. Everything (configs, data, logs, pids,
``cluster.json``) stays under the cluster directory (default ``.lossproof-dev/kafka``).

The settings favour fast failure detection on a laptop (broker session 6 s, ISR shrink after 10 s,
few partitions for ``__consumer_offsets``): a killed broker leaves a window of about 10 s in
which ``acks=all`` appends to the partitions it followed wait (and may time out).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from lossproof.durable import fdatasync_path, fsync_dir, make_dirs, write_atomic

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"  # the log4j version kafka_2.13 4.1.x depends on
DEFAULT_DIR = Path(".lossproof-dev/kafka")
DEFAULT_PORT = 19092
STATE_FILE = "cluster.json"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>lossproof.dev</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class DevKafkaError(Exception):
    """A problem with the local dev cluster (one line, for the CLI)."""


# --- jars --------------------------------------------------------------------------------------------


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    base = os.environ.get("LOSSPROOF_KAFKA_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "lossproof" / "kafka"
    return root / version


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_dir(version) / "libs"


def fetch(version: str = KAFKA_VERSION, *, quiet: bool = True) -> Path:
    """Make sure the broker jars of ``version`` are in the cache; returns the libs directory."""
    cdir = cache_dir(version)
    libs = cdir / "libs"
    marker = cdir / "libs.complete"
    if marker.exists() and libs.is_dir():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevKafkaError("mvn (Apache Maven) not found: install it (e.g. apt-get install maven)")
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION), encoding="utf-8")
    tmp = cdir / "libs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        *(["-q"] if quiet else []),
        "-f",
        str(cdir / "pom.xml"),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={tmp}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip().splitlines()
        raise DevKafkaError(f"mvn failed ({proc.returncode}): {' | '.join(out[-5:])}")
    if not any(tmp.glob(f"kafka_2.13-{version}.jar")):
        raise DevKafkaError(f"mvn did not produce kafka_2.13-{version}.jar in {tmp}")
    # mvn writes without fsync: the marker must not outlive a power cut that the jars did not.
    for jar in tmp.iterdir():
        fdatasync_path(jar)
    fsync_dir(tmp)
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    fsync_dir(cdir)
    write_atomic(marker, (version + "\n").encode())
    return libs


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise DevKafkaError(
            "java not found: install a JRE 17+ (e.g. apt-get install openjdk-17-jre-headless)"
        )
    return found


# --- cluster -----------------------------------------------------------------------------------------


@dataclass
class NodeSpec:
    id: int
    broker_port: int
    controller_port: int


@dataclass
class NodeStatus:
    id: int
    broker_port: int
    pid: int | None
    running: bool


def _free_port(taken: set[int] | None = None) -> int:
    """A free port below the kernel's ephemeral range, not in ``taken``. A node keeps its ports across
    restarts, and while it is down any outgoing connection on the machine may be given a port of that
    range (a restarted broker then failed to bind, 1 run in ~30 of the test suite)."""
    taken = taken or set()
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        if port not in taken and _port_free(port):
            return port
    while True:  # a machine with nothing free down there: any free port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port


class _PortClaims:
    """Ports picked for dev clusters, claimed machine-wide (one file per port in the temp directory).

    A port is free to bind while its node is down (killed, restarting, between tests), and another
    cluster created then must not take it: that node would fail to start with a BindException (seen
    once in a CI run, two test workers each with its own cluster). A claim is stale, and taken over,
    once its cluster lists other ports or its creator died before writing the cluster's state.
    """

    def __init__(self, owner: Path) -> None:
        self.owner = owner
        self.dir = Path(tempfile.gettempdir()) / "lossproof-dev-kafka-ports"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def held_elsewhere(self, port: int) -> bool:
        """True if another live cluster (or one being created) claims ``port``. Call under ``locked``."""
        try:
            claim = json.loads((self.dir / str(port)).read_text(encoding="utf-8"))
            owner, pid = Path(claim["owner"]), int(claim["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if owner == self.owner:
            return False
        try:
            state = json.loads((owner / STATE_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return _pid_alive(pid, "")  # still being created by a live process
        except (OSError, ValueError):
            return False
        ports = {p for n in state.get("nodes", []) for p in (n.get("broker_port"), n.get("controller_port"))}
        return port in ports

    def claim(self, port: int) -> None:
        doc = {"owner": str(self.owner), "pid": os.getpid()}
        (self.dir / str(port)).write_text(json.dumps(doc), encoding="utf-8")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` is a live (non-zombie) process whose command line contains ``marker``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z" and marker in cmdline


def new_cluster_id(random_uuid: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64, never starting with "-", which the
    storage tool's command line would take for an option (Kafka's own Uuid.randomUuid avoids it too)."""
    while True:
        cid = base64.urlsafe_b64encode(random_uuid().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class DevCluster:
    """A local KRaft cluster of 1 or 3 combined nodes, living entirely in ``directory``."""

    def __init__(
        self, directory: Path = DEFAULT_DIR, version: str = KAFKA_VERSION, *, detach: bool = True
    ) -> None:
        self.directory = Path(directory).absolute()
        self.version = version
        # detach: nodes get their own session, so a Ctrl-C in the terminal does not stop them (the
        # CLI); tests keep them in their process group instead.
        self.detach = detach
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- state --
    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def _state(self) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return doc

    def nodes(self) -> list[NodeSpec]:
        st = self._state()
        if st is None:
            raise DevKafkaError(f"no cluster in {self.directory} (run `lossproof dev kafka up` first)")
        return [NodeSpec(**n) for n in st["nodes"]]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.broker_port}" for n in self.nodes())

    def node_dir(self, node: int) -> Path:
        return self.directory / f"node-{node}"

    def _pid(self, node: int) -> int | None:
        try:
            return int((self.node_dir(node) / "pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _marker(self, node: int) -> str:
        return str(self.node_dir(node) / "server.properties")

    def running(self, node: int) -> bool:
        child = self._children.get(node)
        if child is not None and child.pid == self._pid(node):
            return child.poll() is None  # our own child: exact (no /proc race while java execs)
        pid = self._pid(node)
        return pid is not None and _pid_alive(pid, self._marker(node))

    def status(self) -> list[NodeStatus]:
        return [NodeStatus(n.id, n.broker_port, self._pid(n.id), self.running(n.id)) for n in self.nodes()]

    # -- lifecycle --
    def up(
        self, nodes: int = 3, *, port: int = DEFAULT_PORT, heap: str = "512m", timeout: float = 120.0
    ) -> str:
        """Create (first time) and start every node that is not running; wait until healthy.

        ``port``: the first broker port (brokers use port, port+1, ...; controllers port+100, ...);
        0 picks free ports. Returns the bootstrap servers.
        """
        st = self._state()
        if st is None:
            self._create(nodes, port)
        elif len(st["nodes"]) != nodes:
            raise DevKafkaError(
                f"{self.directory} holds a {len(st['nodes'])}-node cluster; `down` and remove it to change"
            )
        for n in self.nodes():
            if not self.running(n.id):
                self.start_node(n.id, heap=heap)
        self.wait_healthy(timeout)
        return self.bootstrap

    def _create(self, nodes: int, port: int) -> None:
        if nodes not in (1, 3):
            raise DevKafkaError("--nodes must be 1 or 3")
        libs = fetch(self.version)
        make_dirs(self.directory)
        specs: list[NodeSpec] = []
        picked: set[int] = set()
        for i in range(1, nodes + 1):
            if port == 0:
                bp = self._pick_port(picked)
                cp = self._pick_port(picked)
            else:
                bp, cp = port + i - 1, port + 100 + i - 1
                for p in (bp, cp):
                    if not _port_free(p):
                        raise DevKafkaError(
                            f"port {p} is in use (choose another --port, or 0 for free ports)"
                        )
            specs.append(NodeSpec(i, bp, cp))
        cluster_id = new_cluster_id()
        voters = ",".join(f"{n.id}@127.0.0.1:{n.controller_port}" for n in specs)
        rf = min(3, nodes)
        write_atomic(self.directory / "log4j2.properties", _LOG4J2.encode())
        formats: list[tuple[int, subprocess.Popen[str]]] = []
        for n in specs:
            ndir = self.node_dir(n.id)
            make_dirs(ndir / "data")
            props = {
                "process.roles": "broker,controller",
                "node.id": n.id,
                "controller.quorum.voters": voters,
                "listeners": f"PLAINTEXT://127.0.0.1:{n.broker_port},CONTROLLER://127.0.0.1:{n.controller_port}",
                "advertised.listeners": f"PLAINTEXT://127.0.0.1:{n.broker_port}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "log.dirs": str(ndir / "data"),
                "num.partitions": 1,
                "default.replication.factor": rf,
                "min.insync.replicas": 1 if nodes == 1 else 2,
                "unclean.leader.election.enable": "false",
                "auto.create.topics.enable": "false",
                "offsets.topic.replication.factor": rf,
                "offsets.topic.num.partitions": 5,
                "transaction.state.log.replication.factor": rf,
                "transaction.state.log.min.isr": 1 if nodes == 1 else 2,
                "share.coordinator.state.topic.replication.factor": rf,
                "share.coordinator.state.topic.min.isr": 1 if nodes == 1 else 2,
                "group.initial.rebalance.delay.ms": 0,
                # fast failure detection on a dev machine
                "broker.session.timeout.ms": 6000,
                "broker.heartbeat.interval.ms": 1000,
                "replica.lag.time.max.ms": 10000,
                "group.min.session.timeout.ms": 3000,
                # big reports (the ingest API accepts up to 16 MiB bodies)
                "message.max.bytes": 32 * 2**20,
                "replica.fetch.max.bytes": 32 * 2**20,
                # a small machine
                "num.network.threads": 2,
                "num.io.threads": 4,
                "background.threads": 4,
                "num.recovery.threads.per.data.dir": 1,
                "log.cleaner.dedupe.buffer.size": 16 * 2**20,
            }
            text = "".join(f"{k}={v}\n" for k, v in props.items())
            # Durable before the node is formatted against it: after a power cut a cluster
            # directory must never hold an empty or torn config of a formatted node.
            write_atomic(ndir / "server.properties", text.encode())
            formats.append(
                (
                    n.id,
                    subprocess.Popen(
                        [
                            java_bin(),
                            "-Xmx256m",
                            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
                            "-cp",
                            f"{libs}/*",
                            "kafka.tools.StorageTool",
                            "format",
                            "-t",
                            cluster_id,
                            "-c",
                            str(ndir / "server.properties"),
                            "--ignore-formatted",
                        ],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    ),
                )
            )
        for node_id, proc in formats:  # formatted in parallel: each is a JVM start
            out, _ = proc.communicate()
            if proc.returncode != 0:
                # once more, alone (formatting is idempotent with --ignore-formatted)
                retry = subprocess.run(proc.args, capture_output=True, text=True, check=False)
                if retry.returncode != 0:
                    text = (out + "\n" + retry.stdout + retry.stderr).strip()
                    causes = [ln.strip() for ln in text.splitlines() if "Exception" in ln or "Error" in ln]
                    (self.node_dir(node_id) / "format.log").write_text(text + "\n", encoding="utf-8")
                    raise DevKafkaError(
                        f"formatting node {node_id} failed ({' | '.join(causes[:3]) or text[-300:]}); "
                        f"full output in {self.node_dir(node_id) / 'format.log'}"
                    )
            # The storage tool writes bootstrap.checkpoint without fsync (its name reaches the disk
            # with a later directory sync, its bytes need not): after a power cut the node would not
            # start ("No FeatureLevelRecord for metadata.version", found on the power-cut fs).
            _sync_tree(self.node_dir(node_id) / "data")
        state = {
            "version": self.version,
            "cluster_id": cluster_id,
            "libs": str(libs),
            "nodes": [asdict(n) for n in specs],
        }
        # Written last and durably (fsync, rename, fsync of the directory): a power cut leaves either
        # no cluster.json (`up` creates the cluster again) or one naming fully formatted nodes.
        write_atomic(self.state_path, (json.dumps(state, indent=2) + "\n").encode())

    def _pick_port(self, picked: set[int]) -> int:
        """A free port no other dev cluster on this machine claims, claimed for this one."""
        claims = _PortClaims(self.directory)
        with claims.locked():
            while True:
                port = _free_port(picked)
                picked.add(port)
                if not claims.held_elsewhere(port):
                    claims.claim(port)
                    return port

    def start_node(self, node: int, *, heap: str = "512m") -> int:
        """Start node ``node`` (1-based) if it is not running; returns its pid."""
        st = self._state()
        if st is None:
            raise DevKafkaError(f"no cluster in {self.directory}")
        if node not in {n.id for n in self.nodes()}:
            raise DevKafkaError(f"no node {node} in {self.directory}")
        pid = self._pid(node)
        if pid is not None and self.running(node):
            return pid
        libs = Path(st["libs"])
        if not libs.is_dir():
            libs = fetch(st["version"])
        ndir = self.node_dir(node)
        log = open(ndir / "server.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [
                    java_bin(),
                    f"-Xmx{heap}",
                    "-Xms128m",
                    "-XX:+UseG1GC",
                    "-XX:MaxGCPauseMillis=20",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
                    "-cp",
                    f"{libs}/*",
                    "kafka.Kafka",
                    self._marker(node),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.detach,
                cwd=ndir,
            )
        finally:
            log.close()
        self._children[node] = proc
        (ndir / "pid").write_text(f"{proc.pid}\n")
        return proc.pid

    def kill(self, node: int, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` (default SIGKILL) to node ``node``; True if it was running. Waits for its death."""
        pid = self._pid(node)
        if pid is None or not self.running(node):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        self._wait_dead(node, pid, 30.0 if sig != signal.SIGKILL else 10.0)
        return True

    def _wait_dead(self, node: int, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        child = self._children.get(node)
        while time.monotonic() < deadline:
            if child is not None and child.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(0.05)
            if not _pid_alive(pid, self._marker(node)):
                self._children.pop(node, None)
                return True
            time.sleep(0.05)
        return False

    def down(self, timeout: float = 30.0) -> None:
        """Stop every node: SIGTERM (a clean shutdown), SIGKILL whatever still runs after ``timeout``."""
        if self._state() is None:
            return
        pids = {n.id: self._pid(n.id) for n in self.nodes() if self.running(n.id)}
        for pid in pids.values():
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node, pid in pids.items():
            if pid is not None and not self._wait_dead(node, pid, max(0.1, deadline - time.monotonic())):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_dead(node, pid, 10.0)

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """Wait until the metadata lists every node as a broker and the controller quorum has a leader."""
        from confluent_kafka.admin import AdminClient

        specs = self.nodes()
        want = {n.id for n in specs}
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0, "logger": _quiet()})
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for n in specs:
                if not self.running(n.id):
                    tail = _tail(self.node_dir(n.id) / "server.log")
                    raise DevKafkaError(f"node {n.id} exited while starting:\n{tail}")
            try:
                md = admin.list_topics(timeout=2)
                have = set(md.brokers)
                if want <= have and md.controller_id in want:
                    return
                last = f"brokers {sorted(have)}, controller {md.controller_id}"
            except Exception as e:  # KafkaException while the nodes start
                last = str(e)
            time.sleep(0.2)
        raise DevKafkaError(f"cluster not healthy after {timeout:.0f}s: {last}")


def _sync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (``root`` included)."""
    for d, _dirs, files in os.walk(root):
        for name in files:
            fdatasync_path(Path(d) / name)
        fsync_dir(Path(d))


def _quiet() -> Any:
    import logging

    lg = logging.getLogger("lossproof.dev.kafka.librdkafka")
    lg.setLevel(logging.CRITICAL)
    return lg


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# --- CLI ---------------------------------------------------------------------------------------------


@click.group("dev")
def dev_group() -> None:
    """Local development services (a real Kafka cluster on 127.0.0.1)."""


@dev_group.group("kafka")
def kafka_dev() -> None:
    """A local Apache Kafka (KRaft) cluster of 1 or 3 nodes; everything stays in --dir."""


_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DIR,
    show_default=True,
    envvar="LOSSPROOF_DEV_KAFKA_DIR",
    help="Where the cluster's configs, data, logs and pids live.",
)


def _fail(e: DevKafkaError) -> click.ClickException:
    return click.ClickException(str(e))


def _existing(directory: Path) -> DevCluster:
    """The cluster in ``directory``, or a one-line error: there is none, or its cluster.json is
    damaged (checked here so that no command goes on with nonsense)."""
    cluster = DevCluster(directory)
    path = cluster.state_path
    if not path.is_file():
        raise click.ClickException(f"no cluster in {cluster.directory} (no {STATE_FILE}; see `dev kafka up`)")
    damaged = f"{path} is damaged: stop its java processes, remove {cluster.directory} and run `up`"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        nodes = doc["nodes"]
        specs = [NodeSpec(**n) for n in nodes]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
        raise click.ClickException(f"{damaged} ({type(e).__name__}: {e})".splitlines()[0]) from None
    if (
        not isinstance(doc.get("libs"), str)
        or not isinstance(doc.get("version"), str)
        or not specs
        or not all(type(x) is int and x >= 0 for n in specs for x in (n.id, n.broker_port, n.controller_port))
    ):
        raise click.ClickException(damaged)
    return cluster


@kafka_dev.command("fetch")
def fetch_cmd() -> None:
    """Download the broker jars into the cache (Maven Central) so `up` needs no network."""
    try:
        libs = fetch()
    except DevKafkaError as e:
        raise _fail(e) from None
    click.echo(str(libs))


@kafka_dev.command("up")
@click.option("--nodes", type=click.Choice(["1", "3"]), default="3", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(0, 65000),
    default=DEFAULT_PORT,
    show_default=True,
    help="First broker port (controllers at port+100); 0 picks free ports.",
)
@click.option("--heap", default="512m", show_default=True, help="Java heap of each node.")
@_dir_option
def up_cmd(nodes: str, port: int, heap: str, directory: Path) -> None:
    """Create (first time) and start the cluster; prints the bootstrap servers once healthy."""
    cluster = _existing(directory) if (directory / STATE_FILE).exists() else DevCluster(directory)
    try:
        click.echo(cluster.up(int(nodes), port=port, heap=heap))
    except DevKafkaError as e:
        raise _fail(e) from None


@kafka_dev.command("down")
@_dir_option
def down_cmd(directory: Path) -> None:
    """Stop every node (SIGTERM, then SIGKILL after 30 s). Data stays; `up` starts it again."""
    try:
        _existing(directory).down()
    except DevKafkaError as e:
        raise _fail(e) from None


@kafka_dev.command("kill")
@click.argument("node", type=int)
@_dir_option
def kill_cmd(node: int, directory: Path) -> None:
    """kill -9 node NODE (1-based). `up` restarts it."""
    cluster = _existing(directory)
    try:
        if node not in {n.id for n in cluster.nodes()}:
            ids = ", ".join(str(n.id) for n in cluster.nodes())
            raise click.ClickException(f"no node {node} in {cluster.directory} (nodes: {ids})")
        if not cluster.kill(node):
            click.echo(f"node {node} was not running", err=True)
    except DevKafkaError as e:
        raise _fail(e) from None


@kafka_dev.command("status")
@_dir_option
def status_cmd(directory: Path) -> None:
    """One line per node: id, broker address, pid, running or stopped."""
    cluster = _existing(directory)
    try:
        for s in cluster.status():
            state = "running" if s.running else "stopped"
            click.echo(f"node {s.id}  127.0.0.1:{s.broker_port}  pid {s.pid or '-'}  {state}")
        click.echo(f"bootstrap: {cluster.bootstrap}")
    except DevKafkaError as e:
        raise _fail(e) from None
