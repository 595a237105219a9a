"""Remote write 1.0 bodies read in Rust (``lossproof._native.rw1_block`` under ``promrw.iter_decode``)
against the message classes (the descriptors protoc compiles from the shipped .proto, see
test_promrw_parse.py), read as the worker read them before: the same series, labels, samples,
histogram points and metadata, and the same error class for a malformed body."""

from __future__ import annotations

import math
import struct
import tempfile
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from lossproof import _native
from lossproof.log.base import LogRecord, PollResult
from lossproof.points import SeriesBlock, SeriesSamples, each_series
from lossproof.protocol import native, promrw
from lossproof.store.base import Matcher
from lossproof.store.columns import Columns
from lossproof.store.sqlite import SqliteStore
from lossproof.worker.loop import Worker
from lptest.proto import damaged, key, ld, varint

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
        ([(s.metric, s.labels, list(s.t), list(s.v)) for s in each_series(c.series)], c.metadata)
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
    same(damaged(body, data))


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


_VALUE = key(1, 1) + struct.pack("<d", 2.5)
_T = key(2, 0) + varint(1_700_000_000_123)


@pytest.mark.parametrize(
    "sample",
    [
        _VALUE + _T,  # as every encoder writes it (read straight)
        _T + _VALUE,  # the fields the other way round
        _VALUE + _T + key(2, 0) + varint(42),  # a repeated field: the last one wins
        _VALUE + key(1, 1) + struct.pack("<d", -1.0) + _T,
        _VALUE + _T + key(9, 0) + varint(5),  # an unknown field after them
        _VALUE + key(2, 0) + varint(7),  # a one-byte time
        _VALUE + key(2, 0) + varint(2**64 - 5),  # a 10-byte (negative) time
        _VALUE + key(2, 0) + b"\x80\x80",  # a time cut short
        _VALUE + key(2, 0) + b"\xff" * 10 + b"\x01",  # an 11-byte varint
        _VALUE,  # no time
        _T,  # no value (encoders leave out a 0): read straight too
        _T + key(2, 0) + varint(42),  # ... with the time repeated
        _T + _VALUE,  # ... with the value after it
        key(2, 0) + b"\x80",  # ... with the time cut short
        _VALUE[:-1] + _T,  # a value one byte short
        key(1, 0) + varint(3) + _T,  # the value as a varint: unknown, the value is 0
    ],
)
def test_sample_layouts_decode_as_the_message_classes_read_them(sample: bytes) -> None:
    """A Sample in the layout encoders write is read straight; any other layout (reordered,
    repeated, extra, short fields) as the message classes read it."""
    series = ld(1, ld(1, b"__name__") + ld(2, b"up")) + ld(2, sample) + ld(2, _VALUE + _T)
    same(ld(1, series))


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


# -- decoded straight into store columns (rw1_block, block_columns) ---------------------------------
#
# Remote write 1.0 decoded in Rust straight into store columns (``lossproof._native.rw1_block`` and
# ``block_columns``, native/src/rwcols.rs) against the path it replaced, kept here as the reference: the
# body read by ``rw1_series`` into a labels dict and two arrays per series (``_iter_v1`` as it was),
# then the store's Python loop over those series (``Columns.add_series`` as it was). The same chunks
# (bounds, sizes, series, errors), the same columns and the same calls to the store's resolver; and,
# through the worker into the embedded store, the same stored points as the message classes give,
# each stored once, the first write winning.

_NAME = "__name__"


def old_iter_v1(body: bytes, max_points: int, max_bytes: int) -> Iterator[promrw.Chunk]:
    """``promrw._iter_v1`` as it was before the block: a labels dict and two arrays per series."""
    meta: dict[str, promrw.Metadata] = {}
    for md in promrw._MetadataOnly.FromString(body).metadata:
        m = promrw._metadata(md.metric_family_name, md.type, md.help, md.unit)
        if m is not None:
            meta[m.metric] = m
    try:
        t_col, v_col, series, error = _native.rw1_series(body)
    except ValueError as e:
        raise message.DecodeError(f"Error parsing message: {e}") from None
    view = memoryview(body) if any(s[5] for s in series) else None
    out: list[SeriesSamples | SeriesBlock] = []
    n_out = 0
    size = 0
    t_all, v_all = memoryview(t_col), memoryview(v_col)
    for labels, first, last, start, end, more in series:
        histograms = (
            promrw._V1_SERIES.FromString(view[start:end]).histograms if view is not None and more else ()
        )
        size += end - start
        name = labels.pop(_NAME)
        if "" in labels.values():
            labels = {k: v for k, v in labels.items() if v}
        i, n = first, last
        while i < n:
            j = min(n, i + max_points - n_out)
            t, v = array("q"), array("d")
            t.frombytes(t_all[8 * i : 8 * j])
            v.frombytes(v_all[8 * i : 8 * j])
            out.append(SeriesSamples(name, labels, t, v))
            n_out += j - i
            i = j
            if n_out >= max_points:
                yield promrw.Chunk(out, [], size)
                out, n_out, size = [], 0, 0
        for h in histograms:
            hp = promrw._histogram_points(name, labels, h)
            out.extend(SeriesSamples(p.metric, p.labels, [p.t], [p.v]) for p in hp)
            n_out += len(hp)
            if n_out >= max_points:
                yield promrw.Chunk(out, [], size)
                out, n_out, size = [], 0, 0
        if size >= max_bytes and out:
            yield promrw.Chunk(out, [], size)
            out, n_out, size = [], 0, 0
    if error is not None:
        raise message.DecodeError(f"Error parsing message: {error}")
    yield promrw.Chunk(out, list(meta.values()), size)


