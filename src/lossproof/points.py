"""A sample as decoders hand it to a store, and the canonical encoding of a report's points.

Kept apart from ``store.base`` (which needs numpy and re2) so that what decodes protocols (the ingest
check, the agent's relay) does not load the store's dependencies. ``store.base`` re-exports these.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

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


# The canonical encoding of a report's points: msgpack with struct fields and dict keys sorted, so
# the same points give the same bytes whatever struct type a decoder used (ingest's validating
# structs, the worker's plain ones, :class:`Point`) and whatever order the sender put labels in.
_points_enc = msgspec.msgpack.Encoder(order="sorted")
_points_dec = msgspec.msgpack.Decoder(list[Point])


def encode_points(points: Sequence[PointLike]) -> bytes:
    """The canonical bytes of ``points`` (msgspec Structs or dataclasses with a point's fields)."""
    return _points_enc.encode(points)


def decode_points(data: bytes) -> list[Point]:
    return _points_dec.decode(data)


def report_digest(points: Sequence[PointLike]) -> bytes:
    """A report's content digest: what tells a resend (same digest) from a reused seq (another one)."""
    return hashlib.blake2b(encode_points(points), digest_size=16).digest()


_labels_json = msgspec.json.Encoder(order="sorted")


def labels_text(labels: Mapping[str, str]) -> str:
    """A series' labels as both stores keep them: JSON with sorted keys, compact. Equal label sets
    give equal text, so (tenant, metric, this) identifies a series."""
    return _labels_json.encode(labels).decode()
