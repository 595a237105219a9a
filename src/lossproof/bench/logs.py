"""``lossproof bench logs``: the ingest benchmark through each log, side by side, in one run.

For each log (the embedded log, a 1-node Kafka cluster, a 3-node cluster with RF 3 and min ISR 2;
the clusters are started here with the dev-kafka code, in temp dirs, one at a time) and each count
of ingest processes (``server.ingest_processes``, 1 and 2 by default), a fresh ``lossproof up`` is
started and driven with the native-protocol load of ``bench ingest`` (max load, drain, half load).
Reported: acked points/s at max load, ack latency at half load, and the CPU seconds of the ingest
processes, the worker, the brokers and this load generator during the max-load phase (psutil), so
the Kafka/embedded ratio can be given per ingest CPU-second ("at equal CPU") besides raw; then how
acked points/s grows from 1 to 2 ingest processes. One JSON line at the end holds everything.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from lossproof.cliutil import finite_float

LOGS = {"embedded": 0, "kafka1": 1, "kafka3": 3}
LABELS = {"embedded": "embedded log", "kafka1": "Kafka 1 node", "kafka3": "Kafka 3 nodes RF3"}
TARGET = 0.8


@dataclass
class Row:
    log: str
    ingest_processes: int
    acked_points_s: float
    max_p50_ms: float
    max_p99_ms: float
    half_points_s: float
    half_p50_ms: float
    half_p99_ms: float
    # CPU seconds during the max-load phase, by process role
    cpu_s: dict[str, float]
    seconds: float
    errors: dict[str, int]
    half_errors: dict[str, int]
    drained_s: float
    # the machine during the max-load phase: busy cores in all, and of them not ours
    busy_cores: float
    other_cores: float
    load1_before: float
    load1_after: float
    acked_points: int = 0
    ingest_split: list[float] = field(default_factory=list)  # CPU s of each ingest process

    @property
    def points_per_ingest_cpu_s(self) -> float:
        cpu = self.cpu_s.get("ingest", 0.0)
        return self.acked_points / cpu if cpu > 0 else math.nan

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["points_per_ingest_cpu_s"] = self.points_per_ingest_cpu_s
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _busy() -> float:
    import psutil  # type: ignore[import-untyped]  # no stubs installed; calls are plain

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


@dataclass
class CpuProbe:
    """CPU seconds so far of the pipeline's processes by role (ingest, worker), of the brokers
    (kafka) and of this process (client), plus the whole machine's busy seconds (machine)."""

    up_pid: int
    broker_pids: list[int] = field(default_factory=list)
    _procs: dict[int, Any] = field(default_factory=dict)

    def _proc(self, pid: int) -> Any:
        import psutil

        if pid not in self._procs:
            self._procs[pid] = psutil.Process(pid)
        return self._procs[pid]

    def __call__(self) -> dict[str, float]:
        import psutil

        out = {"ingest": 0.0, "worker": 0.0, "up": 0.0, "kafka": 0.0, "client": 0.0}
        procs: list[tuple[str, int]] = [("up", self.up_pid), ("client", os.getpid())]
        procs += [("kafka", pid) for pid in self.broker_pids]
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.up_pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    cmd = child.cmdline()
                    role = next((r for r in ("ingest", "worker") if r in cmd), "up")
                    procs.append((role, child.pid))
        for role, pid in procs:
            with contextlib.suppress(psutil.Error):
                t = self._proc(pid).cpu_times()
                out[role] += t.user + t.system
                if role == "ingest":
                    out[f"ingest@{pid}"] = t.user + t.system
        out["machine"] = _busy()
        return out


