"""Agent overhead: CPU (% of one core) and RSS of a real agent process at 1 report/s of N points.

The agent runs as its own process, sending to a real ``lossproof up`` (spawned unless a URL is
given), with host collection on. Points come either from ``Agent.record`` inside the agent process
(``via="record"``: the library use; the cost of the calls is part of the agent's) or from StatsD UDP
packets sent by this process (``via="statsd"``: the daemon use; parsing is part of the agent's).

``lossproof bench agent --seconds 60 [--via statsd]`` prints the numbers. Target from
issue 3: < 2% of one core and < 60 MB RSS at 1 report/s of 1,000 points.
"""

from __future__ import annotations

import signal
import socket
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

from lossproof.bench.load import load_line
from lossproof.bench.scrape import scrape, total
from lossproof.bench.spawn import check_pipeline, free_port, spawned_pipeline
from lossproof.cliutil import finite_float


@dataclass
class AgentBenchResult:
    via: str
    seconds: float
    points_per_report: int
    cpu_percent: float  # of one core, user + system, over the measured window
    rss_max_mb: float
    rss_end_mb: float
    reports_created: float
    reports_acked: float
    pending_end: float

    def lines(self) -> list[str]:
        return [
            f"agent overhead ({self.via}): 1 report/s of {self.points_per_report} points (+ host metrics), "
            f"{self.seconds:.0f} s measured",
            f"  CPU: {self.cpu_percent:.2f}% of one core (target < 2%)",
            f"  RSS: max {self.rss_max_mb:.1f} MB, end {self.rss_end_mb:.1f} MB (target < 60 MB)",
            f"  reports created {self.reports_created:.0f}, acknowledged {self.reports_acked:.0f}, "
            f"pending at the end {self.pending_end:.0f}",
        ]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_agent_bench(
    seconds: float = 60.0,
    points_per_report: int = 1000,
    via: str = "record",
    url: str | None = None,
    api_key: str | None = None,
    warmup: float = 3.0,
    progress: Callable[[str], None] = lambda _m: None,
) -> AgentBenchResult:
    with tempfile.TemporaryDirectory(prefix="lossproof-bench-agent-") as tmp_s:
        tmp = Path(tmp_s)
        if url is None:
            with spawned_pipeline(tmp / "data") as (spawned_url, key):
                return _measure(tmp, spawned_url, key, seconds, points_per_report, via, warmup, progress)
        if not api_key:
            raise ValueError("api_key is required with url")
        return _measure(tmp, url, api_key, seconds, points_per_report, via, warmup, progress)


def _measure(
    tmp: Path,
    url: str,
    key: str,
    seconds: float,
    points: int,
    via: str,
    warmup: float,
    progress: Callable[[str], None],
) -> AgentBenchResult:
    metrics_port = free_port()
    statsd_port = _free_udp_port() if via == "statsd" else 0
    config = tmp / "agent.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "agent_id": "bench-agent",
                "api_key": key,
                "primary_url": url,
                "spool_dir": str(tmp / "spool"),
                "interval_seconds": 1.0,
                "statsd_port": statsd_port,
                "metrics_port": metrics_port,
                "collect_host": True,
                "log_level": "WARNING",
            }
        )
    )
    if via == "record":
        argv = [sys.executable, "-m", "lossproof.bench.agent", "drive", "--config", str(config)]
        argv += ["--points", str(points)]
    else:
        argv = [sys.executable, "-m", "lossproof.agent", "--config", str(config)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    feeder = None
    if via == "statsd":
        feeder = threading.Thread(target=_feed_statsd, args=(statsd_port, points, stop), daemon=True)
        feeder.start()
    try:
        ps = psutil.Process(proc.pid)
        progress(f"agent pid {proc.pid} ({via}); warming up {warmup:.0f} s")
        time.sleep(warmup)
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {proc.returncode}")
        t0, c0 = time.monotonic(), ps.cpu_times()
        rss_max = 0
        progress(f"measuring for {seconds:.0f} s")
        while time.monotonic() - t0 < seconds:
            rss_max = max(rss_max, ps.memory_info().rss)
            time.sleep(0.5)
        t1, c1 = time.monotonic(), ps.cpu_times()
        rss_end = ps.memory_info().rss
        m = scrape(f"http://127.0.0.1:{metrics_port}")
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    cpu = (c1.user - c0.user + c1.system - c0.system) / (t1 - t0) * 100
    return AgentBenchResult(
        via=via,
        seconds=t1 - t0,
        points_per_report=points,
        cpu_percent=cpu,
        rss_max_mb=max(rss_max, rss_end) / 2**20,
        rss_end_mb=rss_end / 2**20,
        reports_created=total(m, "lossproof_agent_reports_created_total"),
        reports_acked=total(m, "lossproof_agent_reports_acked_total"),
        pending_end=m.get("lossproof_agent_spool_reports{state=pending}", float("nan")),
    )


def _feed_statsd(port: int, points: int, stop: threading.Event) -> None:
    """``points`` gauges a second, 25 lines a packet, as an application's StatsD client would."""
    lines = [f"bench.m{i % 50}:{i}.5|g|#core:c{i}".encode() for i in range(points)]
    packets = [b"\n".join(lines[i : i + 25]) for i in range(0, len(lines), 25)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        next_at = time.monotonic()
        while not stop.is_set():
            for pkt in packets:
                s.sendto(pkt, ("127.0.0.1", port))
            next_at += 1.0
            stop.wait(max(0.0, next_at - time.monotonic()))


@click.group()
def main() -> None:
    """Agent overhead benchmark."""


@main.command("run")
@click.option("--seconds", type=finite_float(5, 3600), default=60, show_default=True)
@click.option("--points", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--via", type=click.Choice(["record", "statsd"]), default="record", show_default=True)
@click.option("--url", default=None, help="A running pipeline (default: spawn one).")
@click.option("--api-key", envvar="LOSSPROOF_API_KEY", default=None)
def run_command(seconds: float, points: int, via: str, url: str | None, api_key: str | None) -> None:
    """Measure and print the agent's CPU and RSS."""
    if url is not None:
        url = check_pipeline(url, api_key)
    try:
        res = run_agent_bench(
            seconds, points, via, url, api_key, progress=lambda m: click.echo(f"  {m}", err=True)
        )
    except RuntimeError as e:  # the agent or the spawned pipeline did not run
        raise click.ClickException(str(e)) from None
    for line in [*res.lines(), load_line()]:
        click.echo(line)
    if not res.reports_acked:
        raise click.ClickException(
            f"the agent got no report acknowledged ({res.reports_created:.0f} created): "
            "check --url and --api-key"
        )


@main.command("drive", hidden=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--points", type=int, required=True)
def drive_command(config_path: Path, points: int) -> None:
    """The agent plus an application calling ``Agent.record`` ``points`` times a second."""
    from lossproof.agent import Agent, load_config
    from lossproof.obs.logging import setup

    cfg = load_config(config_path)
    setup("agent", cfg.log_level)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    series = [(f"bench.m{i % 50}", {"core": f"c{i}"}) for i in range(points)]
    with Agent(cfg) as agent:
        next_at = time.monotonic()
        while not stop.is_set():
            for i, (metric, labels) in enumerate(series):
                agent.record(metric, i + 0.5, labels)
            next_at += cfg.interval_seconds
            stop.wait(max(0.0, next_at - time.monotonic()))


if __name__ == "__main__":
    main()
