"""Turn log records into store writes. A record that cannot be decoded becomes a dead letter."""

from __future__ import annotations

import msgspec

from lossproof.log.base import LogRecord
from lossproof.protocol import influx, native, otlp, promrw
from lossproof.protocol.compression import decompress
from lossproof.store.base import (
    DeadLetter,
    Incarnation,
    LostRange,
    MetricMetadata,
    Point,
    ReportWrite,
    SpoolState,
    WriteBatch,
)

# Ingest already validated the body against the protocol's constrained types; here it is decoded
# once more, without the constraints, straight into structs the store reads (no per-point copy).


class _Point(msgspec.Struct, gc=False):
    metric: str
    t: int
    v: float
    labels: dict[str, str] = {}


class _Report(msgspec.Struct, gc=False):
    seq: int
    points: list[_Point]


class _Request(msgspec.Struct):
    agent: str
    reports: list[_Report]
    dropped: list[native.DroppedIn] = []
    spool: native.SpoolIn | None = None
    incarnation: str = ""
    first_seq: int = 1


_decoders: dict[str, msgspec.json.Decoder[_Request] | msgspec.msgpack.Decoder[_Request]] = {
    native.JSON: msgspec.json.Decoder(_Request),
    native.MSGPACK: msgspec.msgpack.Decoder(_Request),
}

# Ingest bounded the decompressed size already; this only stops a record that was damaged into
# something enormous.
MAX_DECODED = 1 << 30


class DecodeError(Exception):
    pass


def _decode_native(env: native.Envelope) -> _Request:
    decoder = _decoders.get(env.content_type)
    if decoder is None:
        raise DecodeError(f"unknown content type {env.content_type!r}")
    return decoder.decode(decompress(env.body, env.encoding, MAX_DECODED))


_Decoded = tuple[list[Point], list[promrw.Metadata]]


def _decode_promrw(env: native.Envelope) -> _Decoded:
    return promrw.decode(promrw.snappy_decompress(env.body, MAX_DECODED), env.content_type)


def _decode_otlp(env: native.Envelope) -> _Decoded:
    return otlp.to_points(decompress(env.body, env.encoding, MAX_DECODED), env.content_type), []


def _decode_influx(env: native.Envelope) -> _Decoded:
    p = env.params
    labels = {k: p[k] for k in ("db", "rp", "bucket") if p.get(k)}
    body = decompress(env.body, env.encoding, MAX_DECODED)
    return influx.to_points(body, p.get("precision", "ns"), env.received_ms, labels), []


# Third-party protocols: samples without an agent seq, idempotent by (tenant, series, t), and
# metric metadata (remote write), the last write winning.
_THIRD_PARTY = {"prom-rw": _decode_promrw, "otlp": _decode_otlp, "influx": _decode_influx}


def add_record(batch: WriteBatch, record: LogRecord) -> int:
    """Decode ``record`` into ``batch``; returns the number of points added (0 for a dead letter)."""
    tenant = ""
    try:
        env = native.decode_envelope(record.value)
        tenant = env.tenant
        if env.protocol != "native":
            decoder = _THIRD_PARTY.get(env.protocol)
            if decoder is None:
                raise DecodeError(f"unknown protocol {env.protocol!r}")
            points, metadata = decoder(env)
            batch.samples.extend([(tenant, p) for p in points])
            if metadata:
                batch.metadata.extend([MetricMetadata(tenant, *m) for m in metadata])
            return len(points)
        req = _decode_native(env)
    except Exception as e:  # any failure to decode is poison data, never a reason to stop
        batch.dead_letters.append(
            DeadLetter(record.partition, record.offset, tenant, f"{type(e).__name__}: {e}", record.value)
        )
        return 0
    n = 0
    inc = req.incarnation
    if inc or req.first_seq != 1:
        batch.incarnations.append(Incarnation(env.tenant, env.agent, inc, req.first_seq))
    for r in req.reports:
        batch.reports.append(ReportWrite(env.tenant, env.agent, r.seq, r.points, inc))
        n += len(r.points)
    for d in req.dropped:
        batch.lost.append(LostRange(env.tenant, env.agent, d.first, d.last, d.reason, inc))
    if req.spool is not None:
        s = req.spool
        batch.spool.append(
            SpoolState(
                env.tenant,
                env.agent,
                s.pending_reports,
                s.pending_bytes,
                s.oldest_pending_ms,
                s.first_pending_seq,
                s.last_seq,
                env.received_ms,
                inc,
            )
        )
    return n
