"""What the third-party protocols (Prometheus remote write, OTLP, InfluxDB line protocol) share.

Each protocol module offers two functions over the same decoding:

- ``check(body, ...) -> Checked`` for the ingest hot path: the body decodes, timestamps are within
  bounds, label sets are bounded. It raises :class:`BadBody` with a message naming what is wrong.
- ``to_points(body, ...) -> list[Point]`` for the worker. It never fails on a body ``check``
  accepted (the property tests hold the two together).

The bounds are the native protocol's (``docs/protocol.md``), so every protocol stores the same
shape of data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lossproof.points import Point
from lossproof.protocol.native import MAX_TIME_MS

__all__ = [
    "MAX_LABELS",
    "MAX_LABEL_VALUE",
    "MAX_NAME",
    "MAX_TIME_MS",
    "BadBody",
    "Checked",
    "UnsupportedBody",
    "check_points",
    "fmt_float",
    "time_error",
]

MAX_LABELS = 64  # labels per series, besides the metric name
MAX_NAME = 1024  # metric and label names, in characters
MAX_LABEL_VALUE = 4096


class BadBody(Exception):
    """The body is malformed or breaks a bound: answered 400 with this message."""


class UnsupportedBody(Exception):
    """A content type or encoding the endpoint does not speak: answered 415."""


@dataclass(frozen=True, slots=True)
class Checked:
    """What ``check`` learned about an acceptable body (for accounting and the answer)."""

    points: int  # the protocol's own unit: remote-write samples, OTLP data points, Influx lines
    histograms: int = 0  # remote write: native histogram samples
    exemplars: int = 0  # remote write: exemplars (accepted, not stored)
    metadata: int = 0  # remote write: metric metadata entries (stored, but not points)
    skipped: int = 0  # values that are accepted but cannot be stored (e.g. Influx string fields)
    rejected: int = 0  # OTLP: data points refused inside an accepted request (partial success)
    reject_reason: str = ""
    # what the check read of the body, for a receiver that turns it into points at once (the relay;
    # remote write's Decoding): only when asked for, so ingest holds nothing past the check
    decoding: Any = field(default=None, repr=False, compare=False)


# Labels a protocol adds to a derived series (a histogram bucket's ``le``, a summary's ``quantile``)
# come on top of the MAX_LABELS a sender may give.
DERIVED_LABELS = frozenset(("le", "quantile"))


def check_points(points: Iterable[Point], where: str) -> None:
    """The native protocol's bounds over decoded points: what every protocol may store. Raises
    BadBody naming ``where`` and the series. The protocols' fast checks work on the wire format;
    this one runs on the worker's own decoding, where a series is derived from the input (histogram
    buckets) and the wire format alone cannot show it."""
    for p in points:
        metric, labels = p.metric, p.labels
        if not 0 < len(metric) <= MAX_NAME:
            raise BadBody(f"{where}: metric name {metric[:64]!r}... must be 1..{MAX_NAME} characters")
        extra = len(DERIVED_LABELS.intersection(labels))
        if len(labels) - extra > MAX_LABELS:
            raise BadBody(f"{where}: {metric[:64]}: {len(labels)} labels, at most {MAX_LABELS}")
        for k, v in labels.items():
            if not 0 < len(k) <= MAX_NAME or len(v) > MAX_LABEL_VALUE:
                raise BadBody(f"{where}: {metric[:64]}: label {k[:64]!r} or its value is too long")
        if not 0 <= p.t <= MAX_TIME_MS:
            raise time_error(where, p.t)


def time_error(where: str, t_ms: int | float) -> BadBody:
    return BadBody(
        f"timestamp out of range at {where}: {t_ms} ms is outside 1970-01-01 .. 2100-01-01 "
        f"(0 .. {MAX_TIME_MS} unix ms); check the unit"
    )


def fmt_float(x: float) -> str:
    """A label value for a bucket bound or quantile: ``+Inf``/``-Inf``/``NaN``, an integral value
    without a fraction (``1``, ``1000``), otherwise the shortest round-trip decimal (``0.005``)."""
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if math.isnan(x):
        return "NaN"
    if x == int(x) and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


MAX_BUCKETS = 1024  # buckets (explicit bounds, or exponential buckets per sign) per histogram point


def exp_bound(scale: int, k: int) -> float:
    """``base ** k`` with ``base = 2 ** (2 ** -scale)``: an exponential histogram bucket boundary."""
    if scale <= 0:
        e = k << -scale
        if e > 1023:
            return math.inf
        return 0.0 if e < -1074 else math.ldexp(1.0, e)
    try:
        return math.pow(2.0, k / (1 << scale))
    except OverflowError:
        return math.inf


def exp_buckets(
    scale: int,
    zero_threshold: float,
    zero_count: float,
    positive: list[tuple[int, float]],
    negative: list[tuple[int, float]],
) -> list[tuple[str, float]]:
    """The cumulative ``(le, count)`` pairs of an exponential histogram, lowest bound first, in OTLP's
    bucket numbering: positive bucket ``i`` is ``(base**i, base**(i+1)]``, negative bucket ``i`` is
    ``[-base**(i+1), -base**i)``. The zero bucket's upper bound is ``zero_threshold``. The caller
    adds ``le="+Inf"`` (the total count)."""
    out: list[tuple[str, float]] = []
    acc = 0.0
    for i, c in sorted(negative, reverse=True):
        acc += c
        out.append((fmt_float(-exp_bound(scale, i)), acc))
    acc += zero_count
    out.append((fmt_float(zero_threshold), acc))
    for i, c in sorted(positive):
        acc += c
        out.append((fmt_float(exp_bound(scale, i + 1)), acc))
    return out
