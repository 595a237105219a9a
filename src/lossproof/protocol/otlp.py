"""OTLP/HTTP metrics (``ExportMetricsServiceRequest``), protobuf and JSON, with the official message
classes from ``opentelemetry-proto``.

Mapping to stored series (docs/protocols.md has the full rule):

- labels: resource attributes, then ``otel.scope.name`` and the scope's attributes, then the data
  point's attributes, a later one winning on the same key. Resource attributes ``telemetry.*``
  (the SDK's name, language and version) are left out: they describe the exporter, and would split
  every series at an SDK upgrade. Values become strings (bool ``true``/``false``, numbers in
  decimal, bytes base64, arrays and maps as JSON); an empty value is no label.
- gauge and sum points: one series ``<name>``; delta-temporality sums get ``otel.temporality=delta``.
- histogram points: ``<name>_bucket{le=...}`` (cumulative, ``le="+Inf"`` is the count),
  ``<name>_count``, ``<name>_sum``, ``<name>_min``, ``<name>_max`` (the last three when present);
  exponential histograms the same, their buckets turned into cumulative ``le`` bounds.
- summary points: ``<name>{quantile=...}``, ``<name>_count``, ``<name>_sum``.
- time: ``time_unix_nano`` truncated to milliseconds. A point flagged "no recorded value" stores NaN
  in ``<name>`` (or ``<name>_count``/``<name>_sum``).

Data points that cannot be stored (no value, no timestamp, a malformed histogram, a metric without a
name or data) are refused inside an accepted request, as OTLP's partial success: counted in
``rejected_data_points`` with a message. Bounds (timestamps, label counts and sizes, bucket counts)
refuse the whole request with 400.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec
from google.protobuf import json_format
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)

from lossproof.points import Point
from lossproof.protocol.otlp_split import split
from lossproof.protocol.thirdparty import (
    MAX_BUCKETS,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_NAME,
    MAX_TIME_MS,
    BadBody,
    Checked,
    UnsupportedBody,
    exp_buckets,
    fmt_float,
    time_error,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = {PROTOBUF: PROTOBUF, "application/protobuf": PROTOBUF, JSON: JSON}
NS_PER_MS = 1_000_000
DELTA = 1  # AGGREGATION_TEMPORALITY_DELTA
NO_RECORDED_VALUE = 1  # DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
NAN = float("nan")


def content_type_of(header: str) -> str:
    ctype = CONTENT_TYPES.get(header.partition(";")[0].strip().lower())
    if ctype is None:
        raise UnsupportedBody(
            f"unsupported Content-Type {header!r}: OTLP/HTTP sends application/x-protobuf or application/json"
        )
    return ctype


def check(body: bytes, ctype: str) -> Checked:
    """Decode the (decompressed) body and check its bounds. Raises BadBody."""
    walk = _Walk(body, ctype, build=False)
    for _ in walk.chunks(1 << 30):
        pass
    return walk.checked()


def iter_points(body: bytes, ctype: str, max_points: int) -> Iterator[list[Point]]:
    """The body's points, at most ``max_points`` (but at least one data point's) at a time. The
    body is decoded a metric at a time (:mod:`lossproof.protocol.otlp_split`), so memory follows
    ``max_points`` and the largest single metric, not the body. Raises BadBody like ``check``
    (for a body ``check`` accepted, only if it was damaged since)."""
    return _Walk(body, ctype, build=True).chunks(max_points)


def to_points(body: bytes, ctype: str) -> list[Point]:
    return [p for chunk in iter_points(body, ctype, 1 << 30) for p in chunk]


def response(checked: Checked, ctype: str) -> bytes:
    """The 200 answer: an ExportMetricsServiceResponse, with partial success when points were refused."""
    resp = ExportMetricsServiceResponse()
    if checked.rejected or checked.reject_reason:
        resp.partial_success.rejected_data_points = checked.rejected
        resp.partial_success.error_message = checked.reject_reason
    if ctype == JSON:
        return json_format.MessageToJson(resp, indent=None).encode()
    return bytes(resp.SerializeToString())


# google.rpc.Code for the HTTP statuses we answer
_RPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 415: 3, 503: 14}


def status(http_status: int, msg: str, ctype: str) -> bytes:
    """An error answer: a google.rpc.Status, as the OTLP/HTTP spec asks, in the request's encoding.
    A message quoting the request may hold a lone surrogate (from a JSON ``\\ud800`` escape), which
    a protobuf string cannot: it is written as that escape."""
    msg = msg.encode("utf-8", "backslashreplace").decode("utf-8")
    st = status_pb2.Status(code=_RPC_CODE.get(http_status, 2), message=msg)
    if ctype == JSON:
        return json_format.MessageToJson(st, indent=None).encode()
    return bytes(st.SerializeToString())


# -- the walk shared by check (build=False) and iter_points ------------------------------------------

_json = msgspec.json.Encoder()


def _value(v: Any) -> Any:
    k = v.WhichOneof("value")
    if k == "string_value":
        return v.string_value
    if k == "bool_value":
        return v.bool_value
    if k == "int_value":
        return v.int_value
    if k == "double_value":
        return v.double_value
    if k == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    if k == "array_value":
        return [_value(x) for x in v.array_value.values]
    if k == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if k == "string_value_strindex":
        return v.string_value_strindex
    return ""


def _label(v: Any) -> str:
    k = v.WhichOneof("value")
    if k == "string_value":
        return str(v.string_value)
    x = _value(v)
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return fmt_float(x)
    if isinstance(x, int | str):
        return str(x)
    try:
        return _json.encode(x).decode()
    except (TypeError, ValueError, OverflowError):  # NaN in an array: not JSON
        return repr(x)


class _Strings(dict[str, str]):
    """Equal label keys and values shared as one string: a batch holds each once, not once per
    point (a point's labels are ~half its memory). Cleared when big, so it stays bounded."""

    def share(self, s: str) -> str:
        if len(self) > 65_536:
            self.clear()
        return self.setdefault(s, s)


def _attrs(attrs: Iterable[Any], strings: _Strings, skip_telemetry: bool = False) -> dict[str, str]:
    """Attributes as labels. Raises BadBody (without a location: the caller knows it)."""
    out: dict[str, str] = {}
    for kv in attrs:
        key = kv.key
        if skip_telemetry and key.startswith("telemetry."):
            continue
        v = kv.value
        val = v.string_value if v.WhichOneof("value") == "string_value" else _label(v)
        if not key or len(key) > MAX_NAME:
            raise BadBody(f"attribute key {key[:64]!r} must be 1..{MAX_NAME} characters")
        if len(val) > MAX_LABEL_VALUE:
            raise BadBody(
                f"attribute {key!r} has a value of {len(val)} characters, at most {MAX_LABEL_VALUE}"
            )
        key, val = strings.share(key), strings.share(val)
        if val:
            out[key] = val
        else:
            out.pop(key, None)
    return out


class _Refused(Exception):
    """One data point cannot be stored: counted in the partial success."""


class _Walk:
    """One pass over a body: the points (``build``) or only the checks, and what was refused."""

    def __init__(self, body: bytes, ctype: str, build: bool) -> None:
        self.body, self.ctype, self.build = body, ctype, build
        self.accepted = self.refused = 0
        self.reason = ""
        self.strings = _Strings()
        self._last: tuple[Any, dict[str, str]] | None = None  # the previous point's attributes, labels

    def checked(self) -> Checked:
        reason = _reason(self.refused, self.reason)
        return Checked(points=self.accepted, rejected=self.refused, reject_reason=reason)

    def _refuse(self, n: int, why: str) -> None:
        self.refused += n
        self.reason = self.reason or why

    def chunks(self, max_points: int) -> Iterator[list[Point]]:
        out: list[Point] = []
        for r, rm in enumerate(split(self.body, self.ctype)):
            try:
                resource = _attrs(rm.resource.attributes, self.strings, skip_telemetry=True)
            except BadBody as e:
                raise BadBody(f"resourceMetrics[{r}].resource: {e}") from None
            for s, sm in enumerate(rm.scopes):
                where = f"resourceMetrics[{r}].scopeMetrics[{s}]"
                scope = dict(resource)
                if sm.scope.name:
                    if len(sm.scope.name) > MAX_LABEL_VALUE:
                        raise BadBody(
                            f"{where}.scope: name of {len(sm.scope.name)} characters, at most "
                            f"{MAX_LABEL_VALUE} (it becomes the label otel.scope.name)"
                        )
                    scope["otel.scope.name"] = sm.scope.name
                try:
                    scope.update(_attrs(sm.scope.attributes, self.strings))
                except BadBody as e:
                    raise BadBody(f"{where}.scope: {e}") from None
                for m, metric in enumerate(sm.metrics):
                    for points in self._metric(f"{where}.metrics[{m}]", scope, metric):
                        out.extend(points)
                        if len(out) >= max_points:
                            yield out
                            out = []
        if out:
            yield out

    def _metric(self, where: str, scope: dict[str, str], metric: Any) -> Iterator[list[Point]]:
        kind = metric.WhichOneof("data")
        name = metric.name
        if kind is None or not name or len(name) + _SUFFIX.get(kind, 0) > MAX_NAME:
            self._refuse(
                _count_points(metric, kind),
                f"{where}: metric without a name or data, or a name over {MAX_NAME} characters "
                "with the suffix of its series (_bucket, _count, ...)",
            )
            return
        data = getattr(metric, kind)
        extra = {}
        if kind in ("sum", "histogram", "exponential_histogram") and data.aggregation_temporality == DELTA:
            extra = {"otel.temporality": "delta"}
        build = _POINT[kind] if self.build else _CHECK.get(kind, _POINT[kind])
        self._last = None
        for i, p in enumerate(data.data_points):
            try:
                points = self._point(name, scope, extra, build, p)
            except _Refused as e:
                self._refuse(1, f"{where}.{kind}.dataPoints[{i}]: {e}")
                continue
            except BadBody as e:
                raise BadBody(f"{where}.{kind}.dataPoints[{i}]: {e}") from None
            self.accepted += 1
            if points:
                yield points

    def _point(
        self, name: str, scope: dict[str, str], extra: dict[str, str], build: _Build, p: Any
    ) -> list[Point]:
        """One data point's points. Raises _Refused (counted) or BadBody (refuses the request);
        their messages leave the location to the caller, so that the walk builds none per point."""
        attributes = p.attributes
        if not (attributes or extra):
            labels = scope
        elif self._last is not None and self._last[0] == attributes:
            # a series' points in a row (one export of many points) share one labels dict
            labels = self._last[1]
        else:
            labels = {**scope, **_attrs(attributes, self.strings), **extra}
            self._last = (attributes, labels)
        if len(labels) > MAX_LABELS:
            raise BadBody(
                f"{len(labels)} labels from resource, scope and point attributes, at most {MAX_LABELS}"
            )
        ns = p.time_unix_nano
        if ns == 0:
            raise _Refused("data point without time_unix_nano")
        t = ns // NS_PER_MS
        if t > MAX_TIME_MS:
            raise time_error("this data point", t)
        return build(name, labels, t, p)


# The longest suffix of the series a kind becomes (<name>_bucket, <name>_count): the stored names
# must keep within MAX_NAME too.
_SUFFIX = {"histogram": len("_bucket"), "exponential_histogram": len("_bucket"), "summary": len("_count")}


def _reason(refused: int, first: str) -> str:
    if not refused:
        return ""
    return f"{refused} data point(s) not stored; first: {first}"


def _count_points(metric: Any, kind: str | None) -> int:
    return 0 if kind is None else len(getattr(metric, kind).data_points)


def _number(name: str, labels: dict[str, str], t: int, p: Any) -> list[Point]:
    if p.flags & NO_RECORDED_VALUE:
        return [Point(name, labels, t, NAN)]
    k = p.WhichOneof("value")
    if k == "as_double":
        return [Point(name, labels, t, p.as_double)]
    if k == "as_int":
        return [Point(name, labels, t, float(p.as_int))]
    raise _Refused("number data point without a value")


def _stats(name: str, labels: dict[str, str], t: int, p: Any) -> list[Point]:
    out = [Point(f"{name}_count", labels, t, float(p.count))]
    if p.HasField("sum"):
        out.append(Point(f"{name}_sum", labels, t, p.sum))
    if p.HasField("min"):
        out.append(Point(f"{name}_min", labels, t, p.min))
    if p.HasField("max"):
        out.append(Point(f"{name}_max", labels, t, p.max))
    return out


def _buckets(name: str, labels: dict[str, str], t: int, pairs: list[tuple[str, float]]) -> list[Point]:
    bucket = f"{name}_bucket"
    return [Point(bucket, {**labels, "le": le}, t, v) for le, v in pairs]


def _no_value(name: str, labels: dict[str, str], t: int) -> list[Point]:
    return [Point(f"{name}_count", labels, t, NAN), Point(f"{name}_sum", labels, t, NAN)]


def _histogram(name: str, labels: dict[str, str], t: int, p: Any) -> list[Point]:
    if p.flags & NO_RECORDED_VALUE:
        return _no_value(name, labels, t)
    bounds, counts = p.explicit_bounds, p.bucket_counts
    if len(bounds) > MAX_BUCKETS:
        raise BadBody(f"histogram with {len(bounds)} bucket bounds, at most {MAX_BUCKETS}")
    if counts and len(counts) != len(bounds) + 1:
        raise _Refused(f"histogram with {len(bounds)} bounds needs {len(bounds) + 1} bucket counts")
    # OTLP: bounds strictly increasing; the last bucket is (last bound, +Inf), so a bound of +Inf
    # would give two le="+Inf" buckets. Refused as remote write refuses custom bounds.
    for i, b in enumerate(bounds):
        if math.isnan(b) or b == math.inf:
            raise _Refused(f"histogram bucket bound {i} is {fmt_float(b)}")
        if i and not b > bounds[i - 1]:
            raise _Refused(f"histogram bucket bounds must increase strictly ({bounds[i - 1]!r}, then {b!r})")
    pairs: list[tuple[str, float]] = []
    acc = 0
    for b, c in zip(bounds, counts, strict=False):
        acc += c
        pairs.append((fmt_float(b), float(acc)))
    _check_count(p.count, sum(counts))  # (the last bucket, above the last bound, too)
    pairs.append(("+Inf", float(p.count)))
    return _stats(name, labels, t, p) + _buckets(name, labels, t, pairs)


def _check_count(count: int, in_buckets: int) -> None:
    """le="+Inf" is the count: below the buckets' observations, the buckets would not be cumulative."""
    if in_buckets > count:
        raise _Refused(f"histogram count {count} is less than its buckets' {in_buckets} observations")


def _exponential(name: str, labels: dict[str, str], t: int, p: Any) -> list[Point]:
    if p.flags & NO_RECORDED_VALUE:
        return _no_value(name, labels, t)
    if not -10 <= p.scale <= 20:
        raise _Refused(f"exponential histogram scale {p.scale} outside -10..20")
    pos, neg = p.positive, p.negative
    if len(pos.bucket_counts) > MAX_BUCKETS or len(neg.bucket_counts) > MAX_BUCKETS:
        raise BadBody(f"exponential histogram with more than {MAX_BUCKETS} buckets on a side")
    pairs = exp_buckets(
        p.scale,
        p.zero_threshold,
        float(p.zero_count),
        [(pos.offset + i, float(c)) for i, c in enumerate(pos.bucket_counts)],
        [(neg.offset + i, float(c)) for i, c in enumerate(neg.bucket_counts)],
    )
    _check_count(p.count, p.zero_count + sum(pos.bucket_counts) + sum(neg.bucket_counts))
    pairs.append(("+Inf", float(p.count)))
    return _stats(name, labels, t, p) + _buckets(name, labels, t, pairs)


def _summary(name: str, labels: dict[str, str], t: int, p: Any) -> list[Point]:
    if p.flags & NO_RECORDED_VALUE:
        return _no_value(name, labels, t)
    if len(p.quantile_values) > MAX_BUCKETS:
        raise BadBody(f"summary with {len(p.quantile_values)} quantiles, at most {MAX_BUCKETS}")
    out = [
        Point(f"{name}_count", labels, t, float(p.count)),
        Point(f"{name}_sum", labels, t, p.sum),
    ]
    out.extend(
        Point(name, {**labels, "quantile": fmt_float(q.quantile)}, t, q.value) for q in p.quantile_values
    )
    return out


def _check_number(name: str, labels: dict[str, str], t: int, p: Any) -> list[Point]:
    """_number without building the point (the ingest check)."""
    if not p.flags & NO_RECORDED_VALUE and p.WhichOneof("value") is None:
        raise _Refused("number data point without a value")
    return []


_Build = Callable[[str, dict[str, str], int, Any], list[Point]]
_CHECK: dict[str, _Build] = {"gauge": _check_number, "sum": _check_number}
_POINT: dict[str, _Build] = {
    "gauge": _number,
    "sum": _number,
    "histogram": _histogram,
    "exponential_histogram": _exponential,
    "summary": _summary,
}
