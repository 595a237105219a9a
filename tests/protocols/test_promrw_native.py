"""Remote write 1.0 bodies read in Rust (``lossproof._native.rw1_series`` under ``promrw.iter_decode``)
against the message classes (the descriptors protoc compiles from the shipped .proto, see
test_promrw_parse.py), read as the worker read them before: the same series, labels, samples,
histogram points and metadata, and the same error class for a malformed body."""

from __future__ import annotations

import math
import struct
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lossproof.protocol import promrw
from lptest.proto import ld, varint

WriteRequest = promrw._message("prometheus.WriteRequest")


def reference(body: bytes, max_points: int) -> list[Any]:
    """promrw.iter_decode for 1.0 as it was (every series through its message class), flattened:
    per chunk its series (name, labels, t, v) and metadata."""
    meta: dict[str, Any] = {}
    for md in promrw._MetadataOnly.FromString(body).metadata:
        m = promrw._metadata(md.metric_family_name, md.type, md.help, md.unit)
        if m is not None:
            meta[m.metric] = m
    chunks: list[Any] = []
    out: list[Any] = []
    n_out = 0
    for blob in promrw._SeriesBlobs.FromString(body).v1:
        ts = promrw._V1_SERIES.FromString(blob)
        labels = {lb.name: lb.value for lb in ts.labels}
        name = labels.pop("__name__")
        if "" in labels.values():
            labels = {k: v for k, v in labels.items() if v}
        samples = ts.samples
        i, n = 0, len(samples)
        while i < n:
            j = min(n, i + max_points - n_out)
            part = samples[i:j]
            out.append((name, labels, [x.timestamp for x in part], [x.value for x in part]))
            n_out += j - i
            i = j
            if n_out >= max_points:
                chunks.append((out, []))
                out, n_out = [], 0
        for h in ts.histograms:
            hp = promrw._histogram_points(name, labels, h)
            out.extend((p.metric, p.labels, [p.t], [p.v]) for p in hp)
            n_out += len(hp)
            if n_out >= max_points:
                chunks.append((out, []))
                out, n_out = [], 0
    chunks.append((out, list(meta.values())))
    return chunks


def decoded(body: bytes, max_points: int) -> list[Any]:
    return [
        ([(s.metric, s.labels, list(s.t), list(s.v)) for s in c.series], c.metadata)
        for c in promrw.iter_decode(body, promrw.V1, max_points)
    ]


def outcome(f: Any, body: bytes, max_points: int) -> Any:
    try:
        return ("ok", canonical(f(body, max_points)))
    except Exception as e:
        return ("error", type(e))


def canonical(x: Any) -> Any:
    """NaN compared by its bits (repr of the float's bytes), everything else as it is."""
    if isinstance(x, float):
        return struct.pack("<d", x) if math.isnan(x) else x
    if isinstance(x, list | tuple):
        return [canonical(y) for y in x]
    if isinstance(x, dict):
        return {k: canonical(v) for k, v in x.items()}
    return x


def same(body: bytes, max_points: int = 7) -> None:
    assert outcome(decoded, body, max_points) == outcome(reference, body, max_points)


names = st.sampled_from(["__name__", "job", "instance", "", "é", "le"])
values = st.sampled_from(["up", "", "node", "ü" * 3, "x" * 40]) | st.text(max_size=5)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    req = WriteRequest()
    for _ in range(draw(st.integers(0, 5))):
        ts = req.timeseries.add()
        for k, v in draw(st.lists(st.tuples(names, values), max_size=5)):
            lb = ts.labels.add()
            lb.name, lb.value = k, v
        for t, v in draw(
            st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True)), max_size=12)
        ):
            s = ts.samples.add()
            s.timestamp, s.value = t, v
        if draw(st.integers(0, 9)) == 0:
            ex = ts.exemplars.add()
            ex.value, ex.timestamp = 1.5, 5
            lb = ex.labels.add()
            lb.name, lb.value = "trace_id", "abc"
        if draw(st.integers(0, 9)) == 0:
            h = ts.histograms.add()
            h.count_int, h.sum, h.schema, h.timestamp = 3, 2.5, 0, 1_700_000_000_000
            h.zero_count_int = 1
            sp = h.positive_spans.add()
            sp.offset, sp.length = 0, 2
            h.positive_deltas.extend([1, 0])
    for _ in range(draw(st.integers(0, 2))):
        md = req.metadata.add()
        md.metric_family_name, md.type, md.help = draw(values), draw(st.integers(0, 7)), "h"
    data = bytes(req.SerializeToString())
    # unknown fields and wrong wire types, anywhere a field may start (top level only: inside a
    # message they come from the mutations below)
    extra = draw(st.sampled_from([b"", b"\x08\x01", b"\x0d\x00\x00\x00\x00", b"\x2a\x00", b"\x0b\x0c"]))
    return extra + data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), st.integers(1, 20))
