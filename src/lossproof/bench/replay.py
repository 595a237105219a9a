"""Catch-up benchmark for ``lossproof replay``: drain a fallback journal into a running pipeline.

The journal is what a fallback receiver holds after an outage: N agents x M reports of P points,
one report per request (agents at 1 report/s send them one by one), compressed as agents send
them. It is written directly with the journal writer (the receiver's own format and code path
for disk), then replayed with the real replay code. Two times are measured: until the main ingest
acknowledged every request (replay done), and until the worker stored every point (caught up).

With ``--backlog`` the worker is paused (SIGSTOP) while the journal is replayed and resumed once
ingest has acknowledged all of it: the worker then drains a backlog alone, as after a store outage
or a worker that was down, and the drain is timed on its own (the worker's catch-up rate, without
ingest and the replay sharing the cores).

    lossproof bench replay --spawn --agents 100 --reports 600 --points 500
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import math
import multiprocessing
import os
import statistics
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import click
import msgspec
import psutil  # type: ignore[import-untyped]  # no stubs installed; calls are plain

from lossproof import aio
from lossproof import config as config_mod
from lossproof.agent.report import Point as AgentPoint
from lossproof.agent.report import encode_encoded_report, encode_points
from lossproof.agent.request import encode_request
from lossproof.auth import TENANT_HEADER
from lossproof.bench.ingest import T_MARK, points_template
from lossproof.bench.scrape import scrape, total
from lossproof.cliutil import finite_float
from lossproof.fallback import journal as jn
from lossproof.fallback.pacing import DEFAULT_BATCH_POINTS, DEFAULT_CONCURRENCY
from lossproof.fallback.replay import Replay, ReplayOptions
from lossproof.protocol.compression import compress
from lossproof.protocol.native import JSON, MSGPACK


@dataclass
class ReplayBenchResult:
    agents: int
    reports: int
    points: int
    requests: int
    journal_bytes: int
    build_seconds: float
    replay_seconds: float  # until every request was acknowledged by the main ingest
    stored_seconds: float  # until the worker stored every point (from the start of the replay)
    retries: int
    rejected: int
    cpu_seconds: dict[str, float] | None = None  # per process, over replay + drain (+ packing)
    drain_seconds: float | None = None  # --backlog: from resuming the worker until it stored all
    # --spawn: from the start of the drain (replay, or the worker resumed) until compaction was done
    compacted_seconds: float | None = None
    compacted_points: float = 0.0  # points compaction wrote (flushed and packed), meanwhile
    live: LiveResult | None = None  # a live agent's requests during the replay

    @property
    def total_reports(self) -> int:
        return self.agents * self.reports

    @property
    def total_points(self) -> int:
        return self.total_reports * self.points

    def lines(self) -> list[str]:
        rs = self.stored_seconds
        out = [
            f"journal: {self.agents} agents x {self.reports} reports x {self.points} points = "
            f"{self.total_reports:,} reports, {self.total_points:,} points, "
            f"{self.journal_bytes / 2**20:,.1f} MiB (built in {self.build_seconds:.1f} s)",
            f"replay acknowledged by ingest: {self.replay_seconds:.1f} s = "
            f"{self.requests / self.replay_seconds:,.0f} requests/s, "
            f"{self.total_points / self.replay_seconds:,.0f} points/s "
            f"(retries {self.retries}, rejected {self.rejected})",
            f"all stored by the worker: {rs:.1f} s after the replay started = "
            f"{self.total_reports / rs:,.0f} reports/s, {self.total_points / rs:,.0f} points/s stored",
        ]
        if self.drain_seconds is not None:
            d = self.drain_seconds
            out[-1] = (
                f"worker paused during the replay, then drained the backlog alone in {d:.1f} s = "
                f"{self.total_reports / d:,.0f} reports/s, {self.total_points / d:,.0f} points/s stored"
            )
        if self.compacted_seconds is not None:
            c = self.compacted_seconds
            out.append(
                "compaction (in the background, the points queryable meanwhile): "
                + (f"every point packed {c:.1f} s after the drain began" if math.isfinite(c) else "NOT done")
                + f"; it wrote {self.compacted_points / max(self.total_points, 1):.2f} points a point stored"
            )
        if self.live is not None:
            out.append(self.live.line())
        if self.cpu_seconds:
            per = ", ".join(
                f"{k} {v:.1f} s ({v / self.total_reports * 1e3:.2f} ms/report)"
                for k, v in self.cpu_seconds.items()
            )
            out.append(
                f"CPU time: {per}; host load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
            )
        return out


@dataclass
class LiveResult:
    every: float
    ms: list[float]  # each report's time from when it was due until its 200
    failed: int  # requests answered other than 2xx, or not at all (each sent again)
    died: int | None = None  # the agent's process ended without an answer (its exit code)

    @property
    def points(self) -> int:  # one a request
        return len(self.ms)

    def line(self) -> str:
        if self.died is not None:
            return f"a live agent beside the replay: its process died (exit code {self.died})"
        if not self.ms:
            return f"a live agent beside the replay: no request acknowledged ({self.failed} failed)"
        cuts = statistics.quantiles(self.ms, n=100, method="inclusive") if len(self.ms) > 1 else self.ms * 99
        return (
            f"a live agent beside the replay (a 1-point report every {self.every:g} s): "
            f"p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} ms, max {max(self.ms):.1f} ms "
            f"({len(self.ms)} acknowledged, {self.failed} refused or failed, each sent again)"
        )


class LiveAgent:
    """An agent sending live while the replay runs: one report of one point every ``every`` s on
    a connection of its own. Whether a replay starves live traffic is how long these wait (the
    replay shares ingest's event loop, log and CPU with them). Each report is due at its tick (the
    k-th at start + k x ``every``) and timed from then until its 200, so a stall counts for every
    report it delays, not once; a refused report is sent again with its seq, as an agent would. It
    runs in a process of its own: in the replay's, its times would include waits for its GIL."""

    def __init__(self, url: str, key: str, every: float = 0.1, tenant: str = "default") -> None:
        u = urllib.parse.urlsplit(url)
        self._https = u.scheme == "https"
        self._host, self._port = u.hostname or "127.0.0.1", u.port
        self._path = u.path.rstrip("/") + "/v1/reports"
        self._headers = {
            "Authorization": f"Bearer {key}",
            TENANT_HEADER: tenant,
            "Content-Type": JSON,
        }
        self._agent = f"live-{os.getpid()}-{int(time.time())}"
        self.every = every
        self.ms: list[float] = []
        self.failed = 0
        ctx = multiprocessing.get_context("fork")  # (started before the replay's threads and loop)
        self._stop = ctx.Event()
        self._results, self._child_end = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=self._run, args=(self._child_end,), name="live-agent", daemon=True)

    def start(self) -> None:
        self._proc.start()
        self._child_end.close()  # (the child's: once it is gone, recv sees the end)

    def stop(self) -> LiveResult:
        self._stop.set()
        try:
            got: tuple[list[float], int] = self._results.recv()
        except EOFError:  # it died without an answer
            self._proc.join(10)
            return LiveResult(self.every, [], 0, died=self._proc.exitcode)
        finally:
            self._results.close()
        self._proc.join(10)
        return LiveResult(self.every, *got)

    def _run(self, results: Connection) -> None:
        try:
            self._send()
        finally:
            results.send((self.ms, self.failed))

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=30)
        return http.client.HTTPConnection(self._host, self._port, timeout=30)

    def _post(self, conn: http.client.HTTPConnection, seq: int, t: int) -> bool:
        body = b'{"agent":"%s","reports":[{"seq":%d,"time":%d,"points":[{"metric":"bench.live","labels":{},"v":1,"t":%d}]}]}' % (  # noqa: E501
            self._agent.encode(), seq, t, t
        )
        conn.request("POST", self._path, body, self._headers)
        resp = conn.getresponse()
        resp.read()
        return 200 <= resp.status < 300

    def _send(self) -> None:
        conn: http.client.HTTPConnection | None = None
        t0 = time.perf_counter()
        k = 0
        while True:  # one report at least
            due = t0 + k * self.every
            if k and self._stop.wait(max(0.0, due - time.perf_counter())):
                break
            t = int(time.time() * 1000)
            while True:  # until acknowledged (the same seq: the store keeps it once)
                try:
                    if conn is None:
                        conn = self._connect()
                    if self._post(conn, k + 1, t):
                        break
                except (OSError, http.client.HTTPException):
                    if conn is not None:
                        conn.close()
                    conn = None
                self.failed += 1
                if self._stop.wait(min(1.0, self.every)):
                    if conn is not None:
                        conn.close()
                    return
            self.ms.append((time.perf_counter() - due) * 1000)
            k += 1
        if conn is not None:
            conn.close()


