"""A checked third-party body as points, for a receiver that stores points rather than bodies (the
agent's relay, which spools them as native reports). The same decoders as the worker's, a chunk of
at most ``max_points`` points at a time, so memory follows the chunk rather than the body."""

from __future__ import annotations

from collections.abc import Iterator
from operator import attrgetter
from typing import Any

from lossproof.points import Point
from lossproof.protocol import influx, otlp, promrw
from lossproof.protocol.native import MIN_POINT_TIME_MS
from lossproof.protocol.thirdparty import MAX_LABELS, BadBody

PROTOCOLS = ("prom-rw", "otlp", "influx")
_t, _labels = attrgetter("t"), attrgetter("labels")


def iter_points(
    protocol: str,
    content_type: str,
    body: bytes,
    params: dict[str, str],
    received_ms: int,
    max_points: int,
    decoding: Any = None,
) -> Iterator[list[Point]]:
    """The points of a (decompressed) body that the protocol's ``check`` accepted. Raises BadBody for
    a point the native protocol cannot carry (see :func:`native_bounds`). ``decoding``: what the
    check kept of the body (``Checked.decoding``; remote write), so it is not parsed again."""
    chunks: Iterator[list[Point]]
    if protocol == "prom-rw":
        if not isinstance(decoding, promrw.Decoding):
            decoding = promrw.Decoding(body, content_type)
        chunks = decoding.iter_points(max_points)
    elif protocol == "otlp":
        chunks = otlp.iter_points(body, content_type, max_points)
    elif protocol == "influx":
        labels = influx.request_labels(params)
        precision = params.get("precision", "ns")
        chunks = influx.iter_points(body, precision, received_ms, labels, max_points)
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    for points in chunks:
        if points:
            native_bounds(points)
            yield points


def native_bounds(points: list[Point]) -> None:
    """A native report carries at most MAX_LABELS labels per point; the third-party protocols allow
    one more where they derive it (a histogram bucket's ``le``, a summary's ``quantile``). Nor does it
    carry a time before MIN_POINT_TIME_MS (1973: most likely seconds), which the third-party protocols
    take. Such a point is refused before it is acknowledged: spooled, the server would refuse its
    whole report."""
    early = min(map(_t, points))
    if early < MIN_POINT_TIME_MS:
        raise BadBody(
            f"a point at t={early} ms (before 1973-03-03): the agent relays points from "
            f"{MIN_POINT_TIME_MS} ms on (a smaller time is most likely in seconds or nanoseconds "
            "read with the wrong precision); send it to the ingest API directly if it is meant"
        )
    most = max(map(len, map(_labels, points)))
    if most > MAX_LABELS:
        p = next(p for p in points if len(p.labels) > MAX_LABELS)
        raise BadBody(
            f"{p.metric[:64]}: {len(p.labels)} labels with le/quantile; through the agent at most "
            f"{MAX_LABELS} (send it to the ingest API directly, or drop a label)"
        )