def old_add_series(cols: Columns, tenant: str, series: list[SeriesSamples], known: Any, resolve: Any) -> None:
    """``Columns.add_series`` as it was: a key tuple per series."""
    ids: list[int] = []
    counts: list[int] = []
    ts, vs = array("q"), array("d")
    try:
        for s in series:
            key = (tenant, s.metric, *s.labels.items())
            sid = known.get(key)
            if sid is None:
                sid = resolve(key, tenant, s.metric, s.labels)
            n = len(s.t)
            ts.extend(s.t)
            vs.extend(s.v)
            ids.append(sid)
            counts.append(n)
    finally:
        sids = np.repeat(np.array(ids, dtype=np.int64), counts).tobytes()
        cols._put(sids, ts.tobytes(), vs.tobytes())


class Resolver:
    """A store's resolve: new ids for keys it has not seen (the same id for the same key, as the
    store's pending table gives), every call recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.ids: dict[tuple[Any, ...], int] = {}

    def __call__(self, key: tuple[Any, ...], tenant: str, metric: str, labels: Mapping[str, str]) -> int:
        self.calls.append((key, tenant, metric, dict(labels)))
        return self.ids.setdefault(key, 1000 + len(self.ids))


def chunks_of(f: Any, body: bytes, max_points: int, max_bytes: int) -> Any:
    try:
        return "ok", [
            (
                c.size,
                [(s.metric, s.labels, list(s.t), list(s.v)) for s in each_series(c.series)],
                c.metadata,
            )
            for c in f(body, max_points, max_bytes)
        ]
    except Exception as e:
        return "error", type(e), str(e)


def columns_of(
    chunks: list[promrw.Chunk], tenant: str, known: dict[tuple[Any, ...], int], new: bool
) -> tuple[list[Any], list[Any]]:
    resolve = Resolver()
    out = []
    for c in chunks:
        cols = Columns()
        if new:
            cols.add_series(tenant, c.series, known, resolve)
        else:
            old_add_series(cols, tenant, c.series, known, resolve)  # type: ignore[arg-type]
        sids, ts, vs = cols.in_order()
        out.append((list(sids), list(ts), [struct.pack("<d", v) for v in vs]))
    return out, resolve.calls


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), st.integers(1, 20), st.sampled_from([1, 40, 200, 1 << 62]), st.data())
def test_chunks_and_columns_are_the_old_paths(
    body: bytes, max_points: int, max_bytes: int, data: Any
) -> None:
    new = chunks_of(promrw._iter_v1, body, max_points, max_bytes)
    assert canonical(new) == canonical(chunks_of(old_iter_v1, body, max_points, max_bytes))
    if new[0] != "ok":
        return
    tenant = data.draw(st.sampled_from(["t1", "", "tenant-ü"]))
    # a store cache that already knows some of the series (by the old path's keys)
    old_chunks = list(old_iter_v1(body, max_points, max_bytes))
    keys = [(tenant, s.metric, *s.labels.items()) for c in old_chunks for s in c.series]
    known = {k: 7 + i for i, k in enumerate(keys) if data.draw(st.booleans(), label="known")}
    for _ in range(2):  # the second time the keys' texts are found in the extension's table
        got = columns_of(list(promrw._iter_v1(body, max_points, max_bytes)), tenant, dict(known), True)
        assert got == columns_of(old_chunks, tenant, dict(known), False)


def test_a_series_without_name_fails_as_before_after_the_series_before_it() -> None:
    req = WriteRequest()
    for labels in ([("__name__", "a")], [("job", "x")]):
        ts = req.timeseries.add()
        for k, v in labels:
            lb = ts.labels.add()
            lb.name, lb.value = k, v
        s = ts.samples.add()
        s.timestamp, s.value = 5, 1.0
    body = req.SerializeToString()
    got = promrw._iter_v1(body, 1, 1 << 62)
    first = next(got)
    assert [(s.metric, list(s.t)) for s in each_series(first.series)] == [("a", [5])]
    try:
        next(got)
    except KeyError as e:
        assert e.args == (_NAME,)
    else:
        raise AssertionError("no KeyError")
    assert chunks_of(promrw._iter_v1, body, 1, 1 << 62) == chunks_of(old_iter_v1, body, 1, 1 << 62)


def test_block_columns_refuse_a_range_outside_the_block() -> None:
    block, error = _native.rw1_block(ld(1, ld(1, ld(1, b"__name__") + ld(2, b"m")) + ld(2, b"\x10\x05")))
    assert error is None and block.samples() == 1
    for first, last in ((0, 2), (1, 0)):
        try:
            _native.block_columns("t", block, first, last, {}, Resolver())
        except ValueError:
            pass
        else:
            raise AssertionError("accepted")


# -- through the worker into the embedded store ---------------------------------------------------

_series = st.sampled_from(
    [
        [("__name__", "up"), ("job", "a")],
        [("__name__", "up"), ("job", "b")],
        [("job", "a"), ("__name__", "up")],  # the same labels in another order: the same series
        [("__name__", "up"), ("job", "a"), ("job", "")],  # a repeated name: the last value, "" no label
        [("__name__", "up"), ("job", "b"), ("x", "")],
        [("__name__", "cpu"), ("host", "ü")],
    ]
)
_T0 = 1_700_000_000_000


@st.composite
def store_bodies(draw: st.DrawFn) -> bytes:
    req = WriteRequest()
    for _ in range(draw(st.integers(0, 4))):
        ts = req.timeseries.add()
        for k, v in draw(_series):
            lb = ts.labels.add()
            lb.name, lb.value = k, v
        for t, v in draw(st.lists(st.tuples(st.integers(0, 12), st.floats(allow_nan=True)), max_size=8)):
            s = ts.samples.add()
            s.timestamp, s.value = _T0 + t * 1000, v
    return bytes(req.SerializeToString())


def record(i: int, body: bytes) -> LogRecord:
    env = native.Envelope(
        version=1,
        tenant="t1",
        protocol="prom-rw",
        content_type="application/x-protobuf",
        encoding="snappy",
        received_ms=_T0,
        agent="",
        seqs=[],
        body=bytes(promrw.cramjam.snappy.compress_raw(body)),
        params={},
    )
    return LogRecord(0, i, b"k", native.encode_envelope(env), _T0)


def expected(sent: list[bytes]) -> dict[Any, list[tuple[int, bytes]]]:
    """The message classes' points, the first of each (series, t) kept."""
    first: dict[Any, dict[int, float]] = {}
    for body in sent:
        for p in promrw.WriteRequest.FromString(body).timeseries:
            labels = {lb.name: lb.value for lb in p.labels}
            name = labels.pop(_NAME)
            key = (name, tuple(sorted((k, v) for k, v in labels.items() if v)))
            for s in p.samples:
                first.setdefault(key, {}).setdefault(s.timestamp, s.value)
    return {k: sorted((t, struct.pack("<d", v)) for t, v in pts.items()) for k, pts in first.items()}


class _Reader:
    def commit(self, offsets: Any) -> None:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(store_bodies(), max_size=6), st.integers(1, 9), st.integers(1, 4))
def test_the_worker_stores_every_point_once_first_write_wins(sent: list[bytes], part: int, per: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = SqliteStore(Path(d) / "s.db")
        try:
            w = Worker(_Reader(), store, CollectorRegistry(), batch_points=2 * part)  # type: ignore[arg-type]
            recs = [record(i, b) for i, b in enumerate(sent)]
            for i in range(0, len(recs), per):
                w._process(PollResult(recs[i : i + per], []))
            got: dict[Any, list[tuple[int, bytes]]] = {}
            for s in store.select("t1", [Matcher(_NAME, "=~", ".+")], 0, 2 * _T0):
                key = (s.metric, tuple(sorted(s.labels.items())))
                got[key] = [(t, struct.pack("<d", v)) for t, v in s.points]
            want = expected(sent)
            assert got == want
            assert w.metrics.points._value.get() == sum(len(v) for v in want.values())
            # the same bodies again: nothing new
            w._process(PollResult([record(100 + i, b) for i, b in enumerate(sent)], []))
            assert w.metrics.points._value.get() == sum(len(v) for v in want.values())
        finally:
            store.close()
