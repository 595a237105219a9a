"""Turn log records into store writes. A record that cannot be decoded becomes a dead letter."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, cast

import msgspec

from lossproof.log.base import LogRecord
from lossproof.native_ext import _native
from lossproof.points import PointsBlock, sample_count
from lossproof.protocol import influx, native, otlp, promrw
from lossproof.protocol.compression import decompress
from lossproof.store.base import (
    DeadLetter,
    Incarnation,
    LostRange,
    MetricMetadata,
    Point,
    PointLike,
    ReportWrite,
    SeriesBlock,
    SeriesSamples,
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
    time: int = 0


class _Request(msgspec.Struct):
    agent: str
    # Each report stays a slice of the body (msgspec.Raw: no copy) until its turn: a request of
    # many reports is decoded a report at a time, never all of its points at once.
    reports: list[msgspec.Raw]
    dropped: list[native.DroppedIn] = []
    spool: native.SpoolIn | None = None
    incarnation: str = ""
    first_seq: int = 1


_decoders: dict[str, msgspec.json.Decoder[_Request] | msgspec.msgpack.Decoder[_Request]] = {
    native.JSON: msgspec.json.Decoder(_Request),
    native.MSGPACK: msgspec.msgpack.Decoder(_Request),
}
_report_decoders: dict[str, msgspec.json.Decoder[_Report] | msgspec.msgpack.Decoder[_Report]] = {
    native.JSON: msgspec.json.Decoder(_Report),
    native.MSGPACK: msgspec.msgpack.Decoder(_Report),
}

# Ingest bounded the decompressed size already; this only stops a record that was damaged into
# something enormous.
MAX_DECODED = 1 << 30

# What one part of a record may hold (see :func:`record_parts`). Memory follows points: a decoded
# point costs ~100 (remote write) to ~600 (native JSON, a labels dict per point) bytes in Python.
PART_POINTS = 65_536
PART_BYTES = 8 << 20


class DecodeError(Exception):
    pass


class Part(NamedTuple):
    """A piece of one log record, ready to be merged into a store batch."""

    batch: WriteBatch
    points: int
    size: int  # the decoded (uncompressed) bytes it came from: what the worker's batch cap counts


_WHOLE: dict[str, Callable[[bytes], tuple[bytes, list[tuple[int, int, Any, int]]] | None]] = {
    native.MSGPACK: _native.native_request,
}

# A report of a request: its bytes in the body, and either its (seq, time, points) decoded already
# or its bytes (msgspec.Raw) to decode in turn.
_ReportItem = tuple[int, "tuple[int, int, Sequence[PointLike]] | msgspec.Raw"]


def _decode_native(env: native.Envelope) -> tuple[_Request, int, list[_ReportItem], bool]:
    """The request, the body's decoded size, its reports, and whether they are decoded already.

    A msgpack request (what the agent sends) is read whole in Rust (``_native.native_request``,
    native/src/reports.rs): every report into a block, and the body less its reports left for
    msgspec to decode the other fields from. Before, msgspec walked every report's bytes to find
    where it ends (a ``msgspec.Raw``), then Rust read them again. A request it is not certain to
    read exactly as msgspec does (None) is decoded as before, a report at a time."""
    decoder = _decoders.get(env.content_type)
    if decoder is None:
        raise DecodeError(f"unknown content type {env.content_type!r}")
    body = decompress(env.body, env.encoding, MAX_DECODED)
    read_whole = _WHOLE.get(env.content_type)
    whole = read_whole(body) if read_whole is not None else None
    if whole is not None:
        head, blocks = whole
        req = decoder.decode(head)
        return req, len(body), [(n, (seq, t, PointsBlock(b))) for seq, t, b, n in blocks], True
    # the reports' Raw slices keep ``body`` alive until the last report is decoded
    req = decoder.decode(body)
    return req, len(body), [(len(raw), raw) for raw in req.reports], False


_FAST: dict[str, Callable[[Any], tuple[int, int, Any] | None]] = {
    native.MSGPACK: _native.native_report,
    native.JSON: _native.native_report_json,
}


def decode_report(raw: Any, content_type: str) -> tuple[int, int, Sequence[PointLike]]:
    """One report of a native request (its bytes, or the ``msgspec.Raw`` the request decoder kept):
    ``(seq, time, points)``; raises what the decoder raises for one it cannot decode.

    What the agent sends (msgpack), and plain JSON, is read in Rust: no Python object per point, the
    digest computed with it (``_native.native_report``, native/src/reports.rs). A report it is not
    certain to read exactly as msgspec does (None) takes msgspec, which stores or refuses it as before."""
    fast = _FAST.get(content_type)
    got = fast(raw) if fast is not None else None
    if got is not None:
        seq, time_ms, block = got
        return seq, time_ms, PointsBlock(block)
    r = _report_decoders[content_type].decode(raw)
    return r.seq, r.time, r.points


def _promrw_parts(env: native.Envelope, max_points: int, max_bytes: int) -> Iterator[_Chunk]:
    # no local name for the body: iter_decode releases it once it has read its views
    chunks = promrw.iter_decode(
        promrw.snappy_decompress(env.body, MAX_DECODED), env.content_type, max_points, max_bytes
    )
    for c in chunks:
        yield [], c.series, c.metadata, c.size


def _otlp_parts(env: native.Envelope, max_points: int, max_bytes: int) -> Iterator[_Chunk]:
    body = decompress(env.body, env.encoding, MAX_DECODED)
    size = len(body)
    for points in otlp.iter_points(body, env.content_type, max_points):
        # the body is held until its last metric is decoded; attribute it to the first chunk
        yield points, [], [], size
        size = 0
    if size:  # no points (all refused): the record still counts its bytes once
        yield [], [], [], size


def _influx_parts(env: native.Envelope, max_points: int, max_bytes: int) -> Iterator[_Chunk]:
    p = env.params
    labels = influx.request_labels(p)
    body = decompress(env.body, env.encoding, MAX_DECODED)
    size = len(body)
    for points in influx.iter_points(body, p.get("precision", "ns"), env.received_ms, labels, max_points):
        # the decoded text is held throughout; attribute it to the first chunk
        yield points, [], [], size
        size = 0


# (points, series columns, metadata, decoded bytes)
_Chunk = tuple[list[Point], list[SeriesSamples | SeriesBlock], list[promrw.Metadata], int]

# Third-party protocols: samples without an agent seq, idempotent by (tenant, series, t), and
# metric metadata (remote write), the last write winning.
_THIRD_PARTY: dict[str, Callable[[native.Envelope, int, int], Iterator[_Chunk]]] = {
    "prom-rw": _promrw_parts,
    "otlp": _otlp_parts,
    "influx": _influx_parts,
}


def _dead(record: LogRecord, tenant: str, e: Exception) -> Part:
    dl = DeadLetter(record.partition, record.offset, tenant, f"{type(e).__name__}: {e}", record.value)
    return Part(WriteBatch(dead_letters=[dl]), 0, 0)


def record_parts(
    record: LogRecord, max_points: int = PART_POINTS, max_bytes: int = PART_BYTES
) -> Iterator[Part]:
    """Decode ``record`` a part at a time, each of about ``max_points`` points and ``max_bytes``
    decoded bytes at most.

    Splitting never divides what the store keeps whole: a native report is always in one part (a
    report larger than ``max_points`` is a part of its own), and the request's incarnation, lost
    ranges and spool state go with its first part. Third-party samples are independent (stored at
    most once per series and timestamp), so their bodies are split anywhere. A record that cannot
    be decoded is a part holding its dead letter; one found damaged half-way (the log's checksums
    make that all but impossible for a body ingest checked) is dead-lettered after its earlier
    parts, whose writes are idempotent."""
    tenant = ""
    try:
        env = native.decode_envelope(record.value)
        tenant = env.tenant
        if env.protocol != "native":
            decoder = _THIRD_PARTY.get(env.protocol)
            if decoder is None:
                raise DecodeError(f"unknown protocol {env.protocol!r}")
            for points, series, metadata, size in decoder(env, max_points, max_bytes):
                part = WriteBatch(samples=[(tenant, p) for p in points], series=[(tenant, s) for s in series])
                if metadata:
                    part.metadata = [MetricMetadata(tenant, *m) for m in metadata]
                yield Part(part, len(points) + sum(map(sample_count, series)), size)
            return
        req, body_size, reports, decoded = _decode_native(env)
    except Exception as e:  # any failure to decode is poison data, never a reason to stop
        yield _dead(record, tenant, e)
        return
    inc = req.incarnation
    first = WriteBatch()
    if inc or req.first_seq != 1:
        first.incarnations.append(Incarnation(env.tenant, env.agent, inc, req.first_seq))
    for d in req.dropped:
        first.lost.append(LostRange(env.tenant, env.agent, d.first, d.last, d.reason, inc))
    if req.spool is not None:
        s = req.spool
        first.spool.append(
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
    part, n = first, 0
    # the first part also carries the envelope-level size (the body less its reports)
    size = body_size - sum(nbytes for nbytes, _ in reports)
    for nbytes, item in reports:
        if decoded:
            seq, time_ms, report_points = cast("tuple[int, int, Sequence[PointLike]]", item)
        else:
            try:
                seq, time_ms, report_points = decode_report(item, env.content_type)
            except Exception as e:
                yield _dead(record, tenant, e)
                return
        if part.reports and (n + len(report_points) > max_points or size + nbytes > max_bytes):
            yield Part(part, n, size)
            part, n, size = WriteBatch(), 0, 0
        part.reports.append(ReportWrite(env.tenant, env.agent, seq, report_points, inc, time_ms))
        n += len(report_points)
        size += nbytes
    yield Part(part, n, size)


def merge(into: WriteBatch, part: WriteBatch) -> None:
    """Append ``part``'s contents to ``into`` (keeping order: later spool states and metadata win)."""
    into.reports.extend(part.reports)
    into.samples.extend(part.samples)
    into.series.extend(part.series)
    into.lost.extend(part.lost)
    into.dead_letters.extend(part.dead_letters)
    into.gaps.extend(part.gaps)
    into.spool.extend(part.spool)
    into.metadata.extend(part.metadata)
    into.incarnations.extend(part.incarnations)


def add_record(batch: WriteBatch, record: LogRecord) -> int:
    """Decode all of ``record`` into ``batch``; returns the number of points added (0 for a dead
    letter). The worker uses :func:`record_parts`; this is for tests and small records."""
    n = 0
    for part in record_parts(record):
        merge(batch, part.batch)
        n += part.points
    return n