def test_valid_bodies_decode_as_the_message_classes_read_them(body: bytes, max_points: int) -> None:
    same(body, max_points)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), st.data())
def test_damaged_bodies_fail_or_decode_as_the_message_classes_say(body: bytes, data: st.DataObject) -> None:
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
    same(bytes(b))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
@example(b"\x0a\x02\x0a\x00")  # a series with an empty label
@example(b"\x0a\x04\x12\x02\x08\x01")  # a sample's value as a varint: unknown, the value is 0
@example(b"\x0a\x03\x0a\x01\xff")  # a label cut short
@example(b"\x00")  # field 0
@example(b"\x0c")  # an end group with no start
@example(b"\x0b\x0c")  # an empty group
@example(b"\x0b\x00\x00\x0c")  # field 0 inside a group: upb takes it there
@example(b"\x0b\x03\x00\x00\x04\x0c")  # a group of field 0 inside a group
@example(b"\x0a\x04\x13\x00\x00\x14")  # field 0 inside a group inside a series
@example(b"\x0b\x04")  # a group ended by field 0's end tag
@example(b"\x0b\x00\x00\x07\x0c")  # wire type 7 inside a group
@example(b"\x0a\x02\x1a\x00")  # an empty exemplar
@example(b"\x0a\x05\x0a\x03\x0a\x01\xff")  # a label name that is not UTF-8
@example(b"\x0a\x0b\x12\x09\x10" + b"\xff" * 9 + b"\x01")  # a 10-byte timestamp
@example(b"\x0a\x0c\x12\x0a\x10" + b"\xff" * 10 + b"\x01")  # an 11-byte varint
def test_any_bytes_fail_or_decode_as_the_message_classes_say(body: bytes) -> None:
    same(body)




def _groups(depth: int, field: int = 15) -> bytes:
    """An unknown group (field ``field``) nested ``depth`` deep."""
    return varint(field << 3 | 3) * depth + varint(field << 3 | 4) * depth


def test_nesting_limit_is_counted_as_the_message_classes_count_it() -> None:
    """upb counts one level per message and one per group, up to 100: the worker's Rust reader
    accepts exactly the bodies the ingest check (the whole request through the message classes)
    accepts, so none is refused after its 2xx. Unknown groups at the top level, in a TimeSeries, in a
    Label and in a Sample, around the limit."""
    name = ld(1, ld(1, b"__name__") + ld(2, b"up"))
    sample = ld(2, b"\x09" + struct.pack("<d", 1.0) + b"\x10\x01")
    for depth in (97, 98, 99, 100, 101):
        for body in (
            _groups(depth) + ld(1, name + sample),  # top level
            ld(1, name + sample + _groups(depth)),  # in the TimeSeries
            ld(1, ld(1, ld(1, b"__name__") + ld(2, b"up") + _groups(depth)) + sample),  # in a Label
            ld(1, name + ld(2, b"\x09" + struct.pack("<d", 1.0) + b"\x10\x01" + _groups(depth))),  # Sample
        ):
            try:
                WriteRequest.FromString(body)  # what the ingest check parses: the whole request
            except Exception:
                accepted = False
            else:
                accepted = True
            got = outcome(decoded, body, 7)
            assert (got[0] == "ok") == accepted, (depth, body[:8])
            if accepted:
                assert got == outcome(reference, body, 7)
