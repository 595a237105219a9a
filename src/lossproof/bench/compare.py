"""``lossproof bench compare``: lossproof beside VictoriaMetrics, same bodies, same machine, one run.

Two fresh servers per phase, each on its own temp dir and loopback port: Debian's single-node
VictoriaMetrics (``/usr/bin/victoria-metrics``, started with ``-search.disableCache`` and
``-search.latencyOffset=0``) and ``lossproof up`` on embedded defaults (:mod:`lossproof.bench.spawn`).
Both get the same Prometheus remote-write 1.0 bodies (:mod:`lossproof.bench.rwbodies`), one target
at a time so neither shares the 2 cores with the other.

ingest
    A pool of distinct bodies (1,000 series x 10 samples; body ``b`` holds samples ``10b..10b+9`` of
    every series, one second apart: no sample is in two bodies) is written to files, and ``wrk``
    (2 threads, 16 connections) posts them for ``--duration`` seconds, thread ``i`` of ``T`` taking
    bodies ``i, i+T, i+2T, ...`` and reading each file when it sends it. The pool is sized for the
    duration (``--pool``); should a thread run past its end it starts over, and those requests
    carry samples already sent: they count as acked but not as new, so *stored* counts distinct
    samples only (the summary says how many requests repeated). Acked samples/s = 2xx responses x
    samples per body / duration (non-2xx are counted and reported). Stored samples/s = distinct
    acked samples / (load time + time until all of them are queryable): VictoriaMetrics is asked
    ``/internal/force_flush`` and then ``count_over_time`` of the series; lossproof's worker counts
    what it committed to the store (``lossproof_worker_points_total``, only new samples count).
    ``--steady SECONDS`` then drives lossproof alone at 80 % of its acked maximum (or, with
    ``--steady-of stored``, of its stored rate) with an aiohttp driver on a fixed schedule, and
    samples the worker lag (acked minus stored samples) every second: bounded when it grows by
    less than 2 % of the offered rate per second over the second half.

queries
    A data set of ``--series`` series x ``--hours`` at 15 s (default 10,000 x 24 h: 57.6 M samples)
    is sent to both (``m1``, ``m3`` and ``m4`` a tenth of the series each, ``m2`` the rest; labels
    ``job`` (10 values), ``host`` (``h0`` .. one per ``m3`` series) and ``instance``; ``m1``/``m2`` are
    counters, ``m3``/``m4`` gauges; samples at 7 s past a 15 s mark, so no evaluation step falls on
    a sample), and besides them a classic histogram ``m5_bucket`` (one per hundred series, at least
    one, each of 10 ``le`` buckets: 1,000 more series, 5.76 M more samples by default). Once both
    have stored all of it, each query runs ``--repeat`` times on each, one at a time, uncached
    (``nocache=1`` and ``-search.disableCache`` for VictoriaMetrics; lossproof has no result cache),
    the runs alternating between the two, and each one's median is reported (the time until the
    whole answer was received; not this client's JSON parsing of it). Results must agree:
    the same series (label sets), and values within 1e-6 relative at every common timestamp,
    leaving out the first 6 minutes of the data (there ``rate`` differs by design: VictoriaMetrics
    does not extrapolate to the window's edges as Prometheus, and so lossproof, do). A query
    lossproof refuses as unsupported PromQL (4xx naming it) is reported so, timed for
    VictoriaMetrics only, and does not count as a disagreement. A
    concurrency check times a one-series instant query against lossproof alone and while the
    heaviest query runs. The queries run twice: *as loaded*, right after both have stored the
    data (lossproof's background compaction still flushing and packing then), and *at rest*, after
    the disk figures below (VictoriaMetrics force-flushed and force-merged, lossproof's
    compaction with nothing left to do, or ``--compact-wait`` run out: the summary says which);
    both passes are reported, each query's median and ratio, with the load average at the pass's start.

disk
    After the load: VictoriaMetrics' data dir after ``/internal/force_flush`` and
    ``/internal/force_merge`` (once its size is stable), lossproof's store file(s) and, apart, its log
    dir; bytes per stored sample. lossproof's store is measured twice: as the load left it, and once
    its compaction has nothing left to do (read from the store file: no part left to flush and no
    flush waiting to be packed, ``meta.unpacked_flushes`` 0; that takes up to ``_PACK_AGE_MS``, 5
    minutes, after the load), with what the file then holds: chunk payload bytes, the raw (unpacked)
    chunks compaction left, SQLite's free pages, and the WAL apart. The log's segments are never
    counted in the store's figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import urllib3

from lossproof.bench.rwbodies import HEADERS, SeriesSet, body_path, write_pool
from lossproof.bench.spawn import free_port, terminate
from lossproof.cliutil import finite_float

VM_BINARY = "/usr/bin/victoria-metrics"
INGEST_SERIES = 1000
INGEST_SAMPLES = 10  # per series per body
INGEST_STEP_MS = 1000
DATA_STEP_MS = 15_000
DATA_OFFSET_MS = 7_000  # samples at 7 s past each 15 s mark: no query step lands on one
WRK_THREADS = 2
WRK_CONNECTIONS = 16
COMPARE_AFTER_MS = 6 * 60_000  # rate() differs by design over the data's first 5 minutes
HISTOGRAM_LE = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf")
REL_TOL = 1e-6

Say = Callable[[str], None]
_HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=600), retries=False, maxsize=4)


class CompareFailed(Exception):
    """A server did not start, refused the load, or never stored it (one line, for the CLI)."""


class QueryUnsupported(Exception):
    """lossproof refused a query as PromQL it does not support (a 4xx whose message says so)."""


def missing_tools() -> list[str]:
    """What this benchmark needs of the machine and does not find (scripts/deps/compare.sh)."""
    out = []
    if not os.access(VM_BINARY, os.X_OK):
        out.append(f"{VM_BINARY} (Debian package victoria-metrics)")
    if shutil.which("wrk") is None:
        out.append("wrk (Debian package wrk)")
    return out


# --- the two servers -------------------------------------------------------------------------------


@dataclass
class Target:
    name: str  # "vm" or "lossproof"
    url: str
    auth: dict[str, str]
    data_dir: Path
    pid: int = 0

    @property
    def write_url(self) -> str:
        return self.url + "/api/v1/write"

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET ``path`` (JSON answer, parsed): see :meth:`fetch`."""
        return json.loads(self.fetch(path, params))

    def fetch(self, path: str, params: dict[str, Any] | None = None) -> bytes:
        """GET ``path``, its whole answer's bytes; raises QueryUnsupported on lossproof's 4xx for
        unsupported PromQL, CompareFailed on any other non-200."""
        q = dict(params or {})
        if self.name == "vm":
            q["nocache"] = "1"
        url = self.url + path + ("?" + urllib.parse.urlencode(q) if q else "")
        r = _HTTP.request("GET", url, headers=self.auth)
        if r.status != 200:
            text = r.data[:300].decode(errors="replace")
            if self.name == "lossproof" and 400 <= r.status < 500 and "unsupported promql" in text.lower():
                try:
                    raise QueryUnsupported(str(json.loads(r.data)["error"]))
                except (ValueError, KeyError, TypeError):
                    raise QueryUnsupported(text) from None
            raise CompareFailed(f"{self.name}: HTTP {r.status} from {path}: {text}")
        data: bytes = r.data
        return data

    def metrics(self) -> dict[str, float]:
        """``/metrics``: each sample as written (``name{labels}``), and each name (labels stripped)
        with the sum of its samples. Asked without a key: a tenant's key is refused there, and the
        pipeline's counters are public."""
        r = _HTTP.request("GET", self.url + "/metrics")
        out: dict[str, float] = {}
        for line in r.data.decode(errors="replace").splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, raw = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            try:
                value = float(raw)
            except ValueError:
                continue
            out[name] = out.get(name, 0.0) + value
            if name_labels != name:
                out[name_labels] = value
        return out

    def flush(self) -> None:
        if self.name == "vm":
            _HTTP.request("GET", self.url + "/internal/force_flush")


