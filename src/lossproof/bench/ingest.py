"""``lossproof bench ingest``: drive a running pipeline on loopback and measure it.

K agents each post reports of N points as fast as they are acknowledged (phase 1, the maximum),
then at half that rate (phase 2, the latency target). Numbers come from the client (acks and
their latency) and from the pipeline's own ``/metrics`` (worker points stored, end-to-end delay).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from lossproof.bench.disk import write_fsync_mib_s
from lossproof.bench.scrape import histogram_quantile, scrape, total
from lossproof.protocol.compression import compress

T_MARK = b"@T@"
# Answers that no retry can change: a load phase stops at once when nothing was acknowledged yet.
REFUSED = frozenset({401, 403, 404})


class BenchFailed(Exception):
    """Nothing was acknowledged: there are no numbers to print (one line, for the CLI)."""


# Figures of the last max-load phase, for benchmarks that compare against it (bench kafka ratio).
LAST_RUN: dict[str, float] = {}


def points_template(agent: int, n: int) -> bytes:
    """A JSON array of ``n`` points of distinct series, with ``@T@`` where the timestamp goes."""
    items = [
        b'{"metric":"bench.m%d","labels":{"host":"h%d","core":"c%d"},"v":%d.5,"t":@T@}'
        % (i % 50, agent, i, i)
        for i in range(n)
    ]
    return b"[" + b",".join(items) + b"]"


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    acked_points: int = 0
    acked_bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    refused: str = ""  # set when the pipeline refused the load outright (e.g. HTTP 401)

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q * len(s)))]


class Load:
    def __init__(self, url: str, key: str, agents: int, points: int, encoding: str, run_id: str) -> None:
        self.url = url.rstrip("/") + "/v1/reports"
        self.key = key
        self.agents = agents
        self.points = points
        self.encoding = encoding
        self.run_id = run_id
        # split once at the timestamp marks: a body is then one join, with no search
        self.templates = [points_template(a, points).split(T_MARK) for a in range(agents)]
        self.seqs = [0] * agents
        self.t0 = int(time.time() * 1000)

    def body(self, agent: int) -> bytes:
        self.seqs[agent] += 1
        seq = self.seqs[agent]
        t = str(self.t0 + seq).encode()
        points = t.join(self.templates[agent])
        raw = b'{"agent":"bench-%s-%d","reports":[{"seq":%d,"points":%s}]}' % (
            self.run_id.encode(),
            agent,
            seq,
            points,
        )
        return compress(raw, self.encoding)

    async def run(
        self, phase: Phase, seconds: float, rate: float | None, progress: Callable[[str], None]
    ) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        if self.encoding != "identity":
            headers["Content-Encoding"] = self.encoding
        deadline = time.monotonic() + seconds
        interval = self.agents / rate if rate else 0.0
        conn = aiohttp.TCPConnector(limit=self.agents + 4)
        async with aiohttp.ClientSession(connector=conn) as session:

            async def agent_loop(a: int) -> None:
                next_at = time.monotonic() + (interval * a / self.agents if interval else 0)
                body = self.body(a)
                while time.monotonic() < deadline and not phase.refused:
                    if interval:
                        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                        next_at += interval
                    start = time.perf_counter()
                    try:
                        async with session.post(self.url, data=body, headers=headers) as r:
                            answer = await r.read()
                            status = r.status
                    except aiohttp.ClientError as e:
                        phase.errors[type(e).__name__] = phase.errors.get(type(e).__name__, 0) + 1
                        await asyncio.sleep(0.1)
                        continue
                    if status == 200:
                        phase.latencies.append(time.perf_counter() - start)
                        phase.acked_points += self.points
                        phase.acked_bytes += len(body)
                        body = self.body(a)
                    else:
                        phase.errors[str(status)] = phase.errors.get(str(status), 0) + 1
                        if status in REFUSED and not phase.acked_points:
                            text = answer[:200].decode(errors="replace").strip()
                            phase.refused = f"HTTP {status} from {self.url}: {text}"
                        await asyncio.sleep(0.05)

            async def ticker() -> None:
                started = time.monotonic()
                while time.monotonic() < deadline and not phase.refused:
                    await asyncio.sleep(1)
                    el = time.monotonic() - started
                    progress(f"{phase.name}: {el:4.0f}s  {phase.acked_points / el:,.0f} acked points/s")

            started = time.monotonic()
            tick = asyncio.create_task(ticker())
            await asyncio.gather(*(agent_loop(a) for a in range(self.agents)))
            tick.cancel()
            phase.seconds = time.monotonic() - started


def _wait_drained(url: str, target_points: float, timeout: float) -> float:
    """Seconds until the worker has stored ``target_points`` in total (inf on timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if total(scrape(url), "lossproof_worker_points_total") >= target_points:
            return time.monotonic() - start
        time.sleep(0.2)
    return math.inf


def run_protocol_bench(
    url: str,
    key: str,
    protocol: str,
    clients: int,
    samples: int,
    duration: float,
    progress: Callable[[str], None],
) -> list[str]:
    """Acked samples/s through a third-party endpoint, and what the worker stored meanwhile."""
    from lossproof.bench.protocols import drive

    before = scrape(url)
    stored_before = total(before, "lossproof_worker_points_total")
    progress(f"{protocol}: {clients} clients, {samples} samples/request, {duration:.0f}s …")
    res = asyncio.run(drive(url, key, protocol, clients, samples, duration))
    if res.refused:
        raise BenchFailed(f"nothing acknowledged: {res.refused}")
    if not res.acked_samples:
        raise BenchFailed(f"nothing acknowledged in {res.seconds:.1f}s; errors {res.errors or 'none'}")
    drain = _wait_drained(url, stored_before + res.acked_samples, timeout=max(60.0, duration * 10))
    stored = total(scrape(url), "lossproof_worker_points_total") - stored_before
    busy = res.seconds + (drain if math.isfinite(drain) else 0)
    return [
        f"{protocol}: {clients} clients, {samples} samples/request, {res.seconds:.1f}s",
        f"acked: {res.acked_samples / res.seconds:,.0f} samples/s; ack latency p50 "
        f"{res.quantile(0.5) * 1e3:.1f} ms, p99 {res.quantile(0.99) * 1e3:.1f} ms",
        f"errors: {res.errors or 'none'}",
        f"worker decode+store: {stored / busy:,.0f} samples/s (drained {drain:.1f}s after load stopped)",
    ]


@dataclass
class Measured:
    """One max-load phase, the drain after it and one half-load phase (see :func:`measure`)."""

    agents: int
    points: int
    encoding: str
    full: Phase
    half: Phase
    stored_during: float  # points the worker stored during the max-load phase
    stored_total: float  # ... by the end of the drain
    drain: float  # seconds after the max-load phase until everything acked was stored (inf: never)
    e2e_p50: float
    e2e_p99: float
    # CPU seconds per role (whatever ``cpu`` returned) used during each load phase
    cpu_full: dict[str, float] = field(default_factory=dict)
    cpu_half: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.full.acked_points / self.full.seconds


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    # a process that ended in between takes its CPU seconds with it: never below 0
    return {k: max(0.0, after[k] - before.get(k, 0.0)) for k in after}


def measure(
    url: str,
    key: str,
    agents: int,
    points: int,
    duration: float,
    encoding: str,
    progress: Callable[[str], None],
    *,
    half_seconds: float | None = None,
    cpu: Callable[[], dict[str, float]] | None = None,
    warmup: float = 0.0,
) -> Measured:
    """Max load for ``duration`` s, wait until the worker stored it all, then half that rate for
    ``half_seconds`` (default max(5, duration / 2)). ``cpu``: called before and after each phase
    (CPU seconds so far, by role), the deltas are kept. ``warmup``: seconds of max load first,
    stored and not counted (a JVM broker just started compiles its hot paths meanwhile)."""
    load = Load(url, key, agents, points, encoding, f"{int(time.time())}")
    cpu = cpu or dict
    if warmup > 0:
        warm = Phase("warm-up")
        stored = total(scrape(url), "lossproof_worker_points_total")
        asyncio.run(load.run(warm, warmup, None, progress))
        if warm.refused:
            raise BenchFailed(f"nothing acknowledged: {warm.refused}")
        _wait_drained(url, stored + warm.acked_points, timeout=max(60.0, warmup * 10))
    before = scrape(url)
    stored_before = total(before, "lossproof_worker_points_total")
    full = Phase("max load")
    c0 = cpu()
    asyncio.run(load.run(full, duration, None, progress))
    cpu_full = _cpu_delta(c0, cpu())
    if full.refused:
        raise BenchFailed(f"nothing acknowledged: {full.refused}")
    if not full.acked_points:
        raise BenchFailed(f"nothing acknowledged in {full.seconds:.1f}s; errors {full.errors or 'none'}")
    after_full = scrape(url)
    stored_during = total(after_full, "lossproof_worker_points_total") - stored_before
    progress("waiting for the worker to store everything …")
    drain = _wait_drained(url, stored_before + full.acked_points, timeout=max(60.0, duration * 10))
    after_drain = scrape(url)
    stored_total = total(after_drain, "lossproof_worker_points_total") - stored_before
    rate = full.acked_points / full.seconds
    half = Phase("half load")
    c0 = cpu()
    half_s = max(5.0, duration / 2) if half_seconds is None else half_seconds
    asyncio.run(load.run(half, half_s, rate / points / 2, progress))
    cpu_half = _cpu_delta(c0, cpu())
    e2e = "lossproof_worker_end_to_end_seconds"
    return Measured(
        agents,
        points,
        encoding,
        full,
        half,
        stored_during,
        stored_total,
        drain,
        histogram_quantile(before, after_drain, e2e, 0.5),
        histogram_quantile(before, after_drain, e2e, 0.99),
        cpu_full,
        cpu_half,
    )


def run_bench(
    url: str,
    key: str,
    agents: int,
    points: int,
    duration: float,
    encoding: str,
    disk_dir: Path,
    progress: Callable[[str], None],
) -> list[str]:
    scrape(url)  # reachable? (before the disk is measured)
    progress("measuring the disk: sequential write + fsync …")
    disk = write_fsync_mib_s(disk_dir)
    lines = [f"disk sequential write+fsync (1 MiB chunks): {disk:,.1f} MiB/s"]
    m = measure(url, key, agents, points, duration, encoding, progress)
    full, half = m.full, m.half
    rate = m.rate
    mib = full.acked_bytes / full.seconds / 2**20
    requests = full.acked_points / points
    LAST_RUN.update(
        requests_per_s=requests / full.seconds, bytes_per_request=full.acked_bytes / max(requests, 1)
    )
    drain = m.drain
    if math.isfinite(drain):
        worker_rate = m.stored_total / (full.seconds + drain)
        drained = f"overall incl. drain: {worker_rate:,.0f} points/s; drained {drain:.1f}s after load stopped"
    else:
        drained = f"NOT drained: {m.stored_total:,.0f} of {full.acked_points:,} points stored by the deadline"
    lines += [
        f"agents {agents}, {points} points/report, encoding {encoding}, {full.seconds:.1f}s at max load",
        f"acked: {rate:,.0f} points/s, {mib:,.1f} MiB/s on the wire (ratio to disk {mib / disk:.2f})",
        f"ack latency: p50 {full.quantile(0.5) * 1e3:.1f} ms, p99 {full.quantile(0.99) * 1e3:.1f} ms, "
        f"p99.9 {full.quantile(0.999) * 1e3:.1f} ms",
        f"errors: {full.errors or 'none'}",
        f"worker stored during load: {m.stored_during / full.seconds:,.0f} points/s; {drained}",
        f"end-to-end (ingest → stored) p50 ≤ {m.e2e_p50:g}s, p99 ≤ {m.e2e_p99:g}s",
        f"at half load ({half.acked_points / half.seconds:,.0f} points/s): ack latency p50 "
        f"{half.quantile(0.5) * 1e3:.1f} ms, p99 {half.quantile(0.99) * 1e3:.1f} ms, "
        f"p99.9 {half.quantile(0.999) * 1e3:.1f} ms, errors {half.errors or 'none'}",
    ]
    return lines
