"""The bounds of docs/protocols.md hold for whatever the ingest checks accept (issue 20: Influx values
stored as +Inf, Influx metric names of 2,044 characters, OTLP scope names of 100,000 characters as a
label). Each property generates bodies near the bounds; what ``check`` accepts, the worker's decoding
turns into points that :func:`check_points` (the native protocol's bounds) accepts, with finite values
where the protocol cannot carry NaN or Inf."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from lossproof.protocol import influx, otlp
from lossproof.protocol.thirdparty import MAX_LABEL_VALUE, MAX_NAME, BadBody, check_points

T0_S = 1_767_225_600
T0_NS = T0_S * 10**9

lengths = st.sampled_from([1, 5, 500, 1000, 1017, 1018, 1020, 1023, 1024, 1025, 1100])
numbers = st.one_of(
    st.builds(lambda n, e: "9" * n + "e" + str(e), st.integers(1, 400), st.integers(0, 400)),
    st.builds(lambda n: "9" * n, st.integers(1, 400)),
    st.builds(lambda n, e: "1." + "0" * n + "e" + str(e), st.integers(0, 30), st.integers(250, 320)),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)


@settings(max_examples=300, deadline=None)
@given(lengths, lengths, st.booleans(), numbers, st.booleans())
def test_influx_accepted_lines_are_within_bounds(
    m_len: int, f_len: int, is_value: bool, number: str, rp: bool
) -> None:
    field = "value" if is_value else "f" * f_len
    body = f"{'m' * m_len} {field}={number} {T0_S}".encode()
    added = ("db", "rp") if rp else ("db",)
    try:
        checked = influx.check(body, "s", added)
    except BadBody:
        return
    labels = {"db": "d", "rp": "r"} if rp else {"db": "d"}
    points = influx.to_points(body, "s", T0_S * 1000, labels)
    assert len(points) == checked.points == 1
    check_points(points, "influx")
    assert all(math.isfinite(p.v) for p in points), number


def test_influx_labels_with_db_and_rp_are_bounded() -> None:
    tags = ",".join(f"t{i}=v" for i in range(63))
    body = f"m,{tags} v=1 {T0_S}".encode()
    influx.check(body, "s", ("db",))  # 63 tags + db
    with pytest.raises(BadBody, match="65 labels"):
        influx.check(body, "s", ("db", "rp"))
    with pytest.raises(BadBody, match="db of 5000 characters"):
        influx.check_label_values({"db": "d" * 5000})


def _otlp(name: str, kind: str, scope: str) -> bytes:
    req = ExportMetricsServiceRequest()
    sm = req.resource_metrics.add().scope_metrics.add()
    sm.scope.name = scope
    m = sm.metrics.add()
    m.name = name
    p: Any = getattr(m, kind).data_points.add()
    p.time_unix_nano = T0_NS
    if kind in ("gauge", "sum"):
        p.as_double = 1.0
    elif kind == "histogram":
        p.count, p.sum = 1, 1.0
        p.explicit_bounds.append(1.0)
        p.bucket_counts.extend([1, 0])
    elif kind == "summary":
        p.count, p.sum = 1, 1.0
        q = p.quantile_values.add()
        q.quantile, q.value = 0.5, 1.0
    return bytes(req.SerializeToString())


@settings(max_examples=200, deadline=None)
@given(
    lengths,
    st.sampled_from(["gauge", "sum", "histogram", "summary"]),
    st.sampled_from([0, 10, MAX_LABEL_VALUE, MAX_LABEL_VALUE + 1, 100_000]),
)
def test_otlp_accepted_points_are_within_bounds(name_len: int, kind: str, scope_len: int) -> None:
    body = _otlp("n" * name_len, kind, "s" * scope_len)
    try:
        checked = otlp.check(body, otlp.PROTOBUF)
    except BadBody:
        assert scope_len > MAX_LABEL_VALUE
        return
    assert scope_len <= MAX_LABEL_VALUE
    points = otlp.to_points(body, otlp.PROTOBUF)
    check_points(points, "otlp")
    assert checked.points == (1 if points else 0)
    if name_len + 7 <= MAX_NAME:
        assert points


def test_otlp_lone_surrogate_in_json_gets_a_status_not_a_crash() -> None:
    body = b'{"resourceMetrics":"\\ud800"}'
    with pytest.raises(BadBody) as e:
        otlp.check(body, otlp.JSON)
    for ctype in (otlp.JSON, otlp.PROTOBUF):
        assert otlp.status(400, str(e.value), ctype)
