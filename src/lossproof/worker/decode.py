"""Turn log records into store writes. A record that cannot be decoded becomes a dead letter."""

from __future__ import annotations

import msgspec

from lossproof.log.base import LogRecord
from lossproof.protocol import native
from lossproof.protocol.compression import decompress
from lossproof.store.base import DeadLetter, Point, ReportWrite, WriteBatch

# Ingest validated the body with the protocol's constrained types; here we decode straight into
# the store's Point structs without re-checking constraints.


class _Report(msgspec.Struct):
    seq: int
    points: list[Point]


class _Request(msgspec.Struct):
    agent: str
    reports: list[_Report]


class _PointIn(msgspec.Struct):
    metric: str
    t: int
    v: float
    labels: dict[str, str] = {}


class _ReportIn(msgspec.Struct):
    seq: int
    points: list[_PointIn]


class _RequestIn(msgspec.Struct):
    agent: str
    reports: list[_ReportIn]


# Point has no defaults (labels is required in the store type) but labels is optional on the wire,
# so decode via a wire type when the fast path fails on a missing field.
_fast: dict[str, msgspec.json.Decoder[_Request] | msgspec.msgpack.Decoder[_Request]] = {
    native.JSON: msgspec.json.Decoder(_Request),
    native.MSGPACK: msgspec.msgpack.Decoder(_Request),
}
_slow: dict[str, msgspec.json.Decoder[_RequestIn] | msgspec.msgpack.Decoder[_RequestIn]] = {
    native.JSON: msgspec.json.Decoder(_RequestIn),
    native.MSGPACK: msgspec.msgpack.Decoder(_RequestIn),
}

MAX_DECODED = 1 << 30


class DecodeError(Exception):
    pass


def _decode_native(env: native.Envelope) -> list[_Report]:
    body = decompress(env.body, env.encoding, MAX_DECODED)
    try:
        return _fast[env.content_type].decode(body).reports
    except msgspec.ValidationError:
        req = _slow[env.content_type].decode(body)
        return [_Report(r.seq, [Point(p.metric, p.labels, p.t, p.v) for p in r.points]) for r in req.reports]


def add_record(batch: WriteBatch, record: LogRecord) -> int:
    """Decode ``record`` into ``batch``; returns the number of points added (0 for a dead letter)."""
    tenant = ""
    try:
        env = native.decode_envelope(record.value)
        tenant = env.tenant
        if env.protocol != "native":
            raise DecodeError(f"unknown protocol {env.protocol!r}")
        reports = _decode_native(env)
    except Exception as e:  # any failure to decode is poison data, never a reason to stop
        batch.dead_letters.append(
            DeadLetter(record.partition, record.offset, tenant, f"{type(e).__name__}: {e}", record.value)
        )
        return 0
    n = 0
    for r in reports:
        batch.reports.append(ReportWrite(env.tenant, env.agent, r.seq, r.points))
        n += len(r.points)
    return n
