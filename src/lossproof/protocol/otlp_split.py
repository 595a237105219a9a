"""An ``ExportMetricsServiceRequest`` body split into its metrics, each decoded only when reached.

Decoding a whole request holds all of it as messages at once: ~6 bytes of memory per body byte for
protobuf, ~12 for JSON (measured with a 37 MB body). Here only the request's outer levels
(``resourceMetrics``, ``scopeMetrics``) are walked without decoding, and each ``Resource``,
``InstrumentationScope`` and ``Metric`` is decoded by the official message classes when its turn
comes; the memory held is the body plus the largest single metric.

The result is what decoding the whole body gives, by the format's own rules:

- protobuf: a message field that occurs more than once is the merge of its occurrences (which is
  what decoding their concatenation gives), fields of an unexpected wire type and unknown fields are
  skipped, a truncated or malformed field is an error;
- JSON: both the JSON name and the proto field name of a field are accepted (not both at once),
  ``null`` is an absent field, unknown fields are ignored. One difference from ``json_format``: a key
  repeated in the request, a ``resourceMetrics`` or a ``scopeMetrics`` object is taken once, the last
  one winning, as most JSON parsers do (json_format refuses it); inside a metric it is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec
from google.protobuf import json_format, message
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from lossproof.protocol.thirdparty import BadBody

JSON = "application/json"

# field numbers (opentelemetry-proto metrics/v1)
_RESOURCE_METRICS = 1  # ExportMetricsServiceRequest.resource_metrics
_RESOURCE = 1  # ResourceMetrics.resource
_SCOPE_METRICS = 2  # ResourceMetrics.scope_metrics
_SCOPE = 1  # ScopeMetrics.scope
_METRICS = 2  # ScopeMetrics.metrics


class Scope(NamedTuple):
    scope: Any  # InstrumentationScope
    metrics: Iterator[Any]  # Metric messages, decoded one at a time


class ResourceMetrics(NamedTuple):
    resource: Any  # Resource
    scopes: Iterator[Scope]


def split(body: bytes, ctype: str) -> Iterator[ResourceMetrics]:
    """The request's ``resourceMetrics`` in order; each level is decoded as it is iterated, so a
    damaged part raises BadBody when reached."""
    if ctype == JSON:
        return _json_request(body)
    return _pb_request(memoryview(body))


# -- protobuf -------------------------------------------------------------------------------------


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise _Malformed("truncated or overlong varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _skip_group(buf: memoryview, i: int, field: int, depth: int) -> int:
    if depth > 64:
        raise _Malformed("groups nested too deep")
    while True:
        key, i = _varint(buf, i)
        f, wt = key >> 3, key & 7
        if wt == 4:
            if f != field:
                raise _Malformed("mismatched end of group")
            return i
        i = _skip(buf, i, f, wt, depth + 1)


def _skip(buf: memoryview, i: int, field: int, wt: int, depth: int) -> int:
    if wt == 0:
        return _varint(buf, i)[1]
    if wt == 1:
        i += 8
    elif wt == 5:
        i += 4
    elif wt == 2:
        n, i = _varint(buf, i)
        i += n
    elif wt == 3:
        return _skip_group(buf, i, field, depth)
    else:
        raise _Malformed(f"invalid wire type {wt}")
    if i > len(buf):
        raise _Malformed("truncated field")
    return i


def _fields(buf: memoryview, want: int | None = None) -> Iterator[tuple[int, memoryview]]:
    """The length-delimited fields of one message, as (field number, bytes); only field ``want``
    if given. Other fields are checked for framing and skipped."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wt = key >> 3, key & 7
        if field == 0:
            raise _Malformed("field number 0")
        if wt == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise _Malformed("truncated field")
            if want is None or field == want:
                yield field, buf[i : i + n]
            i += n
        else:
            i = _skip(buf, i, field, wt, 0)


def _pb(cls: Any, pieces: list[memoryview], where: str) -> Any:
    try:
        return cls.FromString(b"".join(pieces))
    except message.DecodeError as e:
        raise BadBody(f"{where}: not a valid {cls.DESCRIPTOR.name} protobuf message: {e}") from None


def _pb_guard(it: Iterator[Any], where: str) -> Iterator[Any]:
    try:
        yield from it
    except _Malformed as e:
        msg = f"body is not a valid ExportMetricsServiceRequest protobuf message: {where} {e}"
        raise BadBody(msg) from None


def _pb_request(body: memoryview) -> Iterator[ResourceMetrics]:
    def walk() -> Iterator[ResourceMetrics]:
        for r, (_, rm) in enumerate(_fields(body, _RESOURCE_METRICS)):
            where = f"resourceMetrics[{r}]"
            resource = [v for _, v in _fields(rm, _RESOURCE)]
            yield ResourceMetrics(_pb(Resource, resource, f"{where}.resource"), _pb_scopes(rm, where))

    return _pb_guard(walk(), "")