def _wait_http(url: str, seconds: float, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            if _HTTP.request("GET", url, timeout=2).status == 200:
                return True
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def victoria_metrics(data_dir: Path, dedup: bool = False) -> Iterator[Target]:
    """A fresh single-node VictoriaMetrics on ``data_dir``; stopped (SIGTERM) on exit. ``dedup``:
    samples of one series with one timestamp count once (``-dedup.minScrapeInterval=1ms``), as
    lossproof stores them once: the ingest phase's repeated bodies, if any, are not new samples."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir.parent / "victoria-metrics.log").open("wb")
    argv = [
        VM_BINARY,
        f"-storageDataPath={data_dir}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=100y",  # the data's age must not matter
        "-search.disableCache",
        "-search.latencyOffset=0s",  # the newest points are answered, as lossproof does
        "-loggerLevel=ERROR",
    ]
    if dedup:
        argv.append("-dedup.minScrapeInterval=1ms")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        if not _wait_http(url + "/health", 30, lambda: proc.poll() is None):
            tail = (data_dir.parent / "victoria-metrics.log").read_text(errors="replace")[-300:]
            raise CompareFailed(f"victoria-metrics on {url} did not start: {tail.strip() or proc.returncode}")
        yield Target("vm", url, {}, data_dir, proc.pid)
    finally:
        terminate(proc)
        log.close()


@contextlib.contextmanager
def lossproof_up(data_dir: Path) -> Iterator[Target]:
    from lossproof.bench.spawn import spawned_pipeline

    pids: list[int] = []
    with spawned_pipeline(data_dir, pids=pids) as (url, key):
        yield Target("lossproof", url, {"Authorization": f"Bearer {key}"}, data_dir, pids[0])


@contextlib.contextmanager
def both(work: Path, phase: str) -> Iterator[tuple[Target, Target]]:
    with (
        victoria_metrics(work / f"{phase}-vm" / "data", dedup=phase == "ingest") as vm,
        lossproof_up(work / f"{phase}-lossproof") as lp,
    ):
        yield vm, lp


# --- ingest ----------------------------------------------------------------------------------------

_LUA = r"""
-- lossproof bench compare: POST the pool's body files in turn (thread i of T: i, i+T, i+2T, ...)
local dir, pool, nthreads, path = "@DIR@", @POOL@, @THREADS@, "@PATH@"
local threads, made = {}, 0
function setup(thread)
  made = made + 1
  thread:set("id", made)
  table.insert(threads, thread)
end
function init(args)
  nxt = id - 1
  sent, ok, bad, codes = 0, 0, 0, ""
  wrk.method = "POST"
@HEADERS@
end
function request()
  local f = io.open(string.format("%s/%06d.bin", dir, nxt % pool), "rb")
  local body = f:read("*a")
  f:close()
  nxt = nxt + nthreads
  sent = sent + 1
  return wrk.format("POST", path, nil, body)
end
function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
  else
    bad = bad + 1
    if #codes < 200 then codes = codes .. status .. " " end
  end
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format('LPWRK {"id": %d, "sent": %d, "ok": %d, "bad": %d, "codes": "%s"}\n',
      t:get("id"), t:get("sent"), t:get("ok"), t:get("bad"), t:get("codes")))
  end
  io.write(string.format('LPWRK {"seconds": %.6f, "errors": %d, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def lua_script(pool_dir: Path, pool: int, target: Target) -> str:
    headers = {**HEADERS, **target.auth}
    lines = "\n".join(f'  wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    return (
        _LUA.replace("@DIR@", str(pool_dir))
        .replace("@POOL@", str(pool))
        .replace("@THREADS@", str(WRK_THREADS))
        .replace("@PATH@", "/api/v1/write")
        .replace("@HEADERS@", lines)
    )


@dataclass
class WrkRun:
    seconds: float
    ok: int  # 2xx responses
    bad: int  # other responses
    codes: str
    errors: int  # socket errors and timeouts
    distinct_bodies: int  # bodies sent at least once (an upper bound on the distinct acked ones)
    repeated: int  # requests that carried a body sent before
    p50_ms: float
    p99_ms: float


def run_wrk(target: Target, pool_dir: Path, pool: int, seconds: int, work: Path, progress: Say) -> WrkRun:
    script = work / f"wrk-{target.name}.lua"
    script.write_text(lua_script(pool_dir, pool, target))
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--timeout", "60s"]
    argv += ["-s", str(script), target.write_url]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    before = _ingest_counters(target)
    started = time.monotonic()
    while proc.poll() is None:
        time.sleep(min(2.0, max(0.1, seconds + 1 - (time.monotonic() - started))))
        if proc.poll() is not None:
            break
        el = time.monotonic() - started
        now = _ingest_counters(target)
        progress(
            f"ingest {target.name}: {el:4.0f}s  {(now[0] - before[0]) / el:,.0f} samples/s received, "
            f"{(now[1] - before[1]) / el:,.0f} samples/s stored"
        )
    out = proc.communicate()[0]
    if proc.returncode != 0:
        raise CompareFailed(f"wrk against {target.name} exited {proc.returncode}: {out.strip()[-300:]}")
    rows = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("LPWRK ")]
    per_thread = [r for r in rows if "id" in r]
    summary = next(r for r in rows if "seconds" in r)
    distinct = repeated = 0
    for r in per_thread:
        own = len(range(r["id"] - 1, pool, WRK_THREADS))  # bodies of this thread's share of the pool
        distinct += min(r["sent"], own)
        repeated += max(0, r["sent"] - own)
    return WrkRun(
        seconds=summary["seconds"],
        ok=sum(r["ok"] for r in per_thread),
        bad=sum(r["bad"] for r in per_thread),
        codes=" ".join(r["codes"] for r in per_thread).strip(),
        errors=summary["errors"],
        distinct_bodies=distinct,
        repeated=repeated,
        p50_ms=summary["p50_ms"],
        p99_ms=summary["p99_ms"],
    )


def _ingest_counters(target: Target) -> tuple[float, float]:
    """(samples received, samples stored) by the server's own counters (progress lines only)."""
    m = target.metrics()
    if target.name == "vm":
        return m.get("vm_rows_inserted_total", 0.0), m.get("vm_rows_added_to_storage_total", 0.0)
    acked = m.get('lossproof_ingest_protocol_points_total{outcome="acked",protocol="prom-rw"}', 0.0)
    return acked, m.get("lossproof_worker_points_total", 0.0)


def stored_count(target: Target, metric: str, series_selector: str, window_s: int, at_s: float) -> float:
    """Samples of the benchmark's data that the target would answer now.

    VictoriaMetrics: flushed, then ``sum(count_over_time(...))`` over the window. lossproof: what its
    worker committed to the store (new samples only; committed is what the query API reads)."""
    if target.name == "vm":
        target.flush()
        q = f"sum(count_over_time({series_selector}[{window_s}s]))"
        res = target.get("/api/v1/query", {"query": q, "time": f"{at_s:.3f}"})["data"]["result"]
        return float(res[0]["value"][1]) if res else 0.0
    return target.metrics().get("lossproof_worker_points_total", 0.0)


def wait_stored(
    target: Target,
    want: float,
    count: Callable[[], float],
    timeout: float,
    progress: Say,
    what: str,
    settled: Callable[[], bool] = lambda: True,
) -> tuple[float, float]:
    """(seconds until ``count()`` reached ``want`` and ``settled()``, or inf; the last count)."""
    start = time.monotonic()
    last_say = start
    got = count()
    while got < want or not settled():
        if time.monotonic() - start > timeout:
            return math.inf, got
        time.sleep(0.2 if target.name == "lossproof" else 0.5)
        got = count()
        if time.monotonic() - last_say >= 5:
            last_say = time.monotonic()
            progress(f"{what} {target.name}: {got:,.0f} of {want:,.0f} samples stored")
    return time.monotonic() - start, got


@dataclass
class IngestResult:
    target: str
    seconds: float
    acked_samples: int
    acked_per_s: float
    non_2xx: int
    non_2xx_codes: str
    socket_errors: int
    repeated_requests: int
    distinct_samples: int
    stored_during_load_per_s: float
    drain_seconds: float
    stored_per_s: float
    ack_p50_ms: float
    ack_p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (round(v, 3) if isinstance(v, float) and math.isfinite(v) else v)
            for k, v in self.__dict__.items()
        }


