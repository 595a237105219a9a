"""Request bodies for benchmarking (and testing) the third-party protocols.

``request(protocol, key, n, t_ms)`` returns ``(path, headers, body)`` for one request that stores
exactly ``n`` points at time ``t_ms``: ``n`` distinct series of one sample each. For a load loop,
:class:`Template` builds the message once and only patches the timestamp per request (a byte
replacement of a fixed-width encoding, then compression), so the client spends its CPU on sending,
not on building protobufs point by point.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import cramjam

from lossproof.protocol.compression import compress

PROTOCOLS = ("prom-rw", "otlp", "influx")

# A marker time: its encodings (varint ms, fixed64 ns, decimal ms) are replaced per request. Any
# t_ms in 2004..2039 has a varint and a decimal of the same width as the marker.
_MARK_MS = 1_799_999_999_999
INFLUX_FIELDS = 5  # fields per line: n points are n / 5 lines


def varint(x: int) -> bytes:
    """Protocol buffers' base-128 varint of a non-negative int."""
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        if x:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@dataclass
class Template:
    protocol: str
    key: str
    n: int
    series: str = "b"  # distinguishes the series of one load generator from another's
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    _raw: bytes = b""

    def __post_init__(self) -> None:
        auth = {"Authorization": f"Bearer {self.key}"}
        if self.protocol == "prom-rw":
            self.path = "/api/v1/write"
            self.headers = {
                **auth,
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "snappy",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
                "User-Agent": "lossproof-bench",
            }
            self._raw = _promrw(self.n, self.series)
        elif self.protocol == "otlp":
            self.path = "/v1/metrics"
            self.headers = {**auth, "Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
            self._raw = _otlp(self.n, self.series)
        elif self.protocol == "influx":
            self.path = "/api/v2/write?bucket=bench&org=bench&precision=ms"
            self.headers = {"Authorization": f"Token {self.key}", "Content-Encoding": "gzip"}
            self._raw = _influx(self.n, self.series)
        else:
            raise ValueError(f"unknown protocol {self.protocol!r}: one of {', '.join(PROTOCOLS)}")

    def body(self, t_ms: int) -> bytes:
        if self.protocol == "prom-rw":
            raw = self._raw.replace(varint(_MARK_MS), varint(t_ms))
            return bytes(cramjam.snappy.compress_raw(raw))
        if self.protocol == "otlp":
            raw = self._raw.replace(
                struct.pack("<Q", _MARK_MS * 1_000_000), struct.pack("<Q", t_ms * 1_000_000)
            )
            return compress(raw, "gzip")
        raw = self._raw.replace(str(_MARK_MS).encode(), str(t_ms).encode())
        return compress(raw, "gzip")


def request(
    protocol: str, key: str, n: int, t_ms: int, series: str = "b"
) -> tuple[str, dict[str, str], bytes]:
    """``(path, headers, body)`` of one request storing ``n`` points (distinct series) at ``t_ms``."""
    tpl = Template(protocol, key, n, series)
    return tpl.path, tpl.headers, tpl.body(t_ms)


def _promrw(n: int, series: str) -> bytes:
    from lossproof.protocol.promrw import WriteRequest

    req = WriteRequest()
    for i in range(n):
        ts = req.timeseries.add()
        for k, v in (
            ("__name__", f"bench_promrw_m{i % 50}"),
            ("instance", f"{series}:9100"),
            ("job", "bench"),
            ("series", str(i)),
        ):
            lb = ts.labels.add()
            lb.name, lb.value = k, v
        s = ts.samples.add()
        s.value, s.timestamp = i + 0.5, _MARK_MS
    return bytes(req.SerializeToString())


def _otlp(n: int, series: str) -> bytes:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    a = rm.resource.attributes.add()
    a.key, a.value.string_value = "service.name", f"bench-{series}"
    sm = rm.scope_metrics.add()
    sm.scope.name = "lossproof.bench"
    metrics = [sm.metrics.add() for _ in range(min(n, 50))]
    for j, m in enumerate(metrics):
        m.name = f"bench.otlp.m{j}"
        m.gauge.SetInParent()
    for i in range(n):
        p = metrics[i % len(metrics)].gauge.data_points.add()
        p.time_unix_nano = _MARK_MS * 1_000_000
        p.as_double = i + 0.5
        a = p.attributes.add()
        a.key, a.value.string_value = "series", str(i)
    return bytes(req.SerializeToString())


def _influx(n: int, series: str) -> bytes:
    lines = []
    for i in range(0, n, INFLUX_FIELDS):
        k = min(INFLUX_FIELDS, n - i)
        fields = ",".join(f"f{j}={i + j}.5" for j in range(k))
        lines.append(f"bench_influx,host={series},series={i} {fields} {_MARK_MS}")
    return "\n".join(lines).encode()


@dataclass
class LoadResult:
    protocol: str
    seconds: float = 0.0
    acked_samples: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    refused: str = ""  # the endpoint refused the load outright (e.g. HTTP 401) before any ack

    def quantile(self, q: float) -> float:
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def drive(url: str, key: str, protocol: str, clients: int, n: int, seconds: float) -> LoadResult:
    """``clients`` concurrent senders post ``n``-sample requests to ``protocol``'s endpoint for
    ``seconds``, each as soon as the previous one is acknowledged; a refused request is sent again
    (as the real clients do). Every request carries new timestamps, so every sample is new."""
    import asyncio
    import time

    import aiohttp

    result = LoadResult(protocol)
    templates = [Template(protocol, key, n, series=f"{protocol}-c{k}") for k in range(clients)]
    t0 = int(time.time() * 1000) - 3_600_000
    deadline = time.monotonic() + seconds
    url = url.rstrip("/")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients + 2)) as session:

        async def client(k: int) -> None:
            tpl, seq = templates[k], 0
            body = tpl.body(t0 + seq)
            while time.monotonic() < deadline and not result.refused:
                start = time.perf_counter()
                try:
                    async with session.post(url + tpl.path, data=body, headers=tpl.headers) as r:
                        await r.read()
                        status = r.status
                except aiohttp.ClientError as e:
                    result.errors[type(e).__name__] = result.errors.get(type(e).__name__, 0) + 1
                    await asyncio.sleep(0.1)
                    continue
                if status in (200, 204):
                    result.latencies.append(time.perf_counter() - start)
                    result.acked_samples += n
                    seq += 1
                    body = tpl.body(t0 + seq)
                else:
                    result.errors[str(status)] = result.errors.get(str(status), 0) + 1
                    if status in (401, 403, 404) and not result.acked_samples:
                        result.refused = f"HTTP {status} from {url + tpl.path}"  # no retry helps
                    await asyncio.sleep(0.05)

        started = time.monotonic()
        await asyncio.gather(*(client(k) for k in range(clients)))
        result.seconds = time.monotonic() - started
    return result