async def build_journal(
    journal: Path,
    agents: int,
    reports: int,
    points: int,
    encoding: str = "zstd",
    tenant: str = "default",
    run_id: str = "",
    t0_ms: int | None = None,
    body_format: str = "json",
) -> tuple[int, int]:
    """Write the journal a fallback would hold; returns (requests, journal bytes). ``body_format``:
    the requests as plain JSON (``json``) or as the agent sends them (``msgpack``)."""
    run_id = run_id or str(int(time.time()))
    t0 = t0_ms if t0_ms is not None else int(time.time() * 1000) - reports * 1000
    msgpack = body_format == "msgpack"
    templates = [(_msgpack_points if msgpack else _json_points)(a, points) for a in range(agents)]
    writer = jn.JournalWriter(journal)
    await writer.start()
    try:
        for seq in range(1, reports + 1):  # in time order, all agents each second, as received
            t = str(t0 + seq * 1000).encode()
            batch = []
            for a in range(agents):
                agent = f"replay-{run_id}-{a}"
                if msgpack:
                    tb = (t0 + seq * 1000).to_bytes(8, "big")
                    pts = msgspec.Raw(tb.join(templates[a]))
                    raw = encode_request(agent, [encode_encoded_report(seq, t0 + seq * 1000, pts)], [], None)
                else:
                    raw = b'{"agent":"%s","reports":[{"seq":%d,"time":%s,"points":%s}]}' % (
                        agent.encode(),
                        seq,
                        t,
                        t.join(templates[a]),
                    )
                entry = jn.Entry(
                    tenant=tenant,
                    agent=agent,
                    content_type=MSGPACK if msgpack else JSON,
                    encoding=encoding if encoding != "identity" else "",
                    seqs=[(seq, seq)],
                    reports=1,
                    points=points,
                    body=compress(raw, encoding),
                )
                batch.append(writer.append(entry, t0 + seq * 1000))
            await asyncio.gather(*batch)
    finally:
        await writer.close()
    return agents * reports, jn.journal_bytes(journal)[1]