def ingest_series() -> list[dict[str, str]]:
    return [
        {
            "__name__": "cmp_ingest",
            "job": f"job{j % 10}",
            "host": f"h{j % 100}",
            "instance": f"h{j % 100}:{9100 + j // 100}",
        }
        for j in range(INGEST_SERIES)
    ]


def _counter(j: int, k: int) -> float:
    return 1_000_000.0 + (j % 13 + 1) * 0.5 * k


def measure_ingest(
    target: Target, pool_dir: Path, pool: int, seconds: int, start_ms: int, work: Path, progress: Say
) -> IngestResult:
    per_body = INGEST_SERIES * INGEST_SAMPLES
    stored_before = 0.0 if target.name == "vm" else stored_count(target, "", "", 0, 0)
    progress(f"ingest {target.name}: wrk {WRK_THREADS} threads, {WRK_CONNECTIONS} connections, {seconds}s …")
    run = run_wrk(target, pool_dir, pool, seconds, work, progress)
    if run.ok == 0:
        raise CompareFailed(
            f"{target.name} acknowledged nothing in {run.seconds:.1f}s "
            f"(non-2xx {run.bad}: {run.codes or '-'}; socket errors {run.errors})"
        )
    # Distinct acked samples: each body sent at least once, less the refused requests (a refused
    # request may have been a first sending; at worst this undercounts, never overcounts).
    distinct = max(0, run.distinct_bodies - run.bad) * per_body if run.repeated else run.ok * per_body
    span_s = pool * INGEST_SAMPLES * INGEST_STEP_MS // 1000 + 60
    at_s = (start_ms + pool * INGEST_SAMPLES * INGEST_STEP_MS) / 1000 + 1

    def count() -> float:
        return stored_count(target, "cmp_ingest", '{__name__="cmp_ingest"}', span_s, at_s) - stored_before

    def settled() -> bool:
        # Repeated bodies store nothing new: lossproof is done when its worker has read everything.
        if target.name == "vm" or not run.repeated:
            return True
        return target.metrics().get("lossproof_worker_lag_records", 1.0) == 0

    during = count()
    timeout = max(120.0, seconds * 20.0)
    drain, got = wait_stored(target, distinct, count, timeout, progress, "ingest", settled)
    busy = run.seconds + (drain if math.isfinite(drain) else 0.0)
    return IngestResult(
        target=target.name,
        seconds=run.seconds,
        acked_samples=run.ok * per_body,
        acked_per_s=run.ok * per_body / run.seconds,
        non_2xx=run.bad,
        non_2xx_codes=run.codes,
        socket_errors=run.errors,
        repeated_requests=run.repeated,
        distinct_samples=distinct,
        stored_during_load_per_s=during / run.seconds,
        drain_seconds=drain,
        stored_per_s=got / busy,
        ack_p50_ms=run.p50_ms,
        ack_p99_ms=run.p99_ms,
    )


def steady_state(
    target: Target, pool_dir: Path, first_body: int, bodies: int, rate: float, seconds: float, progress: Say
) -> dict[str, Any]:
    """Post bodies ``first_body ..`` at ``rate`` samples/s for ``seconds`` (a fixed schedule, up to
    32 requests in flight); every second, the worker lag = acked minus stored samples."""
    import aiohttp

    per_body = INGEST_SERIES * INGEST_SAMPLES
    interval = per_body / rate
    stored0 = target.metrics().get("lossproof_worker_points_total", 0.0)
    acked = 0
    errors: dict[str, int] = {}
    samples: list[tuple[float, float, float]] = []  # (s since start, lag samples, lag records)
    behind = 0  # requests that could not start on time (the 32 slots were busy)

    async def main() -> None:
        nonlocal acked, behind
        sem = asyncio.Semaphore(32)
        headers = {**HEADERS, **target.auth}
        conn = aiohttp.TCPConnector(limit=34)
        async with aiohttp.ClientSession(connector=conn) as session:

            async def post(i: int) -> None:
                nonlocal acked
                try:
                    body = body_path(pool_dir, first_body + i % bodies).read_bytes()
                    async with session.post(target.write_url, data=body, headers=headers) as r:
                        await r.read()
                        if 200 <= r.status < 300:
                            acked += per_body
                        else:
                            errors[str(r.status)] = errors.get(str(r.status), 0) + 1
                except aiohttp.ClientError as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                finally:
                    sem.release()

            async def watch(start: float) -> None:
                loop = asyncio.get_running_loop()
                while time.monotonic() - start < seconds + 0.5:
                    await asyncio.sleep(1)
                    m = await loop.run_in_executor(None, target.metrics)
                    lag = acked - (m.get("lossproof_worker_points_total", 0.0) - stored0)
                    el = time.monotonic() - start
                    samples.append((el, lag, m.get("lossproof_worker_lag_records", 0.0)))
                    progress(
                        f"steady {target.name}: {el:4.0f}s  acked {acked / el:,.0f}/s, lag {lag:,.0f} samples"
                    )

            start = time.monotonic()
            watcher = asyncio.create_task(watch(start))
            tasks = []
            i = 0
            while time.monotonic() - start < seconds:
                due = start + i * interval
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if sem.locked():
                    behind += 1
                await sem.acquire()
                tasks.append(asyncio.create_task(post(i)))
                i += 1
            await asyncio.gather(*tasks)
            await watcher

    asyncio.run(main())
    lags = [lag for _, lag, _ in samples]
    half = len(lags) // 2
    slope = _slope(samples[half:]) if len(samples) - half >= 3 else math.nan
    # Bounded: over the second half the lag grows by less than 2 % of the offered rate per second.
    bounded = math.isfinite(slope) and slope < 0.02 * rate
    return {
        "target": target.name,
        "offered_per_s": round(rate),
        "seconds": seconds,
        "acked_per_s": round(acked / seconds),
        "late_requests": behind,
        "errors": errors,
        "lag_samples": [[round(t, 1), round(lag)] for t, lag, _ in samples],
        "lag_max": round(max(lags, default=0.0)),
        "lag_end": round(lags[-1]) if lags else 0,
        "lag_slope_per_s": round(slope) if math.isfinite(slope) else None,
        "bounded": bounded,
    }


def _slope(points: list[tuple[float, float, float]]) -> float:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else math.nan


