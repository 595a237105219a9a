"""Remote-write native histograms: the ingest check and the worker share one decoding, so every body
the check accepts is stored by the worker without a dead letter (a property over generated
histograms, through the worker's ``add_record`` and a real SQLite store), and spans are validated as
Prometheus validates them (issue 20: a negative span offset was acknowledged, then dead-lettered or
stored under the wrong ``le``)."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cramjam
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lossproof.log.base import LogRecord
from lossproof.points import STALE_NAN_BITS
from lossproof.protocol import native, promrw
from lossproof.protocol.decode import add_record
from lossproof.protocol.thirdparty import BadBody, check_points
from lossproof.store.base import WriteBatch
from lossproof.store.sqlite import SqliteStore

T0 = 1_767_225_600_000


@dataclass
class Spec:
    """One generated native histogram, before it becomes protobuf."""

    schema: int
    is_float: bool
    count: float
    sum: float
    zero_threshold: float
    zero_count: float
    positive_spans: list[tuple[int, int]]
    positive: list[float]  # deltas (integer histogram) or counts (float histogram)
    negative_spans: list[tuple[int, int]]
    negative: list[float]
    custom: list[float]
    name: str = "h"
    timestamp: int = T0


def body_of(specs: list[Spec], proto: str = promrw.V1) -> bytes:
    req = promrw.WriteRequest() if proto == promrw.V1 else promrw.RequestV2()
    for spec in specs:
        ts = req.timeseries.add()
        if proto == promrw.V1:
            lb = ts.labels.add()
            lb.name, lb.value = "__name__", spec.name
        else:
            req.symbols.extend(["", "__name__", spec.name])
            ts.labels_refs.extend([len(req.symbols) - 2, len(req.symbols) - 1])
        h = ts.histograms.add()
        h.schema, h.sum, h.timestamp, h.zero_threshold = (
            spec.schema,
            spec.sum,
            spec.timestamp,
            spec.zero_threshold,
        )
        if spec.is_float:
            h.count_float, h.zero_count_float = spec.count, spec.zero_count
            h.positive_counts.extend(spec.positive)
            h.negative_counts.extend(spec.negative)
        else:
            h.count_int, h.zero_count_int = int(spec.count), int(spec.zero_count)
            h.positive_deltas.extend(int(x) for x in spec.positive)
            h.negative_deltas.extend(int(x) for x in spec.negative)
        for spans, pairs in (
            (h.positive_spans, spec.positive_spans),
            (h.negative_spans, spec.negative_spans),
        ):
            for offset, length in pairs:
                s = spans.add()
                s.offset, s.length = offset, length
        h.custom_values.extend(spec.custom)
    return bytes(req.SerializeToString())


def record_of(body: bytes, proto: str) -> LogRecord:
    env = native.Envelope(
        version=1,
        tenant="t",
        protocol="prom-rw",
        content_type=proto,
        encoding="snappy",
        received_ms=T0,
        agent="",
        seqs=[],
        body=bytes(cramjam.snappy.compress_raw(body)),
    )
    return LogRecord(0, 0, b"k", native.encode_envelope(env), T0)


spans = st.lists(st.tuples(st.integers(-6, 6), st.integers(0, 4)), max_size=3)
small = st.integers(-3, 6).map(float)
spec = st.builds(
    Spec,
    schema=st.sampled_from([-53, -53, -4, 0, 3, 8, -5, 9]),
    is_float=st.booleans(),
    count=st.integers(0, 30).map(float),
    sum=st.sampled_from([0.0, 12.5, math.nan]),
    zero_threshold=st.sampled_from([0.0, 0.0, 0.001]),
    zero_count=st.integers(0, 3).map(float),
    positive_spans=spans,
    positive=st.lists(small, max_size=10),
    negative_spans=st.one_of(st.just([]), spans),
    negative=st.one_of(st.just([]), st.lists(small, max_size=6)),
    custom=st.one_of(
        st.just([]),
        st.lists(st.sampled_from([0.1, 0.5, 1.0, 2.5, 10.0]), max_size=5).map(sorted),
        st.lists(st.floats(allow_nan=True), max_size=4),
    ),
)


def consistent(s: Spec) -> Spec:
    """Make the count (and bucket list lengths) fit the spans, so that many generated histograms
    are valid and the property exercises the store too, not only refusals."""
    n_pos = sum(length for _, length in s.positive_spans)
    n_neg = sum(length for _, length in s.negative_spans)
    pos = (s.positive + [1.0] * n_pos)[:n_pos]
    neg = (s.negative + [1.0] * n_neg)[:n_neg]
    absolute = (lambda xs: xs) if s.is_float else (lambda xs: [sum(xs[: i + 1]) for i in range(len(xs))])
    total = sum(absolute(pos)) + sum(absolute(neg)) + (0 if s.schema == -53 else s.zero_count)
    return Spec(**{**s.__dict__, "positive": pos, "negative": neg, "count": max(total, 0.0)})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path_factory.mktemp("hist") / "store.db")
    yield s
    s.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(spec, spec.map(consistent)), min_size=1, max_size=3), st.booleans())
def test_every_histogram_the_check_accepts_is_stored_without_a_dead_letter(
    store: SqliteStore, specs: list[Spec], v2: bool
) -> None:
    proto = promrw.V2 if v2 else promrw.V1
    body = body_of(specs, proto)
    try:
        checked = promrw.check(body, proto)
    except BadBody:
        return
    batch = WriteBatch(now_ms=T0)
    add_record(batch, record_of(body, proto))
    assert batch.dead_letters == [], batch.dead_letters[0].reason
    assert checked.histograms == len(specs)
    points = [p for _, p in batch.samples] + [p for _, s in batch.series for p in s.points()]
    assert points or not checked.histograms
    check_points(points, "stored")  # the documented bounds hold for what is stored
    for p in points:
        if p.metric.endswith("_bucket"):
            assert p.labels["le"] != "NaN", p
    store.write_batch(batch)  # the store takes it (a failure here would dead-letter it)


def _custom(offsets: list[tuple[int, int]], counts: list[int], bounds: list[float]) -> Spec:
    return Spec(
        -53, False, float(sum(counts)), 1.0, 0.0, 0.0, offsets, [float(c) for c in counts], [], [], bounds
    )


@pytest.mark.parametrize(
    ("spans_", "deltas", "bounds", "says"),
    [
        ([(-3, 2)], [1, 0], [1.0, 2.0], "negative offset"),  # IndexError in the worker before
        ([(-1, 2)], [1, 0], [1.0, 2.0], "negative offset"),  # stored under the wrong le before
        ([(0, 1), (-1, 1)], [1, 0], [1.0, 2.0], "negative offset"),
        ([(0, 4)], [1, 0, 0, 0], [1.0, 2.0], "custom bounds define 3 buckets"),
        ([(0, 2)], [1, 0], [2.0, 1.0], "increase strictly"),
        ([(0, 2)], [1, 0], [1.0, math.inf], r"must not be \+Inf"),
        ([(0, 2)], [1, 0], [math.nan, 1.0], "NaN"),
        ([(0, 2)], [1, -2], [1.0, 2.0], "negative count"),
        ([(0, 2)], [1], [1.0, 2.0], "spans cover 2 buckets but 1"),
    ],
)
def test_custom_bucket_histograms_are_validated_as_prometheus_does(
    spans_: list[tuple[int, int]], deltas: list[int], bounds: list[float], says: str
) -> None:
    s = _custom(spans_, [0] * len(deltas), bounds)
    s.positive = [float(d) for d in deltas]
    s.count = float(sum(max(0, sum(deltas[: i + 1])) for i in range(len(deltas))))
    with pytest.raises(BadBody, match=says):
        promrw.check(body_of([s]), promrw.V1)


def test_exponential_histograms_are_validated_as_prometheus_does() -> None:
    ok = Spec(0, False, 3.0, 1.0, 0.001, 1.0, [(-2, 2)], [1.0, 0.0], [], [], [])
    promrw.check(body_of([ok]), promrw.V1)  # the first span may start below zero
    bad: list[tuple[dict[str, Any], str]] = [
        ({"positive_spans": [(0, 1), (-1, 1)]}, "negative offset"),
        ({"count": 4.0}, "count 4 does not match"),
        ({"custom": [1.0]}, "custom bounds"),
        ({"positive": [1.0, -2.0], "count": 1.0}, "negative count"),
        ({"schema": 9}, "schema 9"),
    ]
    for change, says in bad:
        with pytest.raises(BadBody, match=says):
            promrw.check(body_of([Spec(**{**ok.__dict__, **change})]), promrw.V1)
    # a NaN sum: NaN observations are in the count but in no bucket
    promrw.check(body_of([Spec(**{**ok.__dict__, "sum": math.nan, "count": 5.0})]), promrw.V1)


def test_derived_series_names_are_bounded_too() -> None:
    s = Spec(0, False, 1.0, 1.0, 0.0, 1.0, [], [], [], [], [], name="h" * 1020)
    with pytest.raises(BadBody, match="metric name"):
        promrw.check(body_of([s]), promrw.V1)  # h..._bucket would be 1,027 characters
    promrw.check(body_of([Spec(**{**s.__dict__, "name": "h" * 1017})]), promrw.V1)


def test_a_valid_custom_histogram_is_stored_under_its_bounds() -> None:
    s = _custom([(0, 1), (1, 2)], [2, -1, 0], [0.5, 1.0, 2.5])  # buckets 0, 2 and 3 (the +Inf one)
    s.count = 4.0  # absolute counts 2, 1, 1
    body = body_of([s])
    promrw.check(body, promrw.V1)
    got = {(p.metric, p.labels.get("le")): p.v for p in promrw.to_points(body, promrw.V1)}
    assert got == {
        ("h_count", None): 4.0,
        ("h_sum", None): 1.0,
        ("h_bucket", "0.5"): 2.0,
        ("h_bucket", "2.5"): 3.0,
        ("h_bucket", "+Inf"): 4.0,
    }


@pytest.mark.parametrize("proto", [promrw.V1, promrw.V2])
def test_a_histogram_without_a_timestamp_is_refused(proto: str) -> None:
    ok = Spec(0, False, 1.0, 1.0, 0.0, 1.0, [], [], [], [], [])
    promrw.check(body_of([ok], proto), proto)
    with pytest.raises(BadBody, match="without a timestamp"):  # stored at 1970-01-01 before
        promrw.check(body_of([Spec(**{**ok.__dict__, "timestamp": 0})], proto), proto)


@pytest.mark.parametrize("proto", [promrw.V1, promrw.V2])
def test_a_stale_histogram_is_the_marker_of_its_series_not_zeros(store: SqliteStore, proto: str) -> None:
    """What Prometheus sends when a native histogram's target goes away: the sum the staleness
    marker, nothing else set. Before, _count, the zero bucket and +Inf were stored as 0.0."""
    stale_nan = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
    marker = Spec(0, False, 0.0, stale_nan, 0.0, 0.0, [], [], [], [], [], name=f"gone_{proto[-2:]}")
    body = body_of([marker], proto)
    assert promrw.check(body, proto).histograms == 1
    batch = WriteBatch(now_ms=T0)
    add_record(batch, record_of(body, proto))
    points = [p for _, p in batch.samples] + [p for _, s in batch.series for p in s.points()]
    got = {(p.metric, p.labels.get("le")): p.v for p in points}
    assert len(points) == 3 and set(got) == {
        (f"{marker.name}_count", None),
        (f"{marker.name}_sum", None),
        (f"{marker.name}_bucket", "+Inf"),
    }
    assert all(struct.pack("<d", v) == struct.pack("<Q", STALE_NAN_BITS) for v in got.values())
    store.write_batch(batch)
