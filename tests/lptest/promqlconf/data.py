"""The conformance test's data: what Prometheus would have scraped from a few targets, sample by sample.

Deterministic (no randomness, no wall clock): the values are functions of the scrape's index, and the
times are fixed (:data:`END_MS`, the evaluation time of the instant queries and the end of the range
queries, is 2026-03-01T00:04:00Z, so the 10-minute query window crosses a day and a month: the date
functions see both sides).

Targets are scraped every 5 s, each with its own fixed offset in milliseconds (none a whole second, so
no range-selector boundary of the queries, which are whole seconds, falls on a sample: the
window-boundary rule, where Prometheus 2.x and 3.x differ, shows only in the two queries of
mixin_queries.toml that put a window's ends on samples on purpose, ``offset 3763ms``).

Staleness is produced as Prometheus' scrape loop produces it: a series that was in the previous scrape
of a target and is missing from this one gets a staleness marker (the NaN ``0x7ff0000000000002``) at
this scrape's time, and a failed scrape writes ``up`` 0 and marks every series of the target stale.
Remote write sends those markers as ordinary samples, which is how both servers receive them.

Targets (the demo ones are shaped like the PromLabs demo service the compliance queries expect):

- job ``demo``, instances ``demo.promlabs.com:10000`` .. ``:10002``: ``demo_memory_usage_bytes``
  (``type``), ``demo_cpu_usage_seconds_total`` (``mode``), ``demo_num_cpus``, ``demo_disk_usage_bytes``
  / ``_total_bytes``, ``demo_batch_last_success_timestamp_seconds`` and ``_last_run_duration_seconds``,
  the classic histogram ``demo_api_request_duration_seconds`` (``_bucket`` with ``le``, ``_sum``,
  ``_count``; ``method``, ``path``, ``status``), ``demo_items_shipped_total``, ``demo_is_holiday``,
  ``demo_intermittent_metric`` (present in even minutes only: stale in odd ones), ``promhttp_metric_
  handler_requests_in_flight`` and ``_total`` (``code``), and ``demo_special_value`` (``case``: ordinary
  NaN and +-Inf samples among ordinary ones). ``:10000`` fails its scrapes for 30 s in the query
  window and ``:10002`` for a minute 55 minutes before the end. Instance ``:10001`` restarts 5
  minutes before the end and ``:10002`` 40 minutes before it: all their counters (the histogram's
  too) start again from 0.
- job ``node``, instances ``node-a:9100`` .. ``node-c:9100``: node-exporter's ``node_cpu_seconds_total``
  (``cpu``, ``mode``), memory, file system, network, load and disk series. ``node-b`` fails its scrapes
  from 9 to 7 minutes before the end (its series go stale, then come back); ``node-c`` fails from 4
  minutes before the end on (gone: ``up`` 0 and nothing else).
- job ``kube-state-metrics`` (``kube_pod_container_status_restarts_total``) and job ``apiserver``
  (``apiserver_request_total``, the classic histogram ``apiserver_request_duration_seconds``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

END_MS = 1_772_323_440_000  # 2026-03-01T00:04:00Z
SCRAPE_MS = 5_000
START_MS = END_MS - 100 * 60_000  # 1 h ranges, 10 m offsets and 5 m lookback before the window
STOP_MS = END_MS + 12 * 60_000  # negative offsets (up to 10 m) look past the end
RANGE_MS = 10 * 60_000  # the range queries: [END - 10 m, END] ...
STEP_MS = 10_000  # ... at 10 s (as the compliance tester queries)
STALE_NAN_BITS = 0x7FF0000000000002
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]

Labels = tuple[tuple[str, str], ...]  # sorted, __name__ included


def is_stale(v: float) -> bool:
    bits: int = struct.unpack("<Q", struct.pack("<d", v))[0]
    return bits == STALE_NAN_BITS


def noise(*key: int) -> float:
    """A fixed value in [0, 1) for ``key`` (splitmix64): deterministic "randomness"."""
    x = 0x9E3779B97F4A7C15
    for k in key:
        x = (x ^ (k & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
        x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x / 2.0**64


def _key(name: str, labels: dict[str, str]) -> Labels:
    return tuple(sorted({**labels, "__name__": name}.items()))


class Counter:
    """A counter that starts again from 0 at the scrapes where its process restarts."""

    def __init__(self, restarts: tuple[int, ...] = ()) -> None:
        self.restarts = restarts
        self.value = 0.0

    def add(self, k: int, inc: float) -> float:
        if k in self.restarts:
            self.value = 0.0
        self.value += inc
        return self.value


@dataclass
class Target:
    job: str
    instance: str
    offset_ms: int  # where in its 5 s interval this target is scraped
    # scrape index -> {series: value}, or None when the scrape fails
    scrape: Callable[[int, int], dict[Labels, float] | None]

    def time(self, k: int) -> int:
        return START_MS + k * SCRAPE_MS + self.offset_ms


@dataclass
class DataSet:
    series: dict[Labels, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return sum(len(s) for s in self.series.values())

    @property
    def stale_markers(self) -> int:
        return sum(1 for s in self.series.values() for _, v in s if is_stale(v))

    def slices(self, span_ms: int) -> Iterator[dict[Labels, list[tuple[int, float]]]]:
        """The samples in consecutive time slices of ``span_ms``, in time order (Prometheus refuses
        a sample older than its newest one of the series, and anything an hour older than its head)."""
        for lo in range(START_MS, STOP_MS + SCRAPE_MS, span_ms):
            part = {k: [p for p in pts if lo <= p[0] < lo + span_ms] for k, pts in self.series.items()}
            yield {k: pts for k, pts in part.items() if pts}


def scrapes() -> int:
    return (STOP_MS - START_MS) // SCRAPE_MS + 1


def index_at(ms_before_end: int) -> int:
    """The scrape index at ``END_MS - ms_before_end`` (offsets aside)."""
    return (END_MS - ms_before_end - START_MS) // SCRAPE_MS


def build() -> DataSet:
    data = DataSet()
    for target in targets():
        previous: set[Labels] = set()
        up = _key("up", {"job": target.job, "instance": target.instance})
        for k in range(scrapes()):
            t = target.time(k)
            got = target.scrape(k, t)
            now = {up: 1.0 if got is not None else 0.0, **(got or {})}
            for series in previous - now.keys():
                data.series[series].append((t, STALE_NAN))
            for series, v in now.items():
                data.series.setdefault(series, []).append((t, v))
            previous = set(now)
    return data


# --- the targets -----------------------------------------------------------------------------------

DEMO = ("demo.promlabs.com:10000", "demo.promlabs.com:10001", "demo.promlabs.com:10002")
DEMO_RESTARTS = {1: (index_at(5 * 60_000),), 2: (index_at(40 * 60_000),)}
# Failed scrapes (a timeout, a network blip): :10000 for 30 s in the query window, :10002 for a minute
# 55 minutes before the end (inside the 1 h ranges).
DEMO_DOWN = {
    0: range(index_at(3 * 60_000), index_at(150_000)),
    2: range(index_at(55 * 60_000), index_at(54 * 60_000)),
}
MEMORY_TYPES = {"free": 1.2e9, "buffers": 3.1e8, "cached": 2.1e9, "used": 4.3e9}
CPU_MODES = {"idle": 0.8, "user": 0.15, "system": 0.05}
API_BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf")
API_ROUTES = (("GET", "/api/foo"), ("GET", "/api/bar"), ("POST", "/api/foo"), ("POST", "/api/bar"))
# No POST /api/bar requests on :10000 for 3 minutes in the window: its buckets' rate is 0 there, and
# histogram_quantile answers NaN.
IDLE_ROUTE = (0, 3, range(index_at(6 * 60_000), index_at(3 * 60_000)))
NODES = ("node-a:9100", "node-b:9100", "node-c:9100")
NODE_DOWN = {1: range(index_at(9 * 60_000), index_at(7 * 60_000)), 2: range(index_at(4 * 60_000), 10**9)}


def targets() -> list[Target]:
    out = [Target("demo", inst, 1_237 + 1_374 * i, _demo(i, inst)) for i, inst in enumerate(DEMO)]
    out += [Target("node", inst, 419 + 1_727 * i, _node(i, inst)) for i, inst in enumerate(NODES)]
    out.append(Target("kube-state-metrics", "10.0.0.7:8080", 2_207, _ksm("10.0.0.7:8080")))
    out.append(Target("apiserver", "10.0.0.1:6443", 3_333, _apiserver("10.0.0.1:6443")))
    return out


def _demo(i: int, inst: str) -> Callable[[int, int], dict[Labels, float] | None]:
    base = {"job": "demo", "instance": inst}
    restarts = DEMO_RESTARTS.get(i, ())
    cpu = {m: Counter(restarts) for m in CPU_MODES}
    buckets = {(r, le): Counter(restarts) for r in API_ROUTES for le in API_BUCKETS}
    hsum = {r: Counter(restarts) for r in API_ROUTES}
    items = Counter(restarts)
    handler = {code: Counter(restarts) for code in ("200", "500", "503")}
    last_success = 0.0
    down = DEMO_DOWN.get(i, range(0))

    def scrape(k: int, t: int) -> dict[Labels, float] | None:
        nonlocal last_success
        if k in down:
            return None
        out: dict[Labels, float] = {}
        for typ, size in MEMORY_TYPES.items():
            wave = math.sin(k / 37 + i + len(typ)) * 0.1 + noise(1, i, k, len(typ)) * 0.02
            out[_key("demo_memory_usage_bytes", {**base, "type": typ})] = float(
                round(size * (1 + i / 4 + wave))
            )
        cpus = (4, 8, 2)[i]
        for mode, share in CPU_MODES.items():
            inc = SCRAPE_MS / 1000 * cpus * share * (0.5 + noise(2, i, k, len(mode)))
            out[_key("demo_cpu_usage_seconds_total", {**base, "mode": mode})] = cpu[mode].add(
                k, round(inc, 3)
            )
        out[_key("demo_num_cpus", base)] = float(cpus)
        disk = 5e10 + i * 1e9 + k * 4096.0 * (1 + i) + 1000.0 * (k % 7) + 1.25e6 * noise(3, i, k)
        out[_key("demo_disk_usage_bytes", base)] = round(disk)
        out[_key("demo_disk_total_bytes", base)] = 1e11
        # A batch job every 5 minutes; on :10002 it fails from 20 to 3 minutes before the end.
        batch_due = (t // 300_000) * 300_000
        failing = i == 2 and END_MS - 20 * 60_000 <= batch_due < END_MS - 3 * 60_000
        if not failing and batch_due / 1000 > last_success:
            last_success = batch_due / 1000 + 3.5 * (i + 1)
        out[_key("demo_batch_last_success_timestamp_seconds", base)] = last_success
        out[_key("demo_batch_last_run_duration_seconds", base)] = 3.5 * (i + 1) + (k // 60) % 3
        for r, (method, path) in enumerate(API_ROUTES):
            labels = {**base, "method": method, "path": path, "status": "200"}
            idle = (i, r) == IDLE_ROUTE[:2] and k in IDLE_ROUTE[2]
            n = 0 if idle else 5 + int(20 * noise(4, i, k, r))
            median = 0.02 * (1 + r) * (1 + 0.5 * math.sin(k / 50 + i))
            for le in API_BUCKETS:
                below = n if le == "+Inf" else math.floor(n / (1 + (median / float(le)) ** 2))
                out[_key("demo_api_request_duration_seconds_bucket", {**labels, "le": le})] = buckets[
                    ((method, path), le)
                ].add(k, below)
            out[_key("demo_api_request_duration_seconds_count", labels)] = buckets[
                ((method, path), "+Inf")
            ].value
            out[_key("demo_api_request_duration_seconds_sum", labels)] = hsum[(method, path)].add(
                k, round(n * median, 6)
            )
        out[_key("demo_items_shipped_total", base)] = items.add(k, float(k % 4))
        out[_key("demo_is_holiday", base)] = 0.0
        if (t // 60_000) % 2 == 0:
            out[_key("demo_intermittent_metric", base)] = 1.0
        out[_key("promhttp_metric_handler_requests_in_flight", base)] = 1.0
        for code, c in handler.items():
            out[_key("promhttp_metric_handler_requests_total", {**base, "code": code})] = c.add(
                k, 1.0 if code == "200" else 0.0
            )
        special = {
            "nan-sometimes": math.nan if k % 7 == 3 else float(k % 10),
            "inf-sometimes": math.inf if k % 11 == 5 else float(k % 10),
            "neg-inf-sometimes": -math.inf if k % 13 == 6 else float(k % 10),
            "mixed": (math.nan, math.inf, -math.inf, 1.5, 2.5)[k % 5],
        }
        for case, v in special.items():
            out[_key("demo_special_value", {**base, "case": case})] = v
        return out

    return scrape


def _node(i: int, inst: str) -> Callable[[int, int], dict[Labels, float] | None]:
    base = {"job": "node", "instance": inst}
    cpu = {(c, m): Counter() for c in ("0", "1") for m in ("idle", "user", "system", "iowait")}
    rx, tx, io = Counter(), Counter(), Counter()
    total = (8, 16, 4)[i] * 2.0**30
    down = NODE_DOWN.get(i, range(0))

    def scrape(k: int, t: int) -> dict[Labels, float] | None:
        if k in down:
            return None
        out: dict[Labels, float] = {}
        for (c, mode), counter in cpu.items():
            share = {"idle": 0.7 - 0.2 * i, "user": 0.2 + 0.15 * i, "system": 0.07, "iowait": 0.03}[mode]
            inc = round(5.0 * share * (0.6 + 0.8 * noise(5, i, k, int(c), len(mode))), 2)
            out[_key("node_cpu_seconds_total", {**base, "cpu": c, "mode": mode})] = counter.add(k, inc)
        out[_key("node_memory_MemTotal_bytes", base)] = total
        avail = total * (0.35 - 0.1 * i + 0.05 * math.sin(k / 29))
        out[_key("node_memory_MemAvailable_bytes", base)] = float(round(avail))
        fs = {"device": "/dev/sda1", "fstype": "ext4", "mountpoint": "/"}
        size = 1e11 * (i + 1)
        # node-a's disk fills up: predict_linear sees it run out within hours
        avail_fs = size * (0.5 - (0.00015 * k if i == 0 else 0.0)) + 1e6 * noise(6, i, k)
        out[_key("node_filesystem_size_bytes", {**base, **fs})] = size
        out[_key("node_filesystem_avail_bytes", {**base, **fs})] = float(round(avail_fs))
        out[_key("node_filesystem_readonly", {**base, **fs})] = 0.0
        run = {"device": "tmpfs", "fstype": "tmpfs", "mountpoint": "/run"}
        out[_key("node_filesystem_size_bytes", {**base, **run})] = 4e8
        out[_key("node_filesystem_avail_bytes", {**base, **run})] = 3.9e8
        out[_key("node_filesystem_readonly", {**base, **run})] = 0.0
        eth = {**base, "device": "eth0"}
        out[_key("node_network_receive_bytes_total", eth)] = rx.add(k, float(int(1e6 * noise(7, i, k))))
        out[_key("node_network_transmit_bytes_total", eth)] = tx.add(k, float(int(4e5 * noise(8, i, k))))
        out[_key("node_load1", base)] = round(2 * (i + 1) * (0.5 + noise(9, i, k)), 2)
        out[_key("node_load5", base)] = round(2 * (i + 1) * (0.7 + 0.3 * math.sin(k / 60)), 2)
        out[_key("node_disk_io_time_seconds_total", {**base, "device": "sda"})] = io.add(
            k, round(5 * noise(10, i, k), 3)
        )
        return out

    return scrape


def _ksm(inst: str) -> Callable[[int, int], dict[Labels, float] | None]:
    base = {"job": "kube-state-metrics", "instance": inst}
    pods = (("default", "web-1", "app"), ("default", "web-2", "app"), ("kube-system", "dns-1", "coredns"))
    restarts = {p: Counter() for p in pods}

    def scrape(k: int, t: int) -> dict[Labels, float]:
        out: dict[Labels, float] = {}
        for j, (ns, pod, container) in enumerate(pods):
            # web-2 crash-loops in the last 15 minutes; the others restart now and then
            crashing = j == 1 and t >= END_MS - 15 * 60_000
            inc = 1.0 if (crashing and k % 12 == 0) or noise(11, j, k) < 0.002 else 0.0
            labels = {**base, "namespace": ns, "pod": pod, "container": container}
            out[_key("kube_pod_container_status_restarts_total", labels)] = restarts[
                (ns, pod, container)
            ].add(k, inc)
        return out

    return scrape


APISERVER_BUCKETS = ("0.05", "0.1", "0.25", "0.5", "1", "5", "+Inf")


def _apiserver(inst: str) -> Callable[[int, int], dict[Labels, float] | None]:
    base = {"job": "apiserver", "instance": inst}
    verbs = ("GET", "LIST", "POST")
    codes = ("200", "404", "500")
    requests = {(v, c): Counter() for v in verbs for c in codes}
    buckets = {(v, le): Counter() for v in verbs for le in APISERVER_BUCKETS}
    hsum = {v: Counter() for v in verbs}

    def scrape(k: int, t: int) -> dict[Labels, float]:
        out: dict[Labels, float] = {}
        for j, verb in enumerate(verbs):
            n = 0
            for code in codes:
                share = {"200": 30, "404": 3, "500": 1 if t < END_MS - 20 * 60_000 else 6}[code]
                inc = int(share * (0.5 + noise(12, j, k, int(code))))
                n += inc
                labels = {**base, "verb": verb, "code": code}
                out[_key("apiserver_request_total", labels)] = requests[(verb, code)].add(k, float(inc))
            median = (0.03, 0.4, 0.12)[j]
            for le in APISERVER_BUCKETS:
                below = n if le == "+Inf" else math.floor(n / (1 + (median / float(le)) ** 3))
                out[_key("apiserver_request_duration_seconds_bucket", {**base, "verb": verb, "le": le})] = (
                    buckets[(verb, le)].add(k, float(below))
                )
            out[_key("apiserver_request_duration_seconds_count", {**base, "verb": verb})] = buckets[
                (verb, "+Inf")
            ].value
            out[_key("apiserver_request_duration_seconds_sum", {**base, "verb": verb})] = hsum[verb].add(
                k, round(n * median, 6)
            )
        return out

    return scrape