def run_ingest(
    work: Path, seconds: int, pool: int, steady: float, steady_of: str, progress: Say
) -> dict[str, Any]:
    pool_dir = work / "bodies"
    sset = SeriesSet(ingest_series(), INGEST_SAMPLES, _counter)
    per_body = sset.samples_per_body
    # The pool's time ends a minute ago: body b holds seconds 10b .. 10b+9 from its start.
    span_ms = pool * INGEST_SAMPLES * INGEST_STEP_MS
    start_ms = (int(time.time()) - 60) * 1000 - span_ms
    progress(f"ingest: writing {pool:,} bodies of {INGEST_SERIES} series x {INGEST_SAMPLES} samples …")
    t0 = time.monotonic()
    size = write_pool(pool_dir, sset, pool, start_ms, INGEST_STEP_MS)
    progress(
        f"ingest: {size / 2**20:,.0f} MiB in {time.monotonic() - t0:.1f}s, "
        f"{size / pool / 1024:.1f} KiB per body"
    )
    results: dict[str, IngestResult] = {}
    steady_out: dict[str, Any] | None = None
    with both(work, "ingest") as (vm, lp):
        for target in (vm, lp):
            results[target.name] = measure_ingest(target, pool_dir, pool, seconds, start_ms, work, progress)
            r = results[target.name]
            progress(
                f"ingest {target.name}: acked {r.acked_per_s:,.0f} samples/s, stored {r.stored_per_s:,.0f} "
                f"samples/s (drained {r.drain_seconds:.1f}s after the load)"
            )
        if steady > 0:
            lp_res = results["lossproof"]
            rate = 0.8 * (lp_res.acked_per_s if steady_of == "acked" else lp_res.stored_per_s)
            bodies = max(1, math.ceil(rate * steady / per_body) + 1)
            # more of the same series, later in time: none of these samples was sent before
            progress(f"steady: writing {bodies:,} more bodies …")
            write_pool(pool_dir, sset, bodies, start_ms, INGEST_STEP_MS, first_body=pool)
            steady_out = steady_state(lp, pool_dir, pool, bodies, rate, steady, progress)
            steady_out["basis"] = f"80 % of lossproof's {steady_of} samples/s"
    out: dict[str, Any] = {
        "series_per_body": INGEST_SERIES,
        "samples_per_series": INGEST_SAMPLES,
        "body_kib": round(size / pool / 1024, 1),
        "pool": pool,
        "vm": results["vm"].as_dict(),
        "lossproof": results["lossproof"].as_dict(),
        "ratio_acked": _ratio(results["lossproof"].acked_per_s, results["vm"].acked_per_s),
        "ratio_stored": _ratio(results["lossproof"].stored_per_s, results["vm"].stored_per_s),
    }
    if steady_out is not None:
        out["steady"] = steady_out
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b and math.isfinite(a) and math.isfinite(b) else None


# --- the 24 h data set and the queries -------------------------------------------------------------


