"""OTLP metrics: the mapping rule, both encodings, partial success, hostile bodies, properties."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from lossproof.protocol import otlp
from lossproof.protocol.thirdparty import BadBody

T0_NS = 1_767_225_600_000_000_000
T0 = T0_NS // 1_000_000


def request() -> tuple[Any, Any]:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    for k, v in (("service.name", "shop"), ("telemetry.sdk.version", "1.2"), ("host.name", "h1")):
        a = rm.resource.attributes.add()
        a.key, a.value.string_value = k, v
    sm = rm.scope_metrics.add()
    sm.scope.name, sm.scope.version = "shop.lib", "0.1"
    return req, sm


def by_series(points: list[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(p.metric, tuple(sorted(p.labels.items()))): p.v for p in points}


BASE = (("host.name", "h1"), ("otel.scope.name", "shop.lib"), ("service.name", "shop"))


def lab(*extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((*BASE, *extra)))


def test_mapping_of_every_metric_type() -> None:
    req, sm = request()
    g = sm.metrics.add()
    g.name = "temp"
    p = g.gauge.data_points.add()
    p.time_unix_nano, p.as_double = T0_NS + 999_999, 21.5  # truncated to the millisecond
    a = p.attributes.add()
    a.key, a.value.bool_value = "on", True
    s = sm.metrics.add()
    s.name, s.sum.is_monotonic, s.sum.aggregation_temporality = "reqs", True, 2
    p = s.sum.data_points.add()
    p.time_unix_nano, p.as_int = T0_NS, 42
    d = sm.metrics.add()
    d.name, d.sum.aggregation_temporality = "delta", 1
    p = d.sum.data_points.add()
    p.time_unix_nano, p.as_int = T0_NS, 3
    h = sm.metrics.add()
    h.name = "lat"
    p = h.histogram.data_points.add()
    p.time_unix_nano, p.count, p.sum, p.min, p.max = T0_NS, 4, 10.0, 0.5, 6.0
    p.explicit_bounds.extend([1.0, 5.0])
    p.bucket_counts.extend([1, 2, 1])
    e = sm.metrics.add()
    e.name = "size"
    p = e.exponential_histogram.data_points.add()
    p.time_unix_nano, p.count, p.sum, p.scale, p.zero_count = T0_NS, 4, 7.0, 0, 1
    p.positive.offset = 1
    p.positive.bucket_counts.extend([2, 1])  # (2,4], (4,8]
    q = sm.metrics.add()
    q.name = "rt"
    p = q.summary.data_points.add()
    p.time_unix_nano, p.count, p.sum = T0_NS, 10, 5.0
    for quantile, value in ((0.5, 0.4), (0.99, 1.2)):
        qv = p.quantile_values.add()
        qv.quantile, qv.value = quantile, value
    body = req.SerializeToString()
    checked = otlp.check(body, otlp.PROTOBUF)
    assert (checked.points, checked.rejected) == (6, 0)
    pts = otlp.to_points(body, otlp.PROTOBUF)
    assert {p.t for p in pts} == {T0}
    got = by_series(pts)
    assert got == {
        ("temp", lab(("on", "true"))): 21.5,
        ("reqs", lab()): 42.0,
        ("delta", lab(("otel.temporality", "delta"))): 3.0,
        ("lat_count", lab()): 4.0,
        ("lat_sum", lab()): 10.0,
        ("lat_min", lab()): 0.5,
        ("lat_max", lab()): 6.0,
        ("lat_bucket", lab(("le", "1"))): 1.0,
        ("lat_bucket", lab(("le", "5"))): 3.0,
        ("lat_bucket", lab(("le", "+Inf"))): 4.0,
        ("size_count", lab()): 4.0,
        ("size_sum", lab()): 7.0,
        ("size_bucket", lab(("le", "0"))): 1.0,
        ("size_bucket", lab(("le", "4"))): 3.0,
        ("size_bucket", lab(("le", "8"))): 4.0,
        ("size_bucket", lab(("le", "+Inf"))): 4.0,
        ("rt_count", lab()): 10.0,
        ("rt_sum", lab()): 5.0,
        ("rt", lab(("quantile", "0.5"))): 0.4,
        ("rt", lab(("quantile", "0.99"))): 1.2,
    }
    # the JSON encoding of the same request maps to the same points
    js = json_format.MessageToJson(req).encode()
    assert by_series(otlp.to_points(js, otlp.JSON)) == got


def test_attribute_values_and_precedence() -> None:
    req, sm = request()
    m = sm.metrics.add()
    m.name = "x"
    p = m.gauge.data_points.add()
    p.time_unix_nano, p.as_double = T0_NS, 1.0
    a = p.attributes.add()
    a.key, a.value.string_value = "host.name", "override"  # the point's own attribute wins
    a = p.attributes.add()
    a.key = "list"
    a.value.array_value.values.add().int_value = 1
    a.value.array_value.values.add().string_value = "b"
    a = p.attributes.add()
    a.key, a.value.double_value = "ratio", 0.25
    a = p.attributes.add()
    a.key, a.value.bytes_value = "raw", b"\x00\x01"
    a = p.attributes.add()
    a.key, a.value.string_value = "empty", ""
    [pt] = otlp.to_points(req.SerializeToString(), otlp.PROTOBUF)
    assert pt.labels == {
        "service.name": "shop",
        "host.name": "override",
        "otel.scope.name": "shop.lib",
        "list": '[1,"b"]',
        "ratio": "0.25",
        "raw": "AAE=",
    }


def test_partial_success_and_no_recorded_value() -> None:
    req, sm = request()
    m = sm.metrics.add()
    m.name = "ok"
    p = m.gauge.data_points.add()
    p.time_unix_nano, p.as_double = T0_NS, 1.0
    p = m.gauge.data_points.add()
    p.time_unix_nano = T0_NS + 1_000_000  # no value: refused
    p = m.gauge.data_points.add()
    p.as_double = 2.0  # no timestamp: refused
    p = m.gauge.data_points.add()
    p.time_unix_nano, p.flags = T0_NS + 2_000_000, 1  # "no recorded value": NaN
    body = req.SerializeToString()
    checked = otlp.check(body, otlp.PROTOBUF)
    assert (checked.points, checked.rejected) == (2, 2)
    assert "without a value" in checked.reject_reason
    pts = otlp.to_points(body, otlp.PROTOBUF)
    assert pts[0].v == 1.0 and math.isnan(pts[1].v) and len(pts) == 2
    resp = ExportMetricsServiceResponse.FromString(otlp.response(checked, otlp.PROTOBUF))
    assert resp.partial_success.rejected_data_points == 2
    assert b'"rejectedDataPoints": "2"' in otlp.response(checked, otlp.JSON)


@pytest.mark.parametrize(
    ("bounds", "counts", "count", "says"),
    [
        ([1.0, 1.0], [1, 1, 0], 2, "increase strictly"),  # two le="1" series before, one dropped
        ([5.0, 1.0], [1, 1, 0], 2, "increase strictly"),  # buckets not cumulative before
        ([1.0, math.inf], [1, 1, 1], 3, r"bound 1 is \+Inf"),  # two le="+Inf" series before
        ([math.nan], [1, 0], 1, "bound 0 is NaN"),  # an le="NaN" series before
        ([1.0, 2.0], [2, 2, 0], 3, "count 3 is less than its buckets' 4"),  # le="+Inf" < le="2"
        ([1.0, 2.0], [1, 1, 5], 3, "count 3 is less than its buckets' 7"),  # the last bucket counts too
    ],
)
def test_histograms_with_bad_bounds_or_count_are_refused_points(
    bounds: list[float], counts: list[int], count: int, says: str
) -> None:
    req, sm = request()
    m = sm.metrics.add()
    m.name = "h"
    p = m.histogram.data_points.add()
    p.time_unix_nano, p.count, p.sum = T0_NS, count, 1.0
    p.explicit_bounds.extend(bounds)
    p.bucket_counts.extend(counts)
    ok = m.histogram.data_points.add()
    ok.time_unix_nano, ok.count, ok.sum = T0_NS + 1_000_000, 3, 1.0
    ok.explicit_bounds.extend([-math.inf, 1.0])  # -Inf is a bound like any other
    ok.bucket_counts.extend([0, 2, 1])
    body = req.SerializeToString()
    checked = otlp.check(body, otlp.PROTOBUF)
    assert (checked.points, checked.rejected) == (1, 1)
    assert re.search(says, checked.reject_reason), checked.reject_reason
    got = {(x.metric, x.labels.get("le")): x.v for x in otlp.to_points(body, otlp.PROTOBUF)}
    assert got == {
        ("h_count", None): 3.0,
        ("h_sum", None): 1.0,
        ("h_bucket", "-Inf"): 0.0,
        ("h_bucket", "1"): 2.0,
        ("h_bucket", "+Inf"): 3.0,
    }


def test_exponential_histogram_with_a_count_below_its_buckets_is_refused() -> None:
    req, sm = request()
    m = sm.metrics.add()
    m.name = "e"
    p = m.exponential_histogram.data_points.add()
    p.time_unix_nano, p.count, p.sum, p.scale, p.zero_count = T0_NS, 3, 1.0, 0, 1
    p.positive.bucket_counts.extend([1, 2])
    checked = otlp.check(req.SerializeToString(), otlp.PROTOBUF)
    assert (checked.points, checked.rejected) == (0, 1)
    assert "count 3 is less than its buckets' 4" in checked.reject_reason
    p.count = 4
    assert otlp.check(req.SerializeToString(), otlp.PROTOBUF).rejected == 0


def hostile() -> list[tuple[str, bytes, str, str]]:
    out: list[tuple[str, bytes, str, str]] = []
    req, sm = request()
    m = sm.metrics.add()
    m.name = "g"
    p = m.gauge.data_points.add()
    p.time_unix_nano, p.as_double = T0_NS, 1.0
    good = req.SerializeToString()
    out.append(("truncated protobuf", good[:-4], otlp.PROTOBUF, "not a valid"))
    out.append(("json garbage", b'{"resourceMetrics": [', otlp.JSON, "JSON"))
    out.append(("json wrong type", b'{"resourceMetrics": [{"scopeMetrics": 5}]}', otlp.JSON, "scopeMetrics"))
    out.append(("json not utf-8", b'{"resourceMetrics": "\xff"}', otlp.JSON, "JSON"))
    out.append(("json deep nesting", b"[" * 100_000, otlp.JSON, "JSON"))
    p.time_unix_nano = 2**64 - 1  # year 2554
    out.append(("far future", req.SerializeToString(), otlp.PROTOBUF, "timestamp"))
    p.time_unix_nano = T0_NS
    for i in range(80):
        a = p.attributes.add()
        a.key, a.value.string_value = f"k{i}", "v"
    out.append(("huge label set", req.SerializeToString(), otlp.PROTOBUF, "labels"))
    del p.attributes[:]
    a = p.attributes.add()
    a.key, a.value.string_value = "k", "v" * 10_000
    out.append(("huge label value", req.SerializeToString(), otlp.PROTOBUF, "characters"))
    del p.attributes[:]
    h = sm.metrics.add()
    h.name = "h"
    hp = h.histogram.data_points.add()
    hp.time_unix_nano = T0_NS
    hp.explicit_bounds.extend(range(5000))
    hp.bucket_counts.extend([0] * 5001)
    out.append(("too many buckets", req.SerializeToString(), otlp.PROTOBUF, "bucket"))
    return out


@pytest.mark.parametrize(("name", "body", "ctype", "needle"), hostile(), ids=[h[0] for h in hostile()])
def test_hostile_bodies_are_refused_with_a_message(name: str, body: bytes, ctype: str, needle: str) -> None:
    with pytest.raises(BadBody, match=needle):
        otlp.check(body, ctype)


def test_error_bodies_are_google_rpc_status() -> None:
    from google.rpc import status_pb2  # type: ignore[import-untyped]

    st_ = status_pb2.Status.FromString(otlp.status(400, "bad thing", otlp.PROTOBUF))
    assert (st_.code, st_.message) == (3, "bad thing")
    assert b'"message": "bad thing"' in otlp.status(400, "bad thing", otlp.JSON)


# -- properties ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_cleanly_or_decode(body: bytes) -> None:
    for ctype in (otlp.PROTOBUF, otlp.JSON):
        try:
            checked = otlp.check(body, ctype)
        except BadBody:
            continue
        otlp.to_points(body, ctype)
        assert checked.points >= 0


attr_value = st.one_of(
    st.text(max_size=8), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False)
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["gauge", "sum", "histogram", "summary"]),
            st.dictionaries(st.text(max_size=6), attr_value, max_size=4),
            st.integers(0, 2**64 - 1),
            st.floats(),
        ),
        max_size=8,
    )
)
def test_structured_requests_check_and_decode_agree(
    items: list[tuple[str, dict[str, Any], int, float]],
) -> None:
    req, sm = request()
    for i, (kind, attrs, t, v) in enumerate(items):
        m = sm.metrics.add()
        m.name = f"m{i}"
        p = getattr(m, kind).data_points.add()
        p.time_unix_nano = t
        for k, x in attrs.items():
            a = p.attributes.add()
            a.key = k
            field = {str: "string_value", bool: "bool_value", int: "int_value", float: "double_value"}[
                type(x)
            ]
            setattr(a.value, field, x)
        if kind in ("gauge", "sum"):
            p.as_double = v
        else:
            p.count, p.sum = 1, v
    body = req.SerializeToString()
    try:
        checked = otlp.check(body, otlp.PROTOBUF)
    except BadBody:
        return
    pts = otlp.to_points(body, otlp.PROTOBUF)
    assert checked.points + checked.rejected == len(items)
    assert checked.points <= len(pts)
    assert all(0 <= p.t <= 4_102_444_800_000 for p in pts)
