"""Ingest's one-pass check of a remote-write 1.0 body (``lossproof._native.rw1_check``, under
``promrw.check``) against the exact parse and checks it stands in for (``_rw1_check`` off): for any
body, valid, near every bound, damaged or random bytes, ``check`` gives the same answer (the same
counts, or the same error and message) either way."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lossproof.protocol import promrw
from lossproof.protocol.thirdparty import MAX_LABELS, MAX_NAME, MAX_TIME_MS
from lptest.proto import damaged, ld

WriteRequest = promrw._message("prometheus.WriteRequest")


def outcome(body: bytes, fast: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(promrw, "_rw1_check", None)
        try:
            return ("ok", promrw.check(body, promrw.V1))
        except Exception as e:
            return ("error", type(e), str(e))


def same(body: bytes) -> Any:
    mp = pytest.MonkeyPatch()
    got, want = outcome(body, True, mp), outcome(body, False, mp)
    assert got == want, body[:64]
    return got


names = st.sampled_from(["__name__", "job", "instance", "", "é", "le", "n" * MAX_NAME, "n" * (MAX_NAME + 1)])
values = st.sampled_from(["up", "", "node", "ü" * 3, "v" * (MAX_NAME - 10), "é" * 600, "v" * 5000]) | st.text(
    max_size=5
)
times = st.sampled_from([0, 1, -1, MAX_TIME_MS, MAX_TIME_MS + 1, 1_700_000_000_000, -(2**63), 2**63 - 1])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    req = WriteRequest()
    for _ in range(draw(st.integers(0, 4))):
        ts = req.timeseries.add()
        if draw(st.integers(0, 3)):
            lb = ts.labels.add()
            lb.name, lb.value = "__name__", draw(st.sampled_from(["up", "", "m" * MAX_NAME, "x"]))
        n = draw(st.sampled_from([0, 1, 3, MAX_LABELS - 1, MAX_LABELS, MAX_LABELS + 1]))
        for i in range(n):
            lb = ts.labels.add()
            lb.name, lb.value = f"l{i}", "v"
        for k, v in draw(st.lists(st.tuples(names, values), max_size=3)):
            lb = ts.labels.add()
            lb.name, lb.value = k, v
        for _ in range(draw(st.integers(0, 6))):
            s = ts.samples.add()
            s.timestamp = draw(times | st.integers(1, MAX_TIME_MS))
            s.value = draw(st.floats(allow_nan=True))
        if draw(st.integers(0, 9)) == 0:
            ex = ts.exemplars.add()
            ex.value, ex.timestamp = 1.5, 5
        if draw(st.integers(0, 9)) == 0:
            h = ts.histograms.add()
            h.count_int, h.sum, h.schema, h.timestamp = 3, 2.5, 0, 1_700_000_000_000
            h.zero_count_int = 1
            sp = h.positive_spans.add()
            sp.offset, sp.length = 0, 2
            h.positive_deltas.extend([1, 0])
    if draw(st.booleans()):
        md = req.metadata.add()
        md.metric_family_name, md.type, md.help = "up", 1, "h"
    extra = draw(st.sampled_from([b"", b"\x08\x01", b"\x0d\x00\x00\x00\x00", b"\x2a\x00", b"\x0b\x0c"]))
    return extra + bytes(req.SerializeToString())


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_valid_bodies_check_the_same(body: bytes) -> None:
    same(body)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), st.data())
def test_damaged_bodies_check_the_same(body: bytes, data: st.DataObject) -> None:
    same(damaged(body, data))


_NAME = ld(1, ld(1, b"__name__") + ld(2, b"up"))
_VALUE = b"\x09" + struct.pack("<d", 1.0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
@example(ld(1, _NAME + ld(2, _VALUE + b"\x10\x01")))  # valid
@example(ld(1, _NAME + ld(2, b"\x08\x01\x10\x01")))  # a sample's value as a varint
@example(ld(1, _NAME + ld(2, _VALUE + b"\x11" + b"\x00" * 8)))  # a timestamp as fixed64
@example(ld(1, _NAME + ld(2, _VALUE + b"\x12\x01\x01")))  # a timestamp as bytes
@example(ld(1, _NAME + ld(2, _VALUE + b"\x15\x00\x00\x00\x00")))  # a timestamp as fixed32
@example(ld(1, _NAME + ld(2, _VALUE + b"\x13\x14\x10\x01")))  # a timestamp as a group
@example(ld(1, _NAME + ld(2, _VALUE)))  # no timestamp
@example(ld(1, _NAME + ld(2, _VALUE + b"\x10\x00")))  # timestamp 0 on the wire
@example(ld(1, _NAME + ld(2, _VALUE + b"\x10\x01\x10\x02")))  # two timestamps
@example(ld(1, _NAME + ld(2, _VALUE + b"\x10\x01\x18\x01")))  # an unknown field in a sample
@example(ld(1, _NAME + ld(2, _VALUE + b"\x10\x01") + b"\x28\x01"))  # an unknown field in a series
@example(ld(1, ld(1, ld(1, b"__name__") + ld(2, b"up") + b"\x18\x01") + ld(2, _VALUE + b"\x10\x01")))
@example(ld(1, ld(1, ld(1, b"__name__")) + ld(2, _VALUE + b"\x10\x01")))  # an empty metric name
@example(ld(1, ld(1, ld(2, b"up")) + _NAME + ld(2, _VALUE + b"\x10\x01")))  # an empty label name
@example(ld(1, ld(1, ld(1, b"__name__") + ld(2, b"")) + _NAME + ld(2, _VALUE + b"\x10\x01")))
@example(ld(1, _NAME + ld(1, ld(1, b"__name__") + ld(2, b"")) + ld(2, _VALUE + b"\x10\x01")))
@example(ld(1, ld(1, ld(1, b"job") + ld(2, b"x")) + ld(2, _VALUE + b"\x10\x01")))  # no __name__
@example(ld(1, b""))  # an empty series
@example(b"")  # an empty request
@example(ld(1, ld(1, ld(1, b"__name__") + ld(2, b"\xff")) + ld(2, _VALUE + b"\x10\x01")))  # not UTF-8
@example(ld(1, ld(1, ld(1, b"\xc0\x80") + ld(2, b"x")) + _NAME + ld(2, _VALUE + b"\x10\x01")))  # overlong
@example(ld(1, ld(1, ld(1, b"j") + ld(2, b"\xed\xa0\x80")) + _NAME))  # a surrogate
@example(ld(1, _NAME + ld(2, _VALUE + b"\x10" + b"\xff" * 9 + b"\x01")))  # a 10-byte timestamp
@example(ld(1, _NAME + ld(2, _VALUE + b"\x10" + b"\xff" * 9 + b"\x7f")))  # 10 bytes, overflowing
@example(ld(1, _NAME + ld(2, _VALUE + b"\x10" + b"\xff" * 10 + b"\x01")))  # an 11-byte varint
@example(ld(1, _NAME)[:-1])  # a series cut short
@example(b"\x8a\x00" + ld(1, _NAME + ld(2, _VALUE + b"\x10\x01"))[1:])  # a padded tag: upb takes it
@example(b"\x8a\x80\x80\x80\x80\x00" + ld(1, _NAME + ld(2, _VALUE + b"\x10\x01"))[1:])  # 6 bytes: refused
@example(ld(1, _NAME + ld(2, _VALUE + b"\x90\x80\x80\x80\x80\x00\x01")))  # a 6-byte timestamp tag
@example(b"\x0a\x9d\x00" + _NAME + ld(2, _VALUE + b"\x10\x01"))  # a padded length: upb takes it
@example(b"\x0a\x9d" + b"\x80" * 8 + b"\x00" + _NAME + ld(2, _VALUE + b"\x10\x01"))  # 10 bytes: refused
@example(ld(1, _NAME + ld(2, _VALUE + b"\x10\x81" + b"\x80" * 8 + b"\x00")))  # a padded 10-byte timestamp
@example(b"\x0a\xff\xff\xff\xff\x07")  # a length of 2**31 - 1
@example(ld(1, _NAME + b"\x12\x05\x10\x01"))  # a sample longer than its series
def test_any_bytes_check_the_same(body: bytes) -> None:
    same(body)


def test_a_plain_body_is_answered_in_one_pass() -> None:
    """Not vacuous: what Prometheus sends (labels, samples) is answered by the one pass, with the
    counts of the exact checks; with metadata or an exemplar it is not (the exact checks answer)."""
    job = ld(1, ld(1, b"job") + ld(2, b"node"))
    series = ld(1, _NAME + job + ld(2, _VALUE + b"\x10\x01") * 3)
    assert promrw._rw1_check is not None
    assert promrw._rw1_check(series * 2, MAX_LABELS, MAX_NAME, MAX_TIME_MS) == 6
    assert same(series * 2) == ("ok", promrw.Checked(points=6, histograms=0, exemplars=0, metadata=0))
    assert promrw._rw1_check(b"", MAX_LABELS, MAX_NAME, MAX_TIME_MS) == 0
    with_more = series + ld(3, ld(2, b"up")), ld(1, _NAME + ld(2, _VALUE + b"\x10\x01") + ld(3, b""))
    for body in with_more:
        assert promrw._rw1_check(body, MAX_LABELS, MAX_NAME, MAX_TIME_MS) is None
    assert same(with_more[0]) == ("ok", promrw.Checked(points=3, histograms=0, exemplars=0, metadata=1))
    assert same(with_more[1]) == ("ok", promrw.Checked(points=1, histograms=0, exemplars=1, metadata=0))
