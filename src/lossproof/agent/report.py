"""Points and reports as the agent makes them, and their wire encoding (msgpack, see docs/protocol.md).

Every point is checked against the protocol's limits when it is recorded, so one bad metric name can
never make the server reject (and the agent drop) a whole report. msgpack rather than JSON on the
wire because it carries NaN and ±Inf, which JSON cannot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:  # the agent itself never loads lossproof.points (it needs no Point)
    from lossproof.points import PointLike

MAX_TIME_MS = 4_102_444_800_000
# as protocol.native.MIN_POINT_TIME_MS: ingest refuses earlier times (most likely seconds)
MIN_TIME_MS = 100_000_000_000
MAX_LABELS = 64


class Point(msgspec.Struct, gc=False):
    metric: str
    labels: dict[str, str]
    t: int
    v: float


class Report(msgspec.Struct, gc=False):
    seq: int
    time: int
    points: list[Point]


class _EncodedReport(msgspec.Struct, gc=False):
    """A report whose points are encoded already (the relay encodes them before a seq is known)."""

    seq: int
    time: int
    points: msgspec.Raw


_enc = msgspec.msgpack.Encoder()


def encode_report(seq: int, time_ms: int, points: list[Point]) -> bytes:
    return _enc.encode(Report(seq, time_ms, points))


def encode_points(points: Sequence[PointLike]) -> msgspec.Raw:
    """Points as a report carries them; any struct with a point's four fields in its order."""
    return msgspec.Raw(_enc.encode(points))


def encode_encoded_report(seq: int, time_ms: int, points: msgspec.Raw) -> bytes:
    return _enc.encode(_EncodedReport(seq, time_ms, points))


def make_point(
    metric: str, value: float, labels: Mapping[str, str] | None, t_ms: int, base: Mapping[str, str]
) -> Point:
    """A validated point; the point's own labels win over the agent's ``base`` labels."""
    if not isinstance(metric, str) or not 1 <= len(metric) <= 1024:
        raise ValueError(f"metric name must be a string of 1-1024 characters, got {metric!r:.80}")
    v = float(value)  # TypeError/ValueError for non-numbers, as float() says
    if not MIN_TIME_MS <= t_ms <= MAX_TIME_MS:
        hint = " (in seconds? multiply by 1000)" if 0 <= t_ms < MIN_TIME_MS else ""
        raise ValueError(f"timestamp {t_ms} is not unix milliseconds between 1973 and 2100{hint}")
    merged = {**base, **labels} if labels else dict(base)
    if len(merged) > MAX_LABELS:
        raise ValueError(f"{metric}: {len(merged)} labels, at most {MAX_LABELS} (agent labels included)")
    if labels:
        for k, val in labels.items():
            if not isinstance(k, str) or not 1 <= len(k) <= 1024:
                raise ValueError(f"{metric}: label name must be a string of 1-1024 characters: {k!r:.80}")
            if not isinstance(val, str) or len(val) > 4096:
                raise ValueError(f"{metric}: label {k} must be a string of at most 4096 characters")
    return Point(metric, merged, int(t_ms), v)


class Buffer:
    """Points collected since the last report. ``on_full`` fires once the buffer holds a full report,
    so a burst is cut into reports early instead of growing memory until the interval ends."""

    def __init__(self, full_at: int, on_full: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._points: list[Point] = []
        self._full_at = full_at
        self._on_full = on_full

    def add(self, point: Point) -> None:
        with self._lock:
            self._points.append(point)
            full = len(self._points) == self._full_at
        if full and self._on_full is not None:
            self._on_full()

    def extend(self, points: list[Point]) -> None:
        if not points:
            return
        with self._lock:
            before = len(self._points)
            self._points.extend(points)
            full = before < self._full_at <= len(self._points)
        if full and self._on_full is not None:
            self._on_full()

    def drain(self) -> list[Point]:
        with self._lock:
            out, self._points = self._points, []
            return out

    def put_back(self, points: list[Point]) -> None:
        """Points whose report could not be spooled go first in line for the next one."""
        with self._lock:
            self._points[:0] = points

    def __len__(self) -> int:
        with self._lock:
            return len(self._points)
