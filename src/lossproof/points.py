"""A sample as decoders hand it to a store, and the canonical encoding of a report's points.

Kept apart from ``store.base`` (which needs numpy and re2) so that what decodes protocols (the ingest
check, the agent's relay) does not load the store's dependencies. ``store.base`` re-exports these.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, overload

import blake3
import msgspec


class PointLike(Protocol):
    """Anything with a point's four attributes: a store reads nothing else, so decoders can hand
    over their own structs without a copy."""

    @property
    def metric(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]: ...
    @property
    def t(self) -> int: ...
    @property
    def v(self) -> float: ...


# Prometheus' staleness marker: the NaN (one bit pattern of many) that a scraper writes when a target
# or series disappears. It is not a value: range windows skip it, and it ends an instant selector's
# lookback (the series has no value until its next real sample). Any other NaN is a value.
STALE_NAN_BITS = 0x7FF0000000000002


def is_stale_nan(v: float) -> bool:
    """Whether ``v`` is the staleness marker (by its bits: NaN equals nothing)."""
    return v != v and struct.pack("<d", v) == _STALE_NAN_BYTES


_STALE_NAN_BYTES = struct.pack("<Q", STALE_NAN_BITS)


class Point(msgspec.Struct, gc=False):
    """One sample. A msgspec Struct so workers decode request bodies straight into it, in C."""

    metric: str
    labels: dict[str, str]
    t: int  # unix ms
    v: float  # may be NaN or +-Inf (Prometheus staleness markers); stores must round-trip them


@dataclass(slots=True)
class SeriesSamples:
    """Samples of one series as two columns: what a decoder hands over most cheaply (remote write
    sends its samples grouped by series). Stored like :class:`Point` samples."""

    metric: str
    labels: dict[str, str]
    t: Sequence[int]
    v: Sequence[float]

    def points(self) -> list[Point]:
        return [Point(self.metric, self.labels, t, v) for t, v in zip(self.t, self.v, strict=True)]


@dataclass(frozen=True, slots=True)
class SeriesBlock:
    """Samples ``first .. last`` of a remote-write 1.0 body decoded in Rust (``block``: a
    ``lossproof._native.RwBlock``, see native/src/rwcols.rs): the samples of many series as columns,
    each series' key kept as text, no Python object per series or sample. A store turns it into its
    columns with one series-id look-up per series (``lossproof.store.columns.Columns.add_series``).
    Stored like the :class:`SeriesSamples` it stands for (:meth:`series`)."""

    block: Any
    first: int
    last: int

    def series(self) -> list[SeriesSamples]:
        """The series with samples in the range, in order (a series cut by the range: its part)."""
        out = []
        for metric, labels, t_col, v_col in self.block.expand(self.first, self.last):
            t, v = array("q"), array("d")
            t.frombytes(t_col)
            v.frombytes(v_col)
            out.append(SeriesSamples(metric, labels, t, v))
        return out

    def points(self) -> list[Point]:
        return [p for s in self.series() for p in s.points()]


class PointsBlock(Sequence[Point]):
    """The points of one native report decoded in Rust (``block``: a ``lossproof._native.ReportBlock``,
    see native/src/reports.rs): times and values as columns, each series' key kept as text, its
    content digest computed with it. A store turns it into its columns with one series-id look-up
    per series (``lossproof.store.columns.Columns.add``); :func:`report_digest` and
    :func:`encode_points` take what the block computed. Anything else sees a sequence of
    :class:`Point`, made on first use."""

    __slots__ = ("_points", "block")

    def __init__(self, block: Any) -> None:
        self.block = block
        self._points: list[Point] | None = None

    def __len__(self) -> int:
        return len(self.block)

    def points(self) -> list[Point]:
        if self._points is None:
            self._points = [Point(m, labels, t, v) for m, labels, t, v in self.block.expand()]
        return self._points

    @overload
    def __getitem__(self, i: int) -> Point: ...
    @overload
    def __getitem__(self, i: slice) -> list[Point]: ...
    def __getitem__(self, i: int | slice) -> Point | list[Point]:
        return self.points()[i]

    def __iter__(self) -> Iterator[Point]:
        return iter(self.points())


def sample_count(s: SeriesSamples | SeriesBlock) -> int:
    return s.last - s.first if isinstance(s, SeriesBlock) else len(s.t)


def each_series(items: Iterable[SeriesSamples | SeriesBlock]) -> Iterator[SeriesSamples]:
    """``items`` series by series (a block as the series it holds)."""
    for s in items:
        if isinstance(s, SeriesBlock):
            yield from s.series()
        else:
            yield s


# The canonical encoding of a report's points: msgpack with struct fields and dict keys sorted, so
# the same points give the same bytes whatever struct type a decoder used (ingest's validating
# structs, the worker's plain ones, :class:`Point`) and whatever order the sender put labels in.
_points_enc = msgspec.msgpack.Encoder(order="sorted")
_points_dec = msgspec.msgpack.Decoder(list[Point])


def encode_points(points: Sequence[PointLike]) -> bytes:
    """The canonical bytes of ``points`` (msgspec Structs or dataclasses with a point's fields)."""
    if isinstance(points, PointsBlock):
        return bytes(points.block.encode())
    return _points_enc.encode(points)


def decode_points(data: bytes) -> list[Point]:
    return _points_dec.decode(data)


# A digest's first byte: the hash that made it. Digests stored before it are 16 bytes of BLAKE2b,
# without it (BLAKE2b was ~10 % of the worker's time; BLAKE3 hashes the same bytes ~5x faster).
DIGEST_KIND = b"\x03"
_LEGACY_DIGEST_BYTES = 16


def report_digest(points: Sequence[PointLike]) -> bytes:
    """A report's content digest: what tells a resend (same digest) from a reused seq (another one).
    ``DIGEST_KIND``, then the first 16 bytes of BLAKE3 of the points' canonical bytes."""
    if isinstance(points, PointsBlock):
        return bytes(points.block.digest())
    return DIGEST_KIND + blake3.blake3(encode_points(points)).digest(16)


def same_report(points: Sequence[PointLike], digest: bytes, mine: bytes | None = None) -> bool:
    """Whether ``points`` are the content a stored ``digest`` was made of, whichever hash made it
    (``mine``: ``report_digest(points)`` if already computed). A store written before
    ``DIGEST_KIND`` holds BLAKE2b digests: a resend of such a report is still a duplicate."""
    if len(digest) == _LEGACY_DIGEST_BYTES:
        return hashlib.blake2b(encode_points(points), digest_size=16).digest() == digest
    return (mine if mine is not None else report_digest(points)) == digest


_labels_json = msgspec.json.Encoder(order="sorted")


def labels_text(labels: Mapping[str, str]) -> str:
    """A series' labels as both stores keep them: JSON with sorted keys, compact. Equal label sets
    give equal text, so (tenant, metric, this) identifies a series."""
    return _labels_json.encode(labels).decode()