@contextlib.contextmanager
def kafka_cluster(
    nodes: int, root: Path, heap: str, partitions: int, progress: Callable[[str], None]
) -> Iterator[tuple[Any, list[int]]]:
    """A fresh ``nodes``-node dev cluster in ``root``; yields (a factory of fresh topic configs,
    the broker pids). Stopped and removed on exit."""
    from lossproof.config import KafkaLogConfig
    from lossproof.dev.kafka import DevCluster, DevKafkaError
    from lossproof.log.base import LogError
    from lossproof.log.kafka.admin import create_topic

    directory = root / f"kafka{nodes}"
    cluster = DevCluster(directory, detach=False)
    try:
        progress(f"starting a {nodes}-node Kafka cluster in {directory} …")
        started = time.monotonic()
        try:
            cluster.up(nodes, port=0, heap=heap, timeout=180)
        except DevKafkaError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise click.ClickException(
                f"the {nodes}-node Kafka cluster could not be started: {first}"
            ) from None
        progress(f"{nodes}-node cluster up in {time.monotonic() - started:.0f}s: {cluster.bootstrap}")
        pids = [s.pid for s in cluster.status() if s.pid is not None]

        def new_topic() -> KafkaLogConfig:
            from confluent_kafka.admin import AdminClient

            cfg = KafkaLogConfig(
                bootstrap_servers=cluster.bootstrap,
                topic=f"bench-{uuid.uuid4().hex[:10]}",
                partitions=partitions,
                replication_factor=min(3, nodes),
                min_insync_replicas=1 if nodes == 1 else 2,
                unsafe=nodes == 1,
            )
            try:
                create_topic(AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0}), cfg)
            except LogError as e:
                raise click.ClickException(
                    f"Kafka at {cluster.bootstrap}: cannot create the topic: {e}"
                ) from None
            return cfg

        yield new_topic, pids
    finally:
        with contextlib.suppress(Exception):
            cluster.down(timeout=20)
        shutil.rmtree(directory, ignore_errors=True)


