"""Helpers for the third-party protocol tests against a real `lossproof up`."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import cramjam

from lossproof.protocol import promrw
from lptest.pipeline import HTTP, Pipeline


def query(p: Pipeline, metric: str, **labels: str) -> list[dict[str, Any]]:
    params = [("metric", metric), ("from", "0"), ("to", "4102444800000")]
    params += [("label", f"{k}:{v}") for k, v in labels.items()]
    status, body = p.get(f"/v1/query?{urlencode(params)}")
    assert status == 200, body
    return body["series"]  # type: ignore[no-any-return]


def wait_points(p: Pipeline, metric: str, n: int, timeout: float = 30, **labels: str) -> list[dict[str, Any]]:
    """Wait until the series of ``metric`` hold at least ``n`` points in all; returns the series."""
    deadline = time.monotonic() + timeout
    series: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        series = query(p, metric, **labels)
        if sum(len(s["points"]) for s in series) >= n:
            return series
        time.sleep(0.1)
    raise AssertionError(f"{metric}: fewer than {n} points after {timeout}s: {series}")


def post(p: Pipeline, path: str, body: bytes, headers: dict[str, str]) -> Any:
    return HTTP.request("POST", p.url + path, body=body, headers=headers)


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rw_body(series: list[tuple[dict[str, str], list[tuple[int, float]]]]) -> bytes:
    """A snappy-compressed remote write 1.0 body: ``[(labels, [(t_ms, value)])]``."""
    return bytes(cramjam.snappy.compress_raw(write_request(series)))


def write_request(series: list[tuple[dict[str, str], list[tuple[int, float]]]]) -> bytes:
    """A serialized remote write 1.0 ``WriteRequest`` (uncompressed): ``[(labels, [(t_ms, value)])]``."""
    req = promrw.WriteRequest()
    for labels, samples in series:
        ts = req.timeseries.add()
        for k, v in labels.items():
            lb = ts.labels.add()
            lb.name, lb.value = k, v
        for t, v in samples:
            s = ts.samples.add()
            s.timestamp, s.value = t, v
    return bytes(req.SerializeToString())


# Protobuf wire format by hand, for bodies the message classes cannot make (re-framed, unknown
# fields, groups, damage).
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return key(field, 2) + varint(len(payload)) + payload


def damaged(body: bytes, data: Any) -> bytes:
    """``body`` with 1 to 4 bytes flipped, runs cut out or bytes inserted, drawn from hypothesis'
    ``data`` (``st.data()``): the damage a property test throws at a parser."""
    from hypothesis import strategies as st

    b = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, len(b)))
        if op == "flip" and at < len(b):
            b[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del b[at : at + data.draw(st.integers(1, 8))]
        else:
            b[at:at] = data.draw(st.binary(min_size=1, max_size=6))
    return bytes(b)
