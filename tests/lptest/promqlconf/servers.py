"""The two servers of the conformance test, as real processes on loopback, and loading them.

Debian's Prometheus (``/usr/bin/prometheus``) with ``--web.enable-remote-write-receiver`` on a temp
TSDB, and ``lossproof up`` on embedded defaults (:func:`lossproof.bench.spawn.spawned_pipeline`). Both
get the same Prometheus remote-write 1.0 bodies, built with the protobuf classes lossproof reads.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cramjam
import urllib3

from lossproof.bench.spawn import free_port, spawned_pipeline, terminate
from lossproof.protocol import promrw
from lptest.promqlconf import data

PROMETHEUS = "prometheus"
HTTP = urllib3.PoolManager(maxsize=16, timeout=urllib3.Timeout(connect=5, read=60), retries=False)
RW_HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "lossproof-promql-conformance",
}
SLICE_MS = 10 * 60_000  # one remote-write body per 10 minutes of data (all series)


class ServerFailed(Exception):
    """A server did not start, refused the data, or never had all of it (one line)."""


@dataclass
class Server:
    name: str  # "prometheus" or "lossproof"
    url: str
    headers: dict[str, str]

    def get(self, path: str, params: dict[str, str]) -> tuple[int, Any]:
        """(HTTP status, parsed JSON body or None); raises urllib3's errors on connection trouble."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        r = HTTP.request("GET", url, headers=self.headers)
        try:
            body = json.loads(r.data)
        except ValueError:
            body = {"error": r.data[:300].decode(errors="replace")}
        return r.status, body

    def write(self, body: bytes) -> None:
        r = HTTP.request(
            "POST", self.url + "/api/v1/write", body=body, headers={**RW_HEADERS, **self.headers}
        )
        if not 200 <= r.status < 300:
            raise ServerFailed(f"{self.name} refused remote write: HTTP {r.status}: {r.data[:300]!r}")


def prometheus_version() -> str:
    exe = shutil.which(PROMETHEUS)
    if exe is None:
        return ""
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    first = (out.stdout or out.stderr).splitlines()
    return first[0] if first else ""


@contextlib.contextmanager
def prometheus(work: Path, out_of_order_window: str = "") -> Iterator[Server]:
    """Debian's Prometheus on a temp TSDB under ``work``; ``out_of_order_window`` (e.g. ``"3h"``)
    makes it accept samples out of time order (by default it refuses them, and the conformance data
    is sent in time order)."""
    exe = shutil.which(PROMETHEUS)
    if exe is None:
        raise ServerFailed("prometheus is not installed (Debian package prometheus)")
    work.mkdir(parents=True, exist_ok=True)
    config = work / "prometheus.yml"
    # no scrapes, no rules: remote write is the only input
    storage = {"tsdb": {"out_of_order_time_window": out_of_order_window}} if out_of_order_window else {}
    config.write_text(json.dumps({"global": {}, "storage": storage}))  # YAML is a superset of JSON
    port = free_port()
    argv = [
        exe,
        f"--config.file={config}",
        f"--storage.tsdb.path={work / 'tsdb'}",
        # the data is in early 2026: no retention may delete it
        "--storage.tsdb.retention.time=100y",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-remote-write-receiver",
        "--log.level=warn",
    ]
    log_path = work / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip()[-300:]
                raise ServerFailed(f"prometheus exited with {proc.returncode}: {tail}")
            try:
                if HTTP.request("GET", url + "/-/ready", timeout=2).status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerFailed(f"prometheus on {url} is not ready after 30 s")
            time.sleep(0.1)
        yield Server("prometheus", url, {})
    finally:
        terminate(proc)


@contextlib.contextmanager
def lossproof(work: Path, windows: str = "prometheus3") -> Iterator[Server]:
    """``lossproof up`` on embedded defaults but for ``[query] windows`` (written to its config file
    first, as a user would; the key comes from the environment)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "data").mkdir(exist_ok=True)
    (work / "data" / "lossproof.toml").write_text(f'[query]\nwindows = "{windows}"\n')
    try:
        with spawned_pipeline(work / "data", log_file=work / "up.log") as (url, key):
            yield Server("lossproof", url, {"Authorization": f"Bearer {key}"})
    except Exception as e:
        if type(e).__name__ == "ClickException":  # spawned_pipeline's one-line failure
            raise ServerFailed(str(e)) from None
        raise


def bodies(ds: data.DataSet) -> list[bytes]:
    """The data set as remote-write 1.0 bodies (snappy), in time order.

    Its fixed date in the past is fine for a fresh TSDB: Prometheus refuses only samples older than
    its newest one of the series, or more than an hour older than its head's newest sample, and
    bodies of 10 minutes sent in time order are neither."""
    out = []
    for part in ds.slices(SLICE_MS):
        req = promrw.WriteRequest()
        for labels, points in part.items():
            ts = req.timeseries.add()
            for name, value in labels:  # sorted by name, as Prometheus sends them
                lab = ts.labels.add()
                lab.name, lab.value = name, value
            for t, v in points:
                s = ts.samples.add()
                s.timestamp, s.value = t, v
        out.append(bytes(cramjam.snappy.compress_raw(req.SerializeToString())))
    return out


def stored_samples(server: Server, names: list[str]) -> float:
    """Samples the server answers for the data's whole span (``count_over_time``, per metric name:
    without its name two series could have one label set; Prometheus leaves staleness markers out)."""
    span_s = (data.STOP_MS - data.START_MS) // 1000 + 60
    total = 0.0
    for name in names:
        q = f"sum(count_over_time({name}[{span_s}s]))"
        status, body = server.get("/api/v1/query", {"query": q, "time": f"{data.STOP_MS / 1000 + 10:.3f}"})
        if status != 200:
            raise ServerFailed(f"{server.name}: HTTP {status} for {q}: {body.get('error', body)}")
        result = body["data"]["result"]
        total += float(result[0]["value"][1]) if result else 0.0
    return total


def worker_points(server: Server) -> float:
    """Samples lossproof's worker committed to the store (``/metrics``, public)."""
    r = HTTP.request("GET", server.url + "/metrics")
    total = 0.0
    for line in r.data.decode(errors="replace").splitlines():
        if line.startswith("lossproof_worker_points_total"):
            total += float(line.rpartition(" ")[2])
    return total


def load(servers: list[Server], ds: data.DataSet, timeout: float = 120) -> dict[str, float]:
    """Send the data set to every server, then wait until each has all of it: Prometheus answers the
    count of non-stale samples (its remote-write receiver appends before it answers), lossproof's
    worker has committed every sample sent (staleness markers are samples too). Returns the
    ``count_over_time`` each answers."""
    names = sorted({dict(labels)["__name__"] for labels in ds.series})
    want_total = ds.samples
    want_live = want_total - ds.stale_markers
    before = {s.name: worker_points(s) for s in servers if s.name == "lossproof"}
    for body in bodies(ds):
        for s in servers:
            s.write(body)
    counts: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    for s in servers:
        while True:
            if s.name == "lossproof":
                done = worker_points(s) - before[s.name] >= want_total
            else:
                done = stored_samples(s, names) >= want_live
            if done:
                break
            if time.monotonic() > deadline:
                got = stored_samples(s, names)
                raise ServerFailed(f"{s.name} has {got:,.0f} of {want_live:,} samples after {timeout:.0f} s")
            time.sleep(0.2)
        counts[s.name] = stored_samples(s, names)
    if counts.get("prometheus", want_live) != want_live:
        raise ServerFailed(f"prometheus answers {counts['prometheus']:,.0f} samples, {want_live:,} were sent")
    return counts