def _json_points(agent: int, n: int) -> list[bytes]:
    """The agent's points as JSON, cut where each point's t goes."""
    return points_template(agent, n).split(T_MARK)


# a t no real report has (above 2**32, so msgpack writes it as 0xcf and 8 bytes, as it writes a
# real t in unix ms), replaced by each report's t
_T_MARKER = 0x7E_57_1A_B0_5E_ED_C0_DE


def _msgpack_points(agent: int, n: int) -> list[bytes]:
    """The same points as the agent encodes them (msgpack), cut where each point's t goes."""
    pts = [
        AgentPoint(f"bench.m{i % 50}", {"host": f"h{agent}", "core": f"c{i}"}, _T_MARKER, i + 0.5)
        for i in range(n)
    ]
    return bytes(encode_points(pts)).split(_T_MARKER.to_bytes(8, "big"))


class _Lines(io.StringIO):
    """A text stream that hands each complete line to ``progress`` (replay's progress output)."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        super().__init__()
        self._progress = progress
        self._buf = ""

    def write(self, s: str) -> int:
        self._buf += s
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if line.strip():
                self._progress(line)
        return len(s)

    def isatty(self) -> bool:
        return False


def _processes(data_dir: Path) -> dict[str, psutil.Process]:
    """The pipeline's ingest, worker and compactor processes (found by their --data-dir)."""
    out = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if str(data_dir) in cmd and "lossproof" in cmd:
            for role in ("ingest", "worker", "compactor"):
                if role in cmd:
                    out[role] = p
    return out


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return math.nan