def run_one(
    log: str,
    processes: int,
    root: Path,
    args: dict[str, Any],
    progress: Callable[[str], None],
    topic: Callable[[], Any] | None = None,
    broker_pids: list[int] | None = None,
) -> Row:
    """A fresh ``lossproof up`` on ``log`` with ``processes`` ingest processes, measured."""
    from lossproof import config as config_mod
    from lossproof.bench.ingest import measure
    from lossproof.bench.spawn import free_port, spawned_pipeline

    data = Path(tempfile.mkdtemp(prefix=f"{log}-{processes}-", dir=root))
    key = config_mod.new_key()
    cfg, _ = config_mod.init_data_dir(data, key)
    cfg.server.ingest_processes = processes
    if topic is None:
        cfg.log.partitions = processes
    else:
        cfg.log.backend = "kafka"
        cfg.log.kafka = topic()
    config_mod.save(cfg)
    pids: list[int] = []
    name = f"{LABELS[log]}, {processes} ingest process{'es' if processes > 1 else ''}"
    progress(f"== {name}")
    try:
        up_log = root / f"up-{log}-{processes}.log"
        with spawned_pipeline(data, free_port(), key, pids, log_file=up_log) as (url, _):
            probe = CpuProbe(pids[0], broker_pids or [])
            load_before = os.getloadavg()[0]
            m = measure(
                url,
                key,
                args["agents"],
                args["points"],
                args["duration"],
                args["encoding"],
                lambda msg: progress(f"{log}/{processes}: {msg}"),
                half_seconds=max(1.0, args["duration"] / 2),
                cpu=probe,
                warmup=args["warmup"],
            )
            load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(data, ignore_errors=True)
    full, half = m.full, m.half
    roles = {k: v for k, v in m.cpu_full.items() if k != "machine" and "@" not in k}
    ours = sum(roles.values())
    row = Row(
        log=log,
        ingest_processes=processes,
        acked_points_s=m.rate,
        max_p50_ms=full.quantile(0.5) * 1e3,
        max_p99_ms=full.quantile(0.99) * 1e3,
        half_points_s=half.acked_points / half.seconds if half.seconds else 0.0,
        half_p50_ms=half.quantile(0.5) * 1e3,
        half_p99_ms=half.quantile(0.99) * 1e3,
        cpu_s={k: round(v, 2) for k, v in roles.items()},
        ingest_split=sorted(
            (round(v, 2) for k, v in m.cpu_full.items() if k.startswith("ingest@")), reverse=True
        ),
        seconds=full.seconds,
        errors=full.errors,
        half_errors=half.errors,
        drained_s=m.drain,
        busy_cores=m.cpu_full.get("machine", 0.0) / full.seconds,
        other_cores=max(0.0, m.cpu_full.get("machine", 0.0) - ours) / full.seconds,
        load1_before=load_before,
        load1_after=load_after,
        acked_points=full.acked_points,
    )
    progress(
        f"{name}: {row.acked_points_s:,.0f} acked points/s, ingest CPU {row.cpu_s['ingest']:.1f}s "
        f"({' + '.join(f'{c:.1f}' for c in row.ingest_split)}) "
        f"({row.points_per_ingest_cpu_s:,.0f} points per ingest CPU-s); half load p50/p99 "
        f"{row.half_p50_ms:.0f}/{row.half_p99_ms:.0f} ms; machine busy {row.busy_cores:.2f} cores "
        f"(others {row.other_cores:.2f}), load {load_before:.1f}→{load_after:.1f}"
    )
    return row


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def summarize(rows: list[Row]) -> tuple[list[str], dict[str, Any]]:
    """The table, the ratios and the JSON document."""
    by = {(r.log, r.ingest_processes): r for r in rows}
    lines = [
        "log                  ingest  acked pts/s  pts/ingest-CPU-s  ingest/worker/kafka/client CPU s  "
        "half-load pts/s  p50/p99 ms (half)  p99 ms (max)  busy/others cores  load1",
        *(
            f"{LABELS[r.log]:<20} {r.ingest_processes:>6} {r.acked_points_s:>12,.0f} "
            f"{r.points_per_ingest_cpu_s:>17,.0f}  "
            f"{r.cpu_s['ingest']:>6.1f}/{r.cpu_s['worker']:.1f}/{r.cpu_s['kafka']:.1f}/{r.cpu_s['client']:.1f}"
            f"{'':<14} {r.half_points_s:>15,.0f} {r.half_p50_ms:>8.0f}/{r.half_p99_ms:<8.0f} "
            f"{r.max_p99_ms:>13.0f} {r.busy_cores:>9.2f}/{r.other_cores:.2f}  "
            f"{r.load1_before:.1f}→{r.load1_after:.1f}"
            for r in rows
        ),
    ]
    ratios: dict[str, dict[str, float]] = {}
    for (log, n), r in sorted(by.items()):
        base = by.get(("embedded", n))
        if log == "embedded" or base is None:
            continue
        k = f"{log}/embedded@{n}"
        ratios[k] = {
            "acked": _ratio(r.acked_points_s, base.acked_points_s),
            "per_ingest_cpu": _ratio(r.points_per_ingest_cpu_s, base.points_per_ingest_cpu_s),
        }
        lines.append(
            f"{LABELS[log]} / embedded, {n} ingest: acked points/s {ratios[k]['acked']:.2f}, "
            f"per ingest CPU-second {ratios[k]['per_ingest_cpu']:.2f} (target >= {TARGET})"
        )
    scaling: dict[str, float] = {}
    for log in LOGS:
        one, two = by.get((log, 1)), by.get((log, 2))
        if one and two:
            scaling[log] = _ratio(two.acked_points_s, one.acked_points_s)
            lines.append(
                f"{LABELS[log]}: 1 → 2 ingest processes: acked points/s x {scaling[log]:.2f} "
                f"(ingest CPU {one.cpu_s['ingest'] / one.seconds:.2f} → "
                f"{two.cpu_s['ingest'] / two.seconds:.2f} cores)"
            )
    doc = {
        "bench": "logs",
        "cores": os.cpu_count(),
        "target": TARGET,
        "variants": [r.as_json() for r in rows],
        "ratios": {
            k: {kk: (vv if math.isfinite(vv) else None) for kk, vv in v.items()} for k, v in ratios.items()
        },
        "scaling_1_to_2": {k: (v if math.isfinite(v) else None) for k, v in scaling.items()},
    }
    return lines, doc