@dataclass
class DataSet:
    series: int
    hours: float
    end_ms: int  # a multiple of 60 s; the last sample is 8 s before it

    @property
    def samples_per_series(self) -> int:
        return int(self.hours * 3_600_000) // DATA_STEP_MS

    @property
    def start_ms(self) -> int:
        return self.end_ms - self.samples_per_series * DATA_STEP_MS

    @property
    def total(self) -> int:
        return sum(self.counts().values()) * self.samples_per_series

    def counts(self) -> dict[str, int]:
        tenth = max(1, self.series // 10)
        return {
            "m1": tenth,
            "m2": max(1, self.series - 3 * tenth),
            "m3": tenth,
            "m4": tenth,
            "m5_bucket": self.histograms * len(HISTOGRAM_LE),
        }

    @property
    def histograms(self) -> int:
        return max(1, self.series // 100)

    def labels(self) -> list[dict[str, str]]:
        hosts = self.counts()["m3"]
        out = []
        for metric, n in self.counts().items():
            for j in range(n):
                # m5_bucket: histogram j // 10, bucket j % 10 (le); its labels are those of series j // 10
                h = j // len(HISTOGRAM_LE) if metric == "m5_bucket" else j
                host = f"h{h % hosts}"
                labels = {
                    "__name__": metric,
                    "job": f"job{h % 10}",
                    "host": host,
                    "instance": f"{host}:{9100 + h // hosts}",
                }
                if metric == "m5_bucket":
                    labels["le"] = HISTOGRAM_LE[j % len(HISTOGRAM_LE)]
                out.append(labels)
        return out


def _data_value(series: list[dict[str, str]], offset: int) -> Callable[[int, int], float]:
    """Values of series ``offset + j`` at sample ``k``. m1 and m2: counters rising by a constant step
    per series (``rate`` is then the same under PromQL's extrapolation and MetricsQL's previous-
    sample rule, so the answers can be compared; it also suits delta-of-delta encodings best).
    m3 and m4: gauges of pseudo-random values with two decimals (0.00 .. 99.99), as noisy as real
    ones, so the disk figures are not those of constant data. m5_bucket: cumulative bucket counters,
    each rising by a constant step too (``rate`` agrees for the same reason), the share of
    observations at or below bucket ``i`` being ``1 - 0.5 ** (i + 1)`` (all of them in ``+Inf``; no
    two buckets count alike, so no quantile falls where engines may break ties differently)."""
    counters = [s["__name__"] in ("m1", "m2") for s in series]
    buckets = [HISTOGRAM_LE.index(s["le"]) if s["__name__"] == "m5_bucket" else -1 for s in series]
    # which histogram each bucket series is of (its ordinal among the m5_bucket series // 10): all
    # buckets of one histogram count the same observations, so they stay cumulative
    ordinal = itertools.accumulate(b >= 0 for b in buckets)
    histogram = [(n - 1) // len(HISTOGRAM_LE) for n in ordinal]

    def value(j: int, k: int) -> float:
        j += offset
        if counters[j]:
            return 1_000_000.0 + (j % 13 + 1) * 0.5 * k
        if buckets[j] >= 0:
            i = buckets[j]
            per_sample = 1000 + 100 * (histogram[j] % 7)  # observations per 15 s
            share = 1.0 if i == len(HISTOGRAM_LE) - 1 else 1 - 0.5 ** (i + 1)
            return 1000.0 + k * math.floor(per_sample * share)
        h = (j * 2654435761 + k * 40503) & 0xFFFFFFFF
        h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
        return (h ^ (h >> 12)) % 10000 / 100

    return value


def load_data(data: DataSet, targets: tuple[Target, ...], progress: Say) -> float:
    """Send the data set to every target (bodies of 1,000 series x 10 samples, in time order, 4 in
    flight per target); returns the seconds taken. Bodies are made once and sent to each target."""
    import aiohttp

    labels = data.labels()
    chunk = INGEST_SERIES
    groups = [labels[i : i + chunk] for i in range(0, len(labels), chunk)]
    offsets = list(range(0, len(labels), chunk))
    sets = [
        SeriesSet(g, INGEST_SAMPLES, _data_value(labels, off)) for g, off in zip(groups, offsets, strict=True)
    ]
    steps = data.samples_per_series
    first_t = data.start_ms + DATA_OFFSET_MS
    bodies_total = len(sets) * math.ceil(steps / INGEST_SAMPLES)
    failures: list[str] = []

    async def main() -> None:
        queues = {t.name: asyncio.Queue[bytes | None](maxsize=8) for t in targets}
        conn = aiohttp.TCPConnector(limit=16)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

            async def sender(t: Target) -> None:
                q = queues[t.name]
                headers = {**HEADERS, **t.auth}
                while (body := await q.get()) is not None:
                    for attempt in range(20):
                        retry = True
                        try:
                            async with session.post(t.write_url, data=body, headers=headers) as r:
                                text = await r.read()
                                if 200 <= r.status < 300:
                                    break
                                why = f"HTTP {r.status}: {text[:200].decode(errors='replace')}"
                                retry = r.status >= 500 or r.status == 429
                        except aiohttp.ClientError as e:
                            why = f"{type(e).__name__}: {e}"
                        if not retry or attempt == 19:
                            failures.append(f"{t.name}: {why}")
                            return
                        await asyncio.sleep(0.5)

            senders = [asyncio.create_task(sender(t)) for t in targets for _ in range(4)]
            loop = asyncio.get_running_loop()
            made = 0
            last_say = time.monotonic()
            started = time.monotonic()
            for first in range(0, steps, INGEST_SAMPLES):
                n = min(INGEST_SAMPLES, steps - first)
                times = [first_t + (first + s) * DATA_STEP_MS for s in range(n)]
                for sset in sets:
                    if n != sset.samples:
                        sset = SeriesSet(sset.series, n, sset.value)
                    body = await loop.run_in_executor(None, sset.body, first, times)
                    for q in queues.values():
                        await q.put(body)
                    made += 1
                    if failures:
                        raise CompareFailed(failures[0])
                    if time.monotonic() - last_say >= 5:
                        last_say = time.monotonic()
                        el = last_say - started
                        progress(
                            f"load: {made:,} of {bodies_total:,} bodies sent to both "
                            f"({made * chunk * INGEST_SAMPLES / el:,.0f} samples/s)"
                        )
            for q in queues.values():
                for _ in range(4):
                    await q.put(None)
            await asyncio.gather(*senders)

    started = time.monotonic()
    asyncio.run(main())
    if failures:
        raise CompareFailed(failures[0])
    return time.monotonic() - started


QUERIES: list[tuple[str, str, str]] = [
    # (name, endpoint, PromQL); the time range of each is set in query_params
    ("rate_m1_1h", "/api/v1/query_range", "rate(m1[5m])"),
    ("sum_rate_m2_24h", "/api/v1/query_range", "sum by (job) (rate(m2[5m]))"),
    ("m3_regex_24h", "/api/v1/query_range", 'm3{host=~"h1.*"}'),
    ("avg_over_time_m4_1h", "/api/v1/query", "avg_over_time(m4[1h])"),
    (
        "histogram_quantile_m5_24h",
        "/api/v1/query_range",
        "histogram_quantile(0.9, sum by (le) (rate(m5_bucket[5m])))",
    ),
    ("topk_m4_1h", "/api/v1/query", "topk(10, avg_over_time(m4[1h]))"),
    ("subquery_m1_1h", "/api/v1/query_range", "max_over_time(rate(m1[5m])[1h:1m])"),
    ("labels", "/api/v1/labels", ""),
    ("host_values", "/api/v1/label/host/values", ""),
    # the series index with match[]: a selector's series, and one label's values among them
    ("series_m3", "/api/v1/series", 'm3{host=~"h1.*"}'),
    ("instance_values_m3", "/api/v1/label/instance/values", 'm3{host=~"h1.*"}'),
]


def query_params(name: str, query: str, data: DataSet) -> dict[str, str]:
    end = data.end_ms // 1000
    start = data.start_ms // 1000
    if name == "rate_m1_1h":
        return {"query": query, "start": str(max(start, end - 3600)), "end": str(end), "step": "15"}
    if name == "subquery_m1_1h":
        return {"query": query, "start": str(max(start, end - 3600)), "end": str(end), "step": "60"}
    if name in ("sum_rate_m2_24h", "m3_regex_24h", "histogram_quantile_m5_24h"):
        return {"query": query, "start": str(start), "end": str(end), "step": "60"}
    if name in ("avg_over_time_m4_1h", "topk_m4_1h"):
        return {"query": query, "time": str(end)}
    if name in ("series_m3", "instance_values_m3"):
        return {"match[]": query, "start": str(start), "end": str(end)}
    return {"start": str(start), "end": str(end)}


def _series_map(data: Any, keep_name: bool) -> dict[tuple[tuple[str, str], ...], dict[float, float]]:
    """A query answer as {label set: {t: value}}; without ``__name__`` unless ``keep_name``."""
    out: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    for s in data["result"]:
        key = tuple(sorted((k, v) for k, v in s["metric"].items() if keep_name or k != "__name__"))
        pts = s.get("values") or [s["value"]]
        out[key] = {float(t): float(v) for t, v in pts}
    return out


def agree(name: str, a: Any, b: Any, data: DataSet) -> tuple[bool, str]:
    """Do two answers agree (same series; values within REL_TOL at common timestamps past the
    data's first minutes)? (verdict, one-line reason)."""
    if name == "series_m3":
        sa, sb = (sorted(tuple(sorted(x.items())) for x in ans["data"]) for ans in (a, b))
        if sa != sb:
            return False, f"{len(sa)} vs {len(sb)} series; only one side: {sorted(set(sa) ^ set(sb))[:3]}"
        return True, f"{len(sa)} series"
    if name in ("labels", "host_values", "instance_values_m3"):
        sa, sb = sorted(a["data"]), sorted(b["data"])
        if sa != sb:
            return False, f"{len(sa)} vs {len(sb)} values; only one side: {sorted(set(sa) ^ set(sb))[:5]}"
        return True, f"{len(sa)} values"
    # MetricsQL keeps the metric name through avg_over_time (and other functions that keep the
    # unit); PromQL drops it: the names are compared for the plain selector only.
    keep = name == "m3_regex_24h"
    ma, mb = _series_map(a["data"], keep), _series_map(b["data"], keep)
    if set(ma) != set(mb):
        only = sorted(set(ma) ^ set(mb))[:3]
        return False, f"{len(ma)} vs {len(mb)} series; e.g. only on one side: {only}"
    cutoff = (data.start_ms + COMPARE_AFTER_MS) / 1000
    compared = 0
    for key, pa in ma.items():
        pb = mb[key]
        common = [t for t in pa.keys() & pb.keys() if t >= cutoff]
        for t in common:
            if not math.isclose(pa[t], pb[t], rel_tol=REL_TOL, abs_tol=1e-9):
                return False, f"{dict(key)} at {t}: {pa[t]!r} vs {pb[t]!r}"
        compared += len(common)
        wanted = [t for t in pa.keys() | pb.keys() if t >= cutoff]
        if len(common) < len(wanted):
            return False, f"{dict(key)}: {len(wanted) - len(common)} timestamps on one side only"
    return True, f"{len(ma)} series, {compared:,} values"


def timed(target: Target, path: str, params: dict[str, str]) -> tuple[float, Any]:
    """(ms until the whole answer was received, the answer parsed). The client's parse is not
    timed: it is this Python client's cost, not the server's, and grows with the answer (a range
    answer of 48,200 values, 1.6 MB, took ~8 ms to answer and 21 ms for Python's ``json`` to read)."""
    t0 = time.perf_counter()
    raw = target.fetch(path, params)
    took = (time.perf_counter() - t0) * 1000
    return took, json.loads(raw)


def run_queries(data: DataSet, vm: Target, lp: Target, repeat: int, progress: Say) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, path, query in QUERIES:
        params = query_params(name, query, data)
        shown = query if path in ("/api/v1/query", "/api/v1/query_range") else f"{path} {query}".strip()
        row: dict[str, Any] = {"query": shown, "path": path}
        answers = {}
        ms: dict[str, list[float]] = {vm.name: [], lp.name: []}
        # the runs alternate between the two, so that both see the same background work (as
        # loaded: lossproof's packing and VictoriaMetrics' merges, both ending during the pass)
        for _ in range(repeat):
            for t in (vm, lp):
                if t.name == lp.name and "unsupported" in row:
                    continue
                try:
                    took, answers[t.name] = timed(t, path, params)
                    ms[t.name].append(took)
                except QueryUnsupported as e:
                    row["unsupported"] = str(e)
        for t in (vm, lp):
            row[f"{t.name}_ms"] = round(statistics.median(ms[t.name]), 1) if ms[t.name] else None
        if "unsupported" in row:
            row["ratio"], row["agree"], row["detail"] = None, None, row["unsupported"]
            progress(f"query {name}: vm {row['vm_ms']:,.1f} ms, lossproof: unsupported ({row['detail']})")
            out[name] = row
            continue
        row["ratio"] = _ratio(row["lossproof_ms"], row["vm_ms"])
        row["agree"], row["detail"] = agree(name, answers["vm"], answers["lossproof"], data)
        progress(
            f"query {name}: vm {row['vm_ms']:,.1f} ms, lossproof {row['lossproof_ms']:,.1f} ms, "
            f"agree {row['agree']} ({row['detail']})"
        )
        out[name] = row
    return out


def concurrency(data: DataSet, lp: Target, progress: Say) -> dict[str, Any]:
    """A one-series instant query against lossproof alone, then while the heaviest query runs."""
    short = {"query": 'm3{host="h1"}', "time": str(data.end_ms // 1000)}
    name, path, query = QUERIES[1]
    long_params = query_params(name, query, data)
    alone = [timed(lp, "/api/v1/query", short)[0] for _ in range(5)]
    long_ms: list[float] = []
    stop = threading.Event()

    def heavy() -> None:
        # again and again until the short ones are done: a single run (~100 ms now) ended before
        # the first short query was sent, which then measured nothing
        while not stop.is_set():
            long_ms.append(timed(lp, path, long_params)[0])

    th = threading.Thread(target=heavy, daemon=True)
    th.start()
    time.sleep(0.02)  # the long query is under way
    try:
        during = [timed(lp, "/api/v1/query", short)[0] for _ in range(5)]
    finally:
        stop.set()
        th.join()
    out = {
        "short_query": short["query"],
        "long_query": query,
        "short_alone_ms": round(statistics.median(alone), 1),
        "short_during_long_ms": round(statistics.median(during), 1),
        "short_during_samples": len(during),
        "long_ms": round(statistics.median(long_ms), 1) if long_ms else None,
    }
    progress(
        f"concurrency lossproof: {out['short_query']} alone {out['short_alone_ms']} ms, during "
        f"{query} {out['short_during_long_ms']} ms ({len(during)} runs; "
        f"the long one took {out['long_ms']} ms)"
    )
    return out


def dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def disk(
    data: DataSet, vm: Target, lp: Target, progress: Say, compact_wait_s: float = 600.0
) -> dict[str, Any]:
    from lossproof import config as config_mod

    progress("disk: victoria-metrics force_flush + force_merge …")
    vm.flush()
    _HTTP.request("GET", vm.url + "/internal/force_merge")
    last, stable_since, deadline = -1, time.monotonic(), time.monotonic() + 120
    while time.monotonic() < deadline:
        size = dir_bytes(vm.data_dir)
        if size != last:
            last, stable_since = size, time.monotonic()
        elif time.monotonic() - stable_since >= 5:
            break
        time.sleep(0.5)
    vm_bytes = dir_bytes(vm.data_dir)
    cfg = config_mod.load(lp.data_dir)
    store = cfg.store_path

    def store_bytes() -> int:  # the file, its -wal and -shm
        return sum(dir_bytes(p) for p in store.parent.glob(store.name + "*")) if store.exists() else 0

    loaded_bytes = store_bytes()
    log_bytes = dir_bytes(cfg.log_dir)
    n = data.total
    progress(f"disk: lossproof store as loaded {loaded_bytes / n:.2f} B/sample; waiting for its compaction …")
    started = time.monotonic()
    state = compaction_state(store)
    while not state["done"] and time.monotonic() - started < compact_wait_s:
        time.sleep(2)
        state = compaction_state(store)
    waited = time.monotonic() - started
    if not state["done"]:
        progress(f"disk: compaction not done after {waited:.0f}s: {state}")
    compacted = store_bytes()
    wal = dir_bytes(store.with_name(store.name + "-wal"))
    main = dir_bytes(store)
    out = {
        "samples": n,
        "vm_bytes": vm_bytes,
        "vm_bytes_per_sample": round(vm_bytes / n, 3),
        "lossproof_store_loaded_bytes": loaded_bytes,
        "lossproof_store_loaded_bytes_per_sample": round(loaded_bytes / n, 3),
        "lossproof_store_bytes": compacted,
        "lossproof_store_bytes_per_sample": round(compacted / n, 3),
        "lossproof_store_main_file_bytes_per_sample": round(main / n, 3),
        "lossproof_store_wal_bytes": wal,
        "lossproof_store_chunk_data_bytes_per_sample": round(state["chunk_bytes"] / n, 3),
        "lossproof_store_free_page_bytes": state["free_bytes"],
        "lossproof_compaction": {**state, "waited_s": round(waited, 1)},
        "lossproof_log_bytes": log_bytes,
        "lossproof_log_bytes_per_sample": round(log_bytes / n, 3),
        "ratio_store": _ratio(compacted, vm_bytes),
    }
    progress(
        f"disk: vm {vm_bytes / n:.2f} B/sample, lossproof store {compacted / n:.2f} B/sample compacted "
        f"({'done' if state['done'] else 'NOT done'} after {waited:.0f}s; file {main / n:.2f}, "
        f"chunk data {state['chunk_bytes'] / n:.2f}, WAL {wal / n:.2f}), {loaded_bytes / n:.2f} as loaded, "
        f"log {log_bytes / n:.2f} B/sample"
    )
    return out


def packing_done(store: Path) -> bool:
    """Whether the embedded store's compaction has packed every point (no part left, no flush
    waiting to be packed). Cheap enough to poll: :func:`compaction_state` reads every chunk, and
    polling it held a read transaction that slowed compaction down several times over."""
    import sqlite3

    con = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        con.execute("PRAGMA busy_timeout = 10000")
        parts = con.execute("SELECT EXISTS (SELECT 1 FROM parts)").fetchone()[0]
        row = con.execute("SELECT value FROM meta WHERE key = 'unpacked_flushes'").fetchone()
    finally:
        con.close()
    return not parts and not (row and int(row[0]))


def compaction_state(store: Path) -> dict[str, Any]:
    """What the embedded store's compaction has left to do, read from the file (readonly, a read
    transaction of its own): ``done`` when no part is left to flush into chunks, no flush waits
    to be packed, no pass merges windows, free pages were given back and the WAL truncated (the
    compactor then does nothing until new points come or a 12 h window ends; a merge pass due but
    not begun yet is not seen), with the raw chunks still
    there (compaction should have packed them all), the chunks' payload bytes and SQLite's page
    counts."""
    import sqlite3

    from lossproof.store.chunks import PACKED, PENDING, RAW, kind_of

    con = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        con.execute("PRAGMA busy_timeout = 10000")
        con.execute("BEGIN")
        parts = con.execute("SELECT count(*) FROM parts").fetchone()[0]
        kinds = dict.fromkeys((RAW, PACKED, PENDING), (0, 0, 0))
        for kind, count, points, size in con.execute(
            "SELECT hex(substr(data, 1, 1)), count(*), sum(n), sum(length(data)) FROM chunks GROUP BY 1"
        ):
            # (sealed or not: chunks.py, "Sealed"; the same kind either way)
            k = kind_of(bytes.fromhex(kind))
            had = kinds.get(k, (0, 0, 0))
            kinds[k] = (had[0] + count, (had[1] or 0) + (points or 0), (had[2] or 0) + (size or 0))
        row = con.execute("SELECT value FROM meta WHERE key = 'unpacked_flushes'").fetchone()
        unpacked_flushes = int(row[0]) if row else 0
        row = con.execute("SELECT value FROM meta WHERE key = 'merge_sid'").fetchone()
        merging = bool(row and int(row[0]) >= 0)  # a pass merging windows runs (compact.py)
        page = con.execute("PRAGMA page_size").fetchone()[0]
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        free = con.execute("PRAGMA freelist_count").fetchone()[0]
        reclaims = con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        con.execute("COMMIT")
    finally:
        con.close()
    wal = store.with_name(store.name + "-wal")
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    # Then compaction gives free pages back (down to a quarter of the file at most: see
    # store/embedded/compact.py, _reclaim) and truncates the WAL.
    space_done = wal_bytes == 0 and (not reclaims or free <= max(2048, pages // 4))
    return {
        "done": parts == 0 and unpacked_flushes == 0 and not merging and space_done,
        "wal_bytes": wal_bytes,
        "parts": parts,
        "unpacked_flushes": unpacked_flushes,
        "merging": merging,
        # (pending chunks too: packed by a flush, still to be merged by packing)
        "raw_chunks": kinds[RAW][0] + kinds[PENDING][0],
        "raw_points": (kinds[RAW][1] or 0) + (kinds[PENDING][1] or 0),
        "packed_chunks": kinds[PACKED][0],
        "packed_points": kinds[PACKED][1],
        "chunk_bytes": sum(size or 0 for _, _, size in kinds.values()),
        "page_size": page,
        "pages": pages,
        "free_bytes": free * page,
    }


def run_queries_phase(
    work: Path, data: DataSet, repeat: int, progress: Say, compact_wait: float = 600.0
) -> dict[str, Any]:
    progress(
        f"queries: {data.series:,} series x {data.samples_per_series:,} samples at 15 s "
        f"({data.total:,} samples) to both …"
    )
    with both(work, "queries") as (vm, lp):
        lp_before = lp.metrics().get("lossproof_worker_points_total", 0.0)
        took = load_data(data, (vm, lp), progress)
        progress(f"load: sent in {took:.1f}s; waiting until both have stored everything …")
        out: dict[str, Any] = {"series": data.series, "hours": data.hours, "samples": data.total}
        span = int(data.hours * 3600) + 60
        sel = '{__name__=~"m[1-4]|m5_bucket"}'
        for t in (vm, lp):
            started = time.monotonic()

            def count(t: Target = t) -> float:
                if t.name == "vm":
                    return stored_count(t, "", sel, span, data.end_ms / 1000)
                return stored_count(t, "", sel, span, 0) - lp_before

            drain, got = wait_stored(t, data.total, count, max(600.0, took * 20), progress, "load")
            if not math.isfinite(drain):
                raise CompareFailed(
                    f"{t.name} stored {got:,.0f} of {data.total:,} samples within the deadline"
                )
            out[f"{t.name}_stored_after_load_s"] = round(took + time.monotonic() - started, 1)
        progress("load: both have stored everything")
        progress("queries as loaded (lossproof's compaction still at work):")
        out["as_loaded_load_average"] = _load_average()
        out["queries"] = run_queries(data, vm, lp, repeat, progress)
        out["concurrency"] = concurrency(data, lp, progress)
        out["disk"] = disk(data, vm, lp, progress, compact_wait)
        # The same queries again, uncached as before, once both have nothing left to do:
        # VictoriaMetrics flushed and merged, lossproof's compaction done (disk() waited for both).
        done = out["disk"]["lossproof_compaction"]["done"]
        progress(
            "queries at rest (vm force_merge'd, lossproof compaction "
            f"{'done' if done else 'NOT done: see --compact-wait'}):"
        )
        out["at_rest_load_average"] = _load_average()
        out["queries_at_rest"] = run_queries(data, vm, lp, repeat, progress)
        out["at_rest_compaction_done"] = done
        # an unsupported query (agree None) is reported as such, not as a disagreement
        out["all_agree"] = all(
            r["agree"] is not False
            for rows in (out["queries"], out["queries_at_rest"])
            for r in rows.values()
        )
    return out


# --- the command's run ----------------------------------------------------------------------------


@dataclass
class Options:
    phase: str
    duration: int
    pool: int
    steady: float
    steady_of: str
    series: int
    hours: float
    repeat: int
    work_dir: Path | None = None
    say: Say = field(default=lambda s: None)
    compact_wait: float = 600.0


def run(opts: Options) -> dict[str, Any]:
    out: dict[str, Any] = {"cores": os.cpu_count(), "vcpu_pack": _vcpu_pack()}
    with tempfile.TemporaryDirectory(prefix="lossproof-compare-", dir=opts.work_dir) as tmp:
        work = Path(tmp)
        if opts.phase in ("ingest", "all"):
            out["ingest"] = run_ingest(work, opts.duration, opts.pool, opts.steady, opts.steady_of, opts.say)
            shutil.rmtree(work / "bodies", ignore_errors=True)
        if opts.phase in ("queries", "all"):
            end_ms = (int(time.time()) // 60 - 1) * 60_000
            data = DataSet(opts.series, opts.hours, end_ms)
            out["queries"] = run_queries_phase(work, data, opts.repeat, opts.say, opts.compact_wait)
    out["load_average"] = _load_average()
    return out


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _vcpu_pack(path: Path = Path("/proc/sys/kernel/sched_vcpu_pack")) -> int | None:
    """The guest kernel's vCPU packing setting where it has one (Firecracker guests), else None.
    Non-zero, a short burst of work runs on fewer vCPUs than the machine has: the first runs of
    a query after a pause, all of whose threads then share one (docs/compare.md, session 23)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def summary_lines(res: dict[str, Any]) -> list[str]:
    lines = []
    ing = res.get("ingest")
    if ing:
        vm, lp = ing["vm"], ing["lossproof"]
        lines.append(
            f"ingest: remote write 1.0, {ing['series_per_body']} series x "
            f"{ing['samples_per_series']} samples "
            f"per body ({ing['body_kib']} KiB), wrk {WRK_THREADS} threads / {WRK_CONNECTIONS} connections, "
            f"{vm['seconds']:.0f}s each"
        )
        lines.append(f"{'':24} {'victoria-metrics':>16} {'lossproof':>12} {'lossproof/vm':>13}")
        for label, key, rk in (
            ("acked samples/s", "acked_per_s", "ratio_acked"),
            ("stored samples/s", "stored_per_s", "ratio_stored"),
        ):
            lines.append(f"{label:24} {vm[key]:>16,.0f} {lp[key]:>12,.0f} {_fmt_ratio(ing[rk]):>13}")
        lines.append(
            f"{'stored during load/s':24} {vm['stored_during_load_per_s']:>16,.0f} "
            f"{lp['stored_during_load_per_s']:>12,.0f}"
        )
        lines.append(f"{'drain after load (s)':24} {vm['drain_seconds']:>16.1f} {lp['drain_seconds']:>12.1f}")
        lines.append(f"{'ack p50 / p99 (ms)':24} {_pp(vm):>16} {_pp(lp):>12}")
        lines.append(
            f"{'non-2xx / socket errors':24} {vm['non_2xx']:>8} / {vm['socket_errors']:<5} "
            f"{lp['non_2xx']:>5} / {lp['socket_errors']:<5}"
        )
        if vm["repeated_requests"] or lp["repeated_requests"]:
            lines.append(
                f"pool of {ing['pool']} bodies ran out: repeated requests vm {vm['repeated_requests']}, "
                f"lossproof {lp['repeated_requests']} (not counted as stored; raise --pool)"
            )
        st = ing.get("steady")
        if st:
            lines.append(
                f"steady lossproof at {st['offered_per_s']:,} samples/s ({st['basis']}) "
                f"for {st['seconds']:.0f}s: "
                f"acked {st['acked_per_s']:,}/s, worker lag max {st['lag_max']:,} samples, at end "
                f"{st['lag_end']:,}, trend {st['lag_slope_per_s']} samples/s: "
                f"{'bounded' if st['bounded'] else 'NOT bounded'}"
            )
    q = res.get("queries")
    if q:
        lines.append(
            f"queries: {q['series']:,} series x {q['hours']:g} h at 15 s ({q['samples']:,} samples), "
            "median of runs alternating between the two, each to its last byte received, uncached"
        )
        passes = (
            ("as loaded: right after the load, lossproof's compaction still at work", "as_loaded", "queries"),
            (
                "at rest: vm force_flush + force_merge, lossproof compaction "
                + ("done" if q.get("at_rest_compaction_done") else "NOT done (--compact-wait)"),
                "at_rest",
                "queries_at_rest",
            ),
        )
        for title, key, rows_key in passes:
            rows = q.get(rows_key)
            if rows is None:
                continue
            la = q.get(f"{key}_load_average")
            lines.append(f"{title}" + (f" (load average {la[0]:.1f} at its start)" if la else "") + ":")
            lines.extend(_query_rows(rows))
        c = q["concurrency"]
        lines.append(
            f"lossproof {c['short_query']}: alone {c['short_alone_ms']} ms, while {c['long_query']} "
            f"runs {c['short_during_long_ms']} ms (the long one: {c['long_ms']} ms)"
        )
        d = q["disk"]
        lines.append(
            f"disk per stored sample: vm {d['vm_bytes_per_sample']:.2f} B, lossproof store "
            f"{d['lossproof_store_bytes_per_sample']:.2f} B compacted "
            f"(ratio {_fmt_ratio(d['ratio_store'])}), "
            f"{d['lossproof_store_loaded_bytes_per_sample']:.2f} B as loaded, "
            f"lossproof log {d['lossproof_log_bytes_per_sample']:.2f} B"
        )
        c = d["lossproof_compaction"]
        lines.append(
            f"lossproof compaction {'done' if c['done'] else 'NOT done'} after {c['waited_s']:g} s "
            f"({c['parts']} parts, {c['raw_chunks']:,} raw chunks of {c['raw_points']:,} points left); "
            f"compacted store: file "
            f"{d['lossproof_store_main_file_bytes_per_sample']:.2f} B/sample, of which chunk data "
            f"{d['lossproof_store_chunk_data_bytes_per_sample']:.2f} B and free pages "
            f"{c['free_bytes'] / d['samples']:.2f} B; "
            f"WAL {d['lossproof_store_wal_bytes'] / d['samples']:.2f} B"
        )
    la = res["load_average"]
    pack = res.get("vcpu_pack")
    lines.append(
        f"load average {la[0]:.1f} {la[1]:.1f} {la[2]:.1f} on {res['cores']} cores"
        + (f"; the kernel packs short bursts onto fewer vCPUs (sched_vcpu_pack={pack})" if pack else "")
    )
    return lines


def _query_rows(rows: dict[str, Any]) -> list[str]:
    lines = [f"  {'query':44} {'vm ms':>9} {'lossproof ms':>13} {'ratio':>8}  agree"]
    for row in rows.values():
        if row.get("unsupported"):
            lines.append(f"  {row['query'][:44]:44} {row['vm_ms']:>9,.1f} {'unsupported':>13} {'-':>8}  -")
            continue
        lines.append(
            f"  {row['query'][:44]:44} {row['vm_ms']:>9,.1f} {row['lossproof_ms']:>13,.1f} "
            f"{_fmt_ratio(row['ratio']):>8}  {'yes' if row['agree'] else 'NO: ' + row['detail']}"
        )
    return lines


def _pp(r: dict[str, Any]) -> str:
    return f"{r['ack_p50_ms']:.0f} / {r['ack_p99_ms']:.0f}"


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


# --- the command ----------------------------------------------------------------------------------


@click.command("compare")
@click.option("--phase", type=click.Choice(["ingest", "queries", "all"]), default="all", show_default=True)
@click.option(
    "--duration",
    type=click.IntRange(1, 3600),
    default=20,
    show_default=True,
    help="Seconds of wrk per target.",
)
@click.option(
    "--pool",
    type=click.IntRange(0, 1_000_000),
    default=0,
    help="Distinct ingest bodies written beforehand (default: 1,200 per second of --duration).",
)
@click.option(
    "--steady",
    type=finite_float(0, 3600),
    default=0,
    show_default=True,
    help="Seconds at 80 % of lossproof's measured rate (--steady-of) after the ingest phase, with its "
    "worker lag (0: skip).",
)
@click.option(
    "--steady-of",
    type=click.Choice(["acked", "stored"]),
    default="acked",
    show_default=True,
    help="The rate --steady takes 80 % of: lossproof's acked maximum, or its stored rate.",
)
@click.option("--series", type=click.IntRange(10, 1_000_000), default=10_000, show_default=True)
@click.option(
    "--hours", type=finite_float(0.25, 24 * 30), default=24, show_default=True, help="Of data at 15 s."
)
@click.option("--repeat", type=click.IntRange(1, 100), default=5, show_default=True, help="Runs per query.")
@click.option(
    "--compact-wait",
    type=finite_float(0, 3600),
    default=600,
    show_default=True,
    help="Seconds the disk figures wait for lossproof's compaction to have nothing left to do "
    "(it packs up to 5 minutes after the load); 0 measures the store as loaded only.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the temp dir (bodies, both data dirs) goes (default: the system's temp dir).",
)
@click.option("--json", "as_json", is_flag=True, help="Also print every figure as one JSON line, last.")
def compare_cmd(
    phase: str,
    duration: int,
    pool: int,
    steady: float,
    steady_of: str,
    series: int,
    hours: float,
    repeat: int,
    compact_wait: float,
    work_dir: Path | None,
    as_json: bool,
) -> None:
    """lossproof beside VictoriaMetrics: remote-write ingest, queries and disk, same data, one run."""
    missing = missing_tools()
    if missing:
        raise click.ClickException(f"missing {', '.join(missing)}: run scripts/deps/compare.sh")
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        click.echo(f"  {msg}", err=True)

    pool = pool or duration * 1200  # 12 M samples/s: lossproof acked 7 M/s in a 2 s run
    opts = Options(
        phase, duration, pool, steady, steady_of, series, hours, repeat, work_dir, say, compact_wait
    )
    try:
        res = run(opts)
    except CompareFailed as e:
        raise click.ClickException(str(e)) from None
    for line in summary_lines(res):
        click.echo(line)
    if as_json:
        click.echo(json.dumps(res, separators=(",", ":")))
    q = res.get("queries")
    if q and not q["all_agree"]:
        raise click.ClickException("the two servers' answers differ (see the agree column)")
