"""The agent as a relay: its CPU (% of one core) and RSS while it relays remote write at a steady
rate, and the most samples a second it acknowledges (spooled, fsync'd, answered 204).

A real agent process with ``[relay]`` (host collection off: only the relay is measured) sends to a real
``lossproof up`` (spawned). This process plays Prometheus: remote write 1.0 bodies of
``samples_per_request`` series of one sample each (the shape Prometheus sends: one sample per series
per scrape, ``max_samples_per_send`` 2000), each sample with a timestamp of its own.

1. Overhead: ``rate`` samples a second for ``seconds``, paced; the agent's CPU and RSS.
2. Maximum: ``clients`` connections posting back to back for ``max_seconds``; acknowledged samples a
   second. The pipeline need not keep up: the relay's spool absorbs what it has not sent yet.

``lossproof bench relay`` prints both with the machine's load average (the client here shares the
machine's cores with the agent and the pipeline).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import psutil  # type: ignore[import-untyped]  # no stubs installed; calls are plain
import tomli_w
import urllib3

from lossproof.bench.rwbodies import HEADERS, SeriesSet
from lossproof.bench.scrape import scrape, total
from lossproof.bench.spawn import free_port, spawned_pipeline, terminate
from lossproof.cliutil import finite_float

T0_MS = 1_767_225_600_000  # 2026-01-01: every body's samples get later timestamps from here


@dataclass
class RelayBenchResult:
    rate: float  # samples/s offered in the overhead phase
    seconds: float
    relayed_per_s: float  # acknowledged in the overhead phase
    cpu_percent: float
    rss_max_mb: float  # in the overhead phase (the target's)
    max_acked_per_s: float
    max_seconds: float
    max_clients: int
    p99_ms: float  # of requests in the maximum phase
    failed: int  # requests answered other than 204 (both phases)
    load: tuple[float, float, float]
    system_percent: float = 0.0  # the kernel's part of cpu_percent (sockets, fsync)
    max_cpu_percent: float = 0.0  # in the maximum phase
    max_rss_mb: float = 0.0  # at the end of the maximum phase

    @property
    def cpu_s_per_million(self) -> float:
        """Agent CPU-seconds per million samples relayed at the steady rate: less sensitive to the
        machine's load than the share of a core."""
        return self.cpu_percent / 100 / self.relayed_per_s * 1e6 if self.relayed_per_s else float("nan")

    @property
    def max_cpu_s_per_million(self) -> float:
        per_s = self.max_acked_per_s
        return self.max_cpu_percent / 100 / per_s * 1e6 if per_s else float("nan")

    def lines(self) -> list[str]:
        return [
            f"relay overhead: {self.relayed_per_s:,.0f} samples/s acknowledged "
            f"({self.rate:,.0f} offered), {self.seconds:.0f} s measured",
            f"  agent CPU: {self.cpu_percent:.1f}% of one core (target < 5%), "
            f"{self.cpu_s_per_million:.2f} CPU-s per 1M samples (system {self.system_percent:.1f}%)",
            f"  agent RSS: max {self.rss_max_mb:.1f} MB (target < 80 MB)",
            f"relay maximum: {self.max_acked_per_s:,.0f} samples/s acknowledged (spooled, fsync'd, 204) "
            f"with {self.max_clients} clients over {self.max_seconds:.0f} s, p99 {self.p99_ms:.0f} ms",
            f"  agent CPU: {self.max_cpu_percent:.0f}% of one core, {self.max_cpu_s_per_million:.2f} CPU-s "
            f"per 1M samples; RSS {self.max_rss_mb:.1f} MB",
            f"  requests not answered 204: {self.failed}",
            f"  load average: {' '.join(f'{x:.2f}' for x in self.load)} on {os.cpu_count()} cores",
        ]


class _Bodies:
    """Remote-write bodies with timestamps that never repeat (a thread-safe counter)."""

    def __init__(self, samples: int) -> None:
        series = [{"__name__": "bench_relay", "instance": f"i{i % 50}", "s": str(i)} for i in range(samples)]
        self.sset = SeriesSet(series, 1, lambda j, k: float(k))
        self._lock = threading.Lock()
        self._next = 0

    def next(self) -> bytes:
        with self._lock:
            k = self._next
            self._next += 1
        return self.sset.body(k, [T0_MS + k])


def run_relay_bench(
    rate: float = 10_000,
    seconds: float = 30,
    max_seconds: float = 15,
    clients: int = 4,
    samples_per_request: int = 2000,
    progress: Callable[[str], None] = lambda _m: None,
) -> RelayBenchResult:
    with tempfile.TemporaryDirectory(prefix="lossproof-bench-relay-") as tmp_s:
        tmp = Path(tmp_s)
        with spawned_pipeline(tmp / "data") as (url, key):
            relay_port, metrics_port = free_port(), free_port()
            config = tmp / "agent.toml"
            config.write_text(
                tomli_w.dumps(
                    {
                        "agent_id": "bench-relay",
                        "api_key": key,
                        "primary_url": url,
                        "spool_dir": str(tmp / "spool"),
                        "interval_seconds": 1.0,
                        "statsd_port": 0,
                        "metrics_port": metrics_port,
                        "collect_host": False,
                        "log_level": "WARNING",
                        "relay": {"listen": f"127.0.0.1:{relay_port}"},
                    }
                )
            )
            argv = [sys.executable, "-m", "lossproof.agent", "--config", str(config)]
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                phases = (rate, seconds, max_seconds, clients, samples_per_request)
                return _measure(proc, relay_port, metrics_port, *phases, progress)
            finally:
                terminate(proc)