def _csv(
    choices: list[str], cast: Callable[[str], Any]
) -> Callable[[click.Context, click.Parameter, str], list[Any]]:
    def convert(_ctx: click.Context, param: click.Parameter, value: str) -> list[Any]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            raise click.BadParameter("empty list", param=param)
        bad = [v for v in items if v not in choices]
        if bad:
            raise click.BadParameter(f"{bad[0]!r} is not one of {', '.join(choices)}", param=param)
        return [cast(v) for v in dict.fromkeys(items)]

    return convert


@click.command("logs")
@click.option(
    "--logs",
    "logs",
    default="embedded,kafka1,kafka3",
    show_default=True,
    callback=_csv(list(LOGS), str),
    help="Logs to measure, in this order.",
)
@click.option(
    "--ingest-processes",
    default="1,2",
    show_default=True,
    callback=_csv(["1", "2", "3", "4"], int),
    help="Counts of ingest processes sharing the log (server.ingest_processes).",
)
@click.option("--agents", type=click.IntRange(1, 10_000), default=64, show_default=True)
@click.option("--points-per-report", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option(
    "--duration", type=finite_float(1, 3600), default=20, show_default=True, help="Max-load seconds."
)
@click.option(
    "--encoding", type=click.Choice(["identity", "gzip", "zstd"]), default="zstd", show_default=True
)
@click.option(
    "--warmup",
    type=finite_float(0, 600),
    default=5,
    show_default=True,
    help="Seconds of max load before each measurement, not counted.",
)
@click.option("--heap", default="512m", show_default=True, help="Heap of each Kafka node.")
@click.option("--kafka-partitions", type=click.IntRange(1, 1000), default=6, show_default=True)
def logs_cmd(
    logs: list[str],
    ingest_processes: list[int],
    agents: int,
    points_per_report: int,
    duration: float,
    encoding: str,
    warmup: float,
    heap: str,
    kafka_partitions: int,
) -> None:
    """`bench ingest` through the embedded log and 1- and 3-node Kafka clusters, in one run."""
    from lossproof.bench.ingest import BenchFailed

    def progress(msg: str) -> None:
        click.echo(f"  {msg}", err=True)

    if any(LOGS[log] for log in logs):  # before anything is measured: Java and the broker jars
        from lossproof.dev.kafka import DevKafkaError, fetch, java_bin

        try:
            java_bin()
            fetch()
        except DevKafkaError as e:
            raise click.ClickException(f"Kafka cannot be started here: {e}") from None
    args = {
        "agents": agents,
        "points": points_per_report,
        "duration": duration,
        "encoding": encoding,
        "warmup": warmup,
    }
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="lossproof-bench-logs-") as tmp:
        root = Path(tmp)
        try:
            for log in logs:
                if LOGS[log]:
                    with kafka_cluster(LOGS[log], root, heap, kafka_partitions, progress) as (topic, pids):
                        for n in ingest_processes:
                            rows.append(run_one(log, n, root, args, progress, topic, pids))
                else:
                    for n in ingest_processes:
                        rows.append(run_one(log, n, root, args, progress))
        except BenchFailed as e:
            raise click.ClickException(str(e)) from None
    lines, doc = summarize(rows)
    click.echo(
        f"{agents} agents x {points_per_report} points ({encoding}), {duration:g}s max load, "
        f"{os.cpu_count()} cores; CPU s during the max-load phase"
    )
    for line in lines:
        click.echo(line)
    click.echo(json.dumps(doc, sort_keys=True))