def _wait_compacted(data_dir: Path, timeout: float) -> float | None:
    """When the embedded store's compaction had packed every point (monotonic), or inf; None for
    another store, or with compaction turned off."""
    from lossproof.bench.compare import packing_done

    cfg = config_mod.load(data_dir)
    if cfg.store.backend != "embedded" or not cfg.store.compact_interval_seconds:
        return None
    store = cfg.store_path
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if packing_done(store):
            return time.monotonic()
        time.sleep(0.5)
    return math.inf


def _wait_stored(url: str, target: float, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if total(scrape(url), "lossproof_worker_points_total") >= target:
            return True
        time.sleep(0.2)
    return False


def run_replay_bench(
    url: str,
    key: str,
    work_dir: Path,
    agents: int = 100,
    reports: int = 600,
    points: int = 500,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate: float | None = None,
    encoding: str = "zstd",
    progress: Callable[[str], None] = lambda _m: None,
    timeout: float = 1800,
    pipeline_dir: Path | None = None,
    backlog: bool = False,
    body_format: str = "json",
    live: bool = True,
    batch_points: int = DEFAULT_BATCH_POINTS,
) -> ReplayBenchResult:
    """Build a journal in ``work_dir`` and replay it into the pipeline at ``url`` with ``key``
    (a replay key, or the default tenant's key). ``backlog``: the worker (of ``pipeline_dir``) is
    paused during the replay and its drain timed alone (module doc)."""
    progress(
        f"building the journal: {agents} agents x {reports} reports x {points} points ({body_format}) ..."
    )
    t = time.monotonic()
    requests, nbytes = aio.run(
        build_journal(jn.journal_dir(work_dir), agents, reports, points, encoding, body_format=body_format)
    )
    build = time.monotonic() - t
    procs = _processes(pipeline_dir) if pipeline_dir is not None else {}
    if backlog and "worker" not in procs:
        raise RuntimeError("--backlog needs the pipeline's worker process (use --spawn)")
    procs["replay"] = psutil.Process()
    cpu0 = {k: _cpu(p) for k, p in procs.items()}
    m0 = scrape(url)
    before = total(m0, "lossproof_worker_points_total")
    compacted0 = total(m0, "lossproof_store_compacted_points_total")
    progress(f"replaying {requests:,} requests ({nbytes / 2**20:,.1f} MiB) into {url} ...")
    opts = ReplayOptions(
        data_dir=work_dir,
        url=url,
        api_key=key,
        rate=rate,
        concurrency=concurrency,
        batch_points=batch_points,
        progress_interval=5.0,
    )
    # a worker that is down: its compactor (a child of it) is down too
    paused = [procs[k] for k in ("worker", "compactor") if backlog and k in procs]
    for p in paused:
        p.suspend()
    live_agent = LiveAgent(url, key) if live else None
    if live_agent is not None:
        live_agent.start()
    try:
        started = time.monotonic()
        try:
            summary = aio.run(Replay(opts, _Lines(progress)).run())
            replay_s = time.monotonic() - started
        finally:
            live_res = live_agent.stop() if live_agent is not None else None
    finally:
        for p in paused:
            p.resume()
    resumed = time.monotonic()
    if summary.error:
        raise RuntimeError(f"replay failed: {summary.error}")
    if summary.requests <= summary.rejected:
        raise RuntimeError(f"replay failed: nothing acknowledged ({summary.rejected} requests rejected)")
    progress("waiting for the worker to store everything ...")
    # (the live agent's points are stored too)
    extra = live_res.points if live_res is not None else 0
    ok = _wait_stored(url, before + agents * reports * points + extra, timeout)
    stored_s = time.monotonic() - started if ok else math.inf
    drain_s = (time.monotonic() - resumed if ok else math.inf) if backlog else None
    cpu = {k: _cpu(p) - cpu0[k] for k, p in procs.items()}  # until everything is stored
    compacted_s = None
    if ok and pipeline_dir is not None:
        progress("waiting for compaction to finish ...")
        done = _wait_compacted(pipeline_dir, timeout)
        compacted_s = None if done is None else done - (resumed if backlog else started)
        if "compactor" in procs:
            cpu["compactor, until all packed"] = _cpu(procs["compactor"]) - cpu0["compactor"]
    compacted = total(scrape(url), "lossproof_store_compacted_points_total") - compacted0
    return ReplayBenchResult(
        agents,
        reports,
        points,
        summary.requests,
        nbytes,
        build,
        replay_s,
        stored_s,
        summary.retries,
        summary.rejected,
        cpu,
        drain_s,
        compacted_s,
        compacted,
        live_res,
    )


@click.command()
@click.option("--url", default=None, help="A running pipeline (default: --spawn one).")
@click.option("--api-key", envvar="LOSSPROOF_API_KEY", default=None)
@click.option("--spawn", is_flag=True, help="Start a fresh `lossproof up` in a temp dir.")
@click.option("--agents", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--reports", type=click.IntRange(1, 10_000_000), default=600, show_default=True)
@click.option("--points", type=click.IntRange(0, 100_000), default=500, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 256), default=DEFAULT_CONCURRENCY, show_default=True)
@click.option("--rate", type=finite_float(0, min_open=True), default=None, help="Replay --rate (requests/s).")
@click.option(
    "--batch-points",
    type=click.IntRange(0, 10_000_000),
    default=DEFAULT_BATCH_POINTS,
    show_default=True,
    help="Replay --batch-points (0: a request per journal record).",
)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option(
    "--format",
    "body_format",
    type=click.Choice(["json", "msgpack"]),
    default="json",
    show_default=True,
    help="The requests' bodies: plain JSON, or msgpack as the agent sends them.",
)
@click.option(
    "--backlog",
    is_flag=True,
    help="Pause the worker during the replay, then time its drain of the backlog alone (--spawn).",
)
def main(
    url: str | None,
    api_key: str | None,
    spawn: bool,
    agents: int,
    reports: int,
    points: int,
    concurrency: int,
    rate: float | None,
    batch_points: int,
    work_dir: Path | None,
    body_format: str,
    backlog: bool,
) -> None:
    """Replay catch-up: reports/s and points/s stored from a fallback journal."""
    from lossproof.bench.spawn import check_pipeline, spawned_pipeline

    if spawn and url is not None:
        raise click.ClickException("give --spawn or --url, not both")
    if backlog and url is not None:
        raise click.ClickException("--backlog pauses the worker of a pipeline it starts: use --spawn")
    if url is not None:
        url = check_pipeline(url, api_key)

    def say(m: str) -> None:
        click.echo(f"  {m}", err=True)

    with tempfile.TemporaryDirectory(prefix="lossproof-bench-replay-", dir=work_dir) as tmp:
        fb = Path(tmp) / "fallback"
        try:
            with contextlib.ExitStack() as stack:
                pipeline_dir: Path | None = None
                if url is None:
                    pipeline_dir = Path(tmp) / "data"
                    u, k = stack.enter_context(spawned_pipeline(pipeline_dir))
                else:
                    assert api_key is not None
                    u, k = url, api_key
                res = run_replay_bench(
                    u,
                    k,
                    fb,
                    agents,
                    reports,
                    points,
                    concurrency,
                    rate,
                    progress=say,
                    pipeline_dir=pipeline_dir,
                    backlog=backlog,
                    body_format=body_format,
                    batch_points=batch_points,
                )
        except RuntimeError as e:
            raise click.ClickException(str(e)) from None
    for line in res.lines():
        click.echo(line)


if __name__ == "__main__":
    main()
