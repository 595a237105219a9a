"""An ``ExportMetricsServiceRequest`` body split into its metrics, each decoded only when reached.

Decoding a whole request holds all of it as messages at once: ~6 bytes of memory per body byte for
protobuf, ~12 for JSON (measured with a 37 MB body). Here the request's outer levels
(``resourceMetrics``, ``scopeMetrics``) are split without decoding what they hold, and each
``Resource``, ``InstrumentationScope`` and ``Metric`` is decoded by the official message classes when
its turn comes; the memory held is the body plus the largest single metric.

The result is what decoding the whole body gives, by the format's own rules:

- protobuf: the outer levels are walked over views of the body (no copy), by protobuf's wire
  rules: a ``resource`` or ``scope`` given more than once is the merge of its occurrences (each
  decoded on its own), unknown fields and fields of an unexpected wire type are skipped, and a
  truncated or malformed field is an error. Schema URLs are not decoded (nothing reads them), so
  invalid UTF-8 in one is not noticed.
- JSON: both the JSON name and the proto field name of a field are accepted (not both at once),
  ``null`` is an absent field (but not a list element), unknown fields are ignored, and a key given
  twice in an object is refused, as protobuf's own JSON parser does.

A request holds at most MAX_ENTRIES resourceMetrics, scopeMetrics and metrics in all (and, in
protobuf, fields outside its metrics): each costs work in Python however small it is.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec
from google.protobuf import json_format, message
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from lossproof.protocol.thirdparty import BadBody

JSON = "application/json"


class Scope(NamedTuple):
    scope: Any  # InstrumentationScope
    metrics: Iterator[Any]  # Metric messages, decoded one at a time


class ResourceMetrics(NamedTuple):
    resource: Any  # Resource
    scopes: Iterator[Scope]


def split(body: bytes, ctype: str) -> Iterator[ResourceMetrics]:
    """The request's ``resourceMetrics`` in order; each level is decoded as it is iterated, so a
    damaged part raises BadBody when reached, as does a request of more entries than MAX_ENTRIES."""
    counts = _Counts()
    if ctype == JSON:
        return _json_request(body, counts)
    return _pb_request(body, counts)


# Entries a request may hold, in all: each costs a decode in Python however small it is, so a few
# bytes of compressed body must not buy minutes of work. Real exporters send a few thousand metrics
# a request (the Collector batches ~8k points).
MAX_ENTRIES = {
    "resourceMetrics": 1 << 16,
    "scopeMetrics": 1 << 16,
    "metrics": 1 << 18,
    "outer fields": 1 << 20,
}


class _Counts(dict[str, int]):
    def add(self, kind: str, n: int) -> None:
        total = self[kind] = self.get(kind, 0) + n
        if total > MAX_ENTRIES[kind]:
            what = "fields outside the metrics" if kind == "outer fields" else f"{kind} entries"
            raise BadBody(f"more than {MAX_ENTRIES[kind]} {what} in one request")


# -- protobuf -------------------------------------------------------------------------------------
# The outer levels are walked over memoryviews of the body: no copy of it at any level (upb would copy
# each level's bytes, ~the body again per level). The walk is a Python loop per field, so its work is
# bounded by MAX_ENTRIES, not by the body's size.

# field numbers (opentelemetry-proto metrics/v1)
_RESOURCE_METRICS = 1  # ExportMetricsServiceRequest.resource_metrics
_RESOURCE = 1  # ResourceMetrics.resource
_SCOPE_METRICS = 2  # ResourceMetrics.scope_metrics
_SCOPE = 1  # ScopeMetrics.scope
_METRICS = 2  # ScopeMetrics.metrics


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
    elif wt == 3:  # a group: skipped to its end (protobuf's limit on nesting is 100)
        if depth >= 100:
            raise _Malformed("groups nested too deep")
        while True:
            key, i = _varint(buf, i)
            if key & 7 == 4:
                if key >> 3 != field:
                    raise _Malformed("mismatched end of group")
                return i
            i = _skip(buf, i, key >> 3, key & 7, depth + 1)
    else:
        raise _Malformed(f"invalid wire type {wt}")
    if i > len(buf):
        raise _Malformed("truncated field")
    return i


def _fields(buf: memoryview, counts: _Counts, want: int) -> Iterator[memoryview]:
    """The values of field ``want`` (length-delimited) of one message, as views. Other fields are
    checked for framing and skipped, as protobuf skips unknown fields and fields of another wire type."""
    i = 0
    while i < len(buf):
        counts.add("outer fields", 1)
        key, i = _varint(buf, i)
        field, wt = key >> 3, key & 7
        if field == 0 or field >= 1 << 29:
            raise _Malformed(f"invalid field number {field}")
        if wt == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise _Malformed("truncated field")
            if field == want:
                yield buf[i : i + n]
            i += n
        else:
            i = _skip(buf, i, field, wt, 0)


def _pb(cls: Any, pieces: list[memoryview], where: str) -> Any:
    """A message given in ``pieces`` (a field that occurs more than once): each decoded, then merged,
    as protobuf does."""
    msg = cls()
    try:
        for piece in pieces:
            msg.MergeFromString(piece)
    except message.DecodeError as e:
        raise BadBody(f"{where}: not a valid {cls.DESCRIPTOR.name} protobuf message: {e}") from None
    return msg


def _guard(it: Iterator[Any], where: str) -> Iterator[Any]:
    try:
        yield from it
    except _Malformed as e:
        msg = f"body is not a valid ExportMetricsServiceRequest protobuf message: {where}{e}"
        raise BadBody(msg) from None


def _pb_request(body: bytes, counts: _Counts) -> Iterator[ResourceMetrics]:
    def walk() -> Iterator[ResourceMetrics]:
        for r, rm in enumerate(_fields(memoryview(body), counts, _RESOURCE_METRICS)):
            counts.add("resourceMetrics", 1)
            where = f"resourceMetrics[{r}]"
            resource = _pb(Resource, list(_fields(rm, counts, _RESOURCE)), f"{where}.resource")
            yield ResourceMetrics(resource, _pb_scopes(rm, where, counts))

    return _guard(walk(), "")


def _pb_scopes(rm: memoryview, rwhere: str, counts: _Counts) -> Iterator[Scope]:
    def walk() -> Iterator[Scope]:
        for s, sm in enumerate(_fields(rm, counts, _SCOPE_METRICS)):
            counts.add("scopeMetrics", 1)
            where = f"{rwhere}.scopeMetrics[{s}]"
            scope = _pb(InstrumentationScope, list(_fields(sm, counts, _SCOPE)), f"{where}.scope")
            yield Scope(scope, _pb_metrics(sm, where, counts))

    return _guard(walk(), f"{rwhere}: ")


def _pb_metrics(sm: memoryview, swhere: str, counts: _Counts) -> Iterator[Any]:
    def walk() -> Iterator[Any]:
        for m, metric in enumerate(_fields(sm, counts, _METRICS)):
            counts.add("metrics", 1)
            yield _pb(Metric, [metric], f"{swhere}.metrics[{m}]")

    return _guard(walk(), f"{swhere}: ")


# -- JSON -----------------------------------------------------------------------------------------

_object = msgspec.json.Decoder(dict[str, msgspec.Raw])
_array = msgspec.json.Decoder(list[msgspec.Raw] | None)
_WS = rb"[ \t\n\r]*"
_KEY = rb'"(?:[^"\\]|\\.)*"' + _WS + rb":" + _WS
_FIRST = re.compile(_WS + rb"\{" + _WS + _KEY)
_NEXT = re.compile(_WS + rb"," + _WS + _KEY)
_END = re.compile(_WS + rb"\}" + _WS)
_EMPTY = re.compile(_WS + rb"\{" + _WS + rb"\}" + _WS)


class _PyBuffer(ctypes.Structure):
    # CPython's Py_buffer: only ``buf`` is read; the rest is there for the struct's size
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


def _address(buf: bytes | msgspec.Raw) -> int:
    """Where ``buf``'s bytes are in memory: a Raw is a view into its parent, so the difference of two
    addresses is an offset. (Through the buffer protocol, not numpy: the agent's relay decodes OTLP
    and does not load numpy.)"""
    if not len(buf):
        return 0
    view = _PyBuffer()
    if _get_buffer(buf, ctypes.byref(view), 0) != 0:  # PyBUF_SIMPLE: never fails for bytes or Raw
        raise BadBody("body could not be read")
    try:
        return int(view.buf or 0)
    finally:
        _release_buffer(ctypes.byref(view))


def _bad_json(where: str, e: Exception) -> BadBody:
    return BadBody(f"body is not a valid OTLP/JSON ExportMetricsServiceRequest: {where}: {e}")


def _json_members(raw: bytes | msgspec.Raw, where: str, names: dict[str, str]) -> dict[str, msgspec.Raw]:
    """The object's members that ``names`` knows (JSON name or proto name -> field), by field. A key
    given twice is refused, as protobuf's JSON parser refuses it (a decoder keeping only the last one
    would drop the data of the others)."""
    try:
        obj = _object.decode(raw)
    except (msgspec.DecodeError, UnicodeError, RecursionError) as e:
        raise _bad_json(where, e) from None
    _no_repeated_keys(raw, obj, where)
    out: dict[str, msgspec.Raw] = {}
    for key, value in obj.items():
        field = names.get(key)
        if field is None:
            continue
        if field in out:
            raise BadBody(f"{where}: field {field!r} given twice (as its JSON name and its proto name)")
        out[field] = value
    return out


def _no_repeated_keys(raw: bytes | msgspec.Raw, obj: dict[str, msgspec.Raw], where: str) -> None:
    """A decoded dict keeps one value per key. Its values are views into ``raw``: between them there
    must be nothing but one key each (and the punctuation), else a member was repeated."""
    base = _address(raw)
    spans = sorted((_address(v) - base, len(v)) for v in obj.values())
    text = memoryview(raw)
    pos = 0
    for i, (start, length) in enumerate(spans):
        if not (_FIRST if i == 0 else _NEXT).fullmatch(text[pos:start]):
            raise BadBody(f"{where}: a key is given more than once")
        pos = start + length
    if not (_END if spans else _EMPTY).fullmatch(text[pos:]):
        raise BadBody(f"{where}: a key is given more than once")


def _json_list(raw: msgspec.Raw | None, where: str, counts: _Counts, kind: str) -> list[msgspec.Raw]:
    if raw is None:
        return []
    try:
        items = _array.decode(raw) or []
    except (msgspec.DecodeError, UnicodeError, RecursionError) as e:
        raise _bad_json(where, e) from None
    counts.add(kind, len(items))
    return items


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


def _json_request(body: bytes, counts: _Counts) -> Iterator[ResourceMetrics]:
    top = _json_members(body, "request", _REQUEST)
    entries = _json_list(top.get("resource_metrics"), "resourceMetrics", counts, "resourceMetrics")
    for r, rm in enumerate(entries):
        where = f"resourceMetrics[{r}]"
        fields = _json_members(rm, where, _RM)
        resource = _json(Resource, fields.get("resource"), f"{where}.resource")
        scopes = _json_list(fields.get("scope_metrics"), f"{where}.scopeMetrics", counts, "scopeMetrics")
        yield ResourceMetrics(resource, _json_scopes(scopes, where, counts))


def _json_scopes(entries: list[msgspec.Raw], rwhere: str, counts: _Counts) -> Iterator[Scope]:
    for s, sm in enumerate(entries):
        where = f"{rwhere}.scopeMetrics[{s}]"
        fields = _json_members(sm, where, _SM)
        scope = _json(InstrumentationScope, fields.get("scope"), f"{where}.scope")
        metrics = _json_list(fields.get("metrics"), f"{where}.metrics", counts, "metrics")
        yield Scope(scope, _json_metrics(metrics, where))


def _json_metrics(entries: list[msgspec.Raw], swhere: str) -> Iterator[Any]:
    for m, metric in enumerate(entries):
        yield _json(Metric, metric, f"{swhere}.metrics[{m}]", element=True)