def _pb_scopes(rm: memoryview, rwhere: str) -> Iterator[Scope]:
    def walk() -> Iterator[Scope]:
        for s, (_, sm) in enumerate(_fields(rm, _SCOPE_METRICS)):
            where = f"{rwhere}.scopeMetrics[{s}]"
            scope = [v for _, v in _fields(sm, _SCOPE)]
            yield Scope(_pb(InstrumentationScope, scope, f"{where}.scope"), _pb_metrics(sm, where))

    return _pb_guard(walk(), rwhere)


def _pb_metrics(sm: memoryview, swhere: str) -> Iterator[Any]:
    def walk() -> Iterator[Any]:
        for m, (_, metric) in enumerate(_fields(sm, _METRICS)):
            yield _pb(Metric, [metric], f"{swhere}.metrics[{m}]")

    return _pb_guard(walk(), swhere)


# -- JSON -----------------------------------------------------------------------------------------

_object = msgspec.json.Decoder(dict[str, msgspec.Raw])
_array = msgspec.json.Decoder(list[msgspec.Raw] | None)


def _json_members(raw: bytes | msgspec.Raw, where: str, names: dict[str, str]) -> dict[str, msgspec.Raw]:
    """The object's members that ``names`` knows (JSON name or proto name -> field), by field."""
    try:
        obj = _object.decode(raw)
    except (msgspec.DecodeError, UnicodeError, RecursionError) as e:
        raise BadBody(f"body is not a valid OTLP/JSON ExportMetricsServiceRequest: {where}: {e}") from None
    out: dict[str, msgspec.Raw] = {}
    for key, value in obj.items():
        field = names.get(key)
        if field is None:
            continue
        if field in out:
            raise BadBody(f"{where}: field {field!r} given twice (as its JSON name and its proto name)")
        out[field] = value
    return out


def _json_list(raw: msgspec.Raw | None, where: str) -> list[msgspec.Raw]:
    if raw is None:
        return []
    try:
        return _array.decode(raw) or []
    except (msgspec.DecodeError, UnicodeError, RecursionError) as e:
        raise BadBody(f"body is not a valid OTLP/JSON ExportMetricsServiceRequest: {where}: {e}") from None


def _json(cls: Any, raw: msgspec.Raw | None, where: str, element: bool = False) -> Any:
    """``raw`` decoded as a ``cls``; ``null`` is an absent field, but not an element of a list."""
    msg = cls()
    if raw is None or bytes(raw) == b"null":
        if element:
            raise BadBody(f"{where}: null is not allowed as an element of a list")
        return msg
    try:
        # OTLP/JSON writes trace and span ids in hex; json_format reads bytes as base64. Ids of
        # 16 and 32 hex digits are valid base64 too, and exemplars are not stored: no harm.
        json_format.Parse(bytes(raw), msg, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise BadBody(f"{where}: not a valid OTLP/JSON {cls.DESCRIPTOR.name}: {e}") from None
    except (ValueError, RecursionError, TypeError) as e:
        raise BadBody(f"{where}: not valid JSON: {type(e).__name__}: {e}") from None
    return msg


_REQUEST = {"resourceMetrics": "resource_metrics", "resource_metrics": "resource_metrics"}
_RM = {"resource": "resource", "scopeMetrics": "scope_metrics", "scope_metrics": "scope_metrics"}
_SM = {"scope": "scope", "metrics": "metrics"}


def _json_request(body: bytes) -> Iterator[ResourceMetrics]:
    top = _json_members(body, "request", _REQUEST)
    for r, rm in enumerate(_json_list(top.get("resource_metrics"), "resourceMetrics")):
        where = f"resourceMetrics[{r}]"
        fields = _json_members(rm, where, _RM)
        yield ResourceMetrics(
            _json(Resource, fields.get("resource"), f"{where}.resource"),
            _json_scopes(fields.get("scope_metrics"), where),
        )


def _json_scopes(raw: msgspec.Raw | None, rwhere: str) -> Iterator[Scope]:
    for s, sm in enumerate(_json_list(raw, f"{rwhere}.scopeMetrics")):
        where = f"{rwhere}.scopeMetrics[{s}]"
        fields = _json_members(sm, where, _SM)
        scope = _json(InstrumentationScope, fields.get("scope"), f"{where}.scope")
        yield Scope(scope, _json_metrics(fields, where))


def _json_metrics(fields: dict[str, msgspec.Raw], swhere: str) -> Iterator[Any]:
    for m, metric in enumerate(_json_list(fields.get("metrics"), f"{swhere}.metrics")):
        yield _json(Metric, metric, f"{swhere}.metrics[{m}]", element=True)