def _measure(
    proc: subprocess.Popen[bytes],
    relay_port: int,
    metrics_port: int,
    rate: float,
    seconds: float,
    max_seconds: float,
    clients: int,
    per_request: int,
    say: Callable[[str], None],
) -> RelayBenchResult:
    relay = f"http://127.0.0.1:{relay_port}/api/v1/write"
    timeout = urllib3.Timeout(connect=2, read=60)
    http = urllib3.PoolManager(maxsize=clients + 1, timeout=timeout, retries=False)
    bodies = _Bodies(per_request)
    _wait_listening(http, relay_port, proc)
    ps = psutil.Process(proc.pid)
    failed = 0

    def post() -> tuple[int, float]:
        body = bodies.next()
        t = time.perf_counter()
        r = http.request("POST", relay, body=body, headers=HEADERS)
        return r.status, time.perf_counter() - t

    # warm-up: the first request opens the sender's spool
    for _ in range(3):
        post()
    say(f"overhead: {rate:,.0f} samples/s for {seconds:.0f} s")
    interval = per_request / rate
    acked = 0
    rss_max = 0
    t0, c0 = time.monotonic(), ps.cpu_times()
    next_at = t0
    while time.monotonic() - t0 < seconds:
        status, _ = post()
        if status == 204:
            acked += per_request
        else:
            failed += 1
        rss_max = max(rss_max, ps.memory_info().rss)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    t1, c1 = time.monotonic(), ps.cpu_times()
    cpu = (c1.user - c0.user + c1.system - c0.system) / (t1 - t0) * 100
    system = (c1.system - c0.system) / (t1 - t0) * 100

    say(f"maximum: {clients} clients back to back for {max_seconds:.0f} s")
    latencies: list[float] = []
    counts = [0] * clients
    bad = [0] * clients
    end = time.monotonic() + max_seconds

    def client(i: int) -> None:
        while time.monotonic() < end:
            status, dt = post()
            latencies.append(dt)
            if status == 204:
                counts[i] += per_request
            else:
                bad[i] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    m0, mc0 = time.monotonic(), ps.cpu_times()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m1, mc1 = time.monotonic(), ps.cpu_times()
    max_cpu = (mc1.user - mc0.user + mc1.system - mc0.system) / (m1 - m0) * 100
    max_rss = ps.memory_info().rss
    m = scrape(f"http://127.0.0.1:{metrics_port}")
    spooled = total(m, "lossproof_agent_relay_samples_spooled_total")
    if spooled < acked + sum(counts):
        acks = acked + sum(counts)
        raise RuntimeError(f"the agent spooled {spooled:.0f} samples, fewer than the {acks} answered 204")
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else float("nan")
    return RelayBenchResult(
        rate=rate,
        seconds=t1 - t0,
        relayed_per_s=acked / (t1 - t0),
        cpu_percent=cpu,
        rss_max_mb=rss_max / 2**20,
        max_acked_per_s=sum(counts) / (m1 - m0),
        max_seconds=m1 - m0,
        max_clients=clients,
        p99_ms=p99,
        failed=failed + sum(bad),
        load=os.getloadavg(),
        system_percent=system,
        max_cpu_percent=max_cpu,
        max_rss_mb=max_rss / 2**20,
    )


def _wait_listening(http: urllib3.PoolManager, port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {proc.returncode}")
        try:
            if http.request("GET", f"http://127.0.0.1:{port}/ping").status == 204:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the agent's relay did not start listening within 30 s")


@click.command("relay")
@click.option("--rate", type=finite_float(100, 1e7), default=10_000, show_default=True, help="Samples/s.")
@click.option("--seconds", type=finite_float(5, 3600), default=30, show_default=True)
@click.option("--max-seconds", type=finite_float(5, 3600), default=15, show_default=True)
@click.option("--clients", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--samples-per-request", type=click.IntRange(1, 100_000), default=2000, show_default=True)
def relay_cmd(
    rate: float, seconds: float, max_seconds: float, clients: int, samples_per_request: int
) -> None:
    """The agent relaying remote write: CPU and RSS at --rate, and its acknowledged maximum."""
    try:
        res = run_relay_bench(
            rate,
            seconds,
            max_seconds,
            clients,
            samples_per_request,
            progress=lambda msg: click.echo(f"  {msg}", err=True),
        )
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    for line in res.lines():
        click.echo(line)
