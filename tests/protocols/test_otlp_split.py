"""OTLP bodies decoded a metric at a time (``otlp_split``) mean what decoding the whole request with
the official message classes means: the same resources, scopes and metrics, the same refusals, in
both encodings, including re-framed, reordered, merged and damaged protobuf."""

from __future__ import annotations

import random
from typing import Any

import pytest
from google.protobuf import json_format, message
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from lossproof.protocol import otlp
from lossproof.protocol.otlp_split import MAX_ENTRIES, split
from lossproof.protocol.thirdparty import BadBody
from lptest.proto import key, ld, varint

T0_NS = 1_767_225_600_000_000_000

names = st.text(alphabet="abcxyz._", min_size=0, max_size=6)


@st.composite
def requests(draw: st.DrawFn) -> Any:
    req = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rm = req.resource_metrics.add()
        rm.schema_url = draw(names)
        for k in draw(st.lists(names, max_size=3)):
            a = rm.resource.attributes.add()
            a.key, a.value.string_value = k, draw(names)
        for _ in range(draw(st.integers(0, 3))):
            sm = rm.scope_metrics.add()
            sm.scope.name = draw(names)
            for _ in range(draw(st.integers(0, 4))):
                m = sm.metrics.add()
                m.name = draw(names)
                kind = draw(st.sampled_from(["gauge", "sum", "histogram", "summary", None]))
                if kind is None:
                    continue
                data = getattr(m, kind)
                for i in range(draw(st.integers(0, 3))):
                    p = data.data_points.add()
                    p.time_unix_nano = draw(st.sampled_from([0, T0_NS + i * 1_000_000]))
                    if kind in ("gauge", "sum"):
                        if draw(st.booleans()):
                            p.as_double = draw(st.floats(allow_nan=False))
                    elif kind == "histogram":
                        p.count = draw(st.integers(0, 9))
                        p.explicit_bounds.extend([1.0, 2.0][: draw(st.integers(0, 2))])
                        p.bucket_counts.extend([1] * draw(st.integers(0, 3)))
                    else:
                        p.count, p.sum = 2, 1.5
    return req


def rebuilt(body: bytes, ctype: str) -> Any:
    """The request as the split decoding sees it (schema URLs are skipped: nothing uses them)."""
    req = ExportMetricsServiceRequest()
    for rm in split(body, ctype):
        out = req.resource_metrics.add()
        out.resource.CopyFrom(rm.resource)
        for sm in rm.scopes:
            so = out.scope_metrics.add()
            so.scope.CopyFrom(sm.scope)
            for m in sm.metrics:
                so.metrics.add().CopyFrom(m)
    return normal(req)


def normal(req: Any) -> Any:
    """Without what no reader can tell apart: schema URLs (nothing uses them), unknown fields, and
    whether an empty resource or scope was present."""
    req.DiscardUnknownFields()
    for rm in req.resource_metrics:
        rm.schema_url = ""
        if not rm.resource.ByteSize():
            rm.ClearField("resource")
        for sm in rm.scope_metrics:
            sm.schema_url = ""
            if not sm.scope.ByteSize():
                sm.ClearField("scope")
    return req


def whole(body: bytes, ctype: str) -> Any:
    req = ExportMetricsServiceRequest()
    if ctype == otlp.JSON:
        json_format.Parse(body, req, ignore_unknown_fields=True)
    else:
        req.ParseFromString(body)
    return normal(req)


def outcome(fn: Any, body: bytes, ctype: str) -> Any:
    try:
        return fn(body, ctype)
    except (BadBody, message.DecodeError, json_format.ParseError):
        return "error"


@settings(max_examples=150, deadline=None)
@given(requests())
def test_split_decodes_what_the_whole_message_decodes(req: Any) -> None:
    pb = req.SerializeToString()
    assert rebuilt(pb, otlp.PROTOBUF) == whole(pb, otlp.PROTOBUF)
    for proto_names in (False, True):
        js = json_format.MessageToJson(req, preserving_proto_field_name=proto_names).encode()
        assert rebuilt(js, otlp.JSON) == whole(js, otlp.JSON)
    # and the mapping to points is the same walk either way
    assert outcome(otlp.to_points, pb, otlp.PROTOBUF) == outcome(otlp.to_points, js, otlp.JSON)


@settings(max_examples=100, deadline=None)
@given(requests(), st.randoms(use_true_random=False))
def test_reframing_merges_as_protobuf_does(req: Any, rnd: random.Random) -> None:
    """A resource or scope in several pieces, placed after the metrics, with unknown fields of every
    wire type between them: protobuf merges the pieces, skips the unknown, whatever the order."""
    unknown = [
        key(15, 0) + varint(300),
        key(15, 1) + b"\x00" * 8,
        key(15, 5) + b"\x00" * 4,
        ld(15, b"junk"),
        key(15, 3) + key(1, 0) + varint(1) + key(15, 4),  # a group
    ]

    def reframe(msg: Any, inner: dict[int, Any]) -> bytes:
        pieces = []
        for field, value in msg.ListFields():
            num = field.number
            if field.type != field.TYPE_MESSAGE:  # a schema URL
                pieces.append(ld(num, value.encode()))
                continue
            for v in value if field.is_repeated else [value]:
                if num in inner:
                    pieces.append(ld(num, inner[num](v)))
                elif rnd.random() < 0.5:
                    pieces.append(ld(num, v.SerializeToString()))
                else:  # one message in two pieces
                    pieces += [ld(num, half) for half in split_message(v, rnd.randrange(8))]
        pieces += rnd.sample(unknown, rnd.randrange(len(unknown) + 1))
        rnd.shuffle(pieces)
        return b"".join(pieces)

    def scope_metrics(sm: Any) -> bytes:
        return reframe(sm, {2: lambda m: m.SerializeToString()})

    def resource_metrics(rm: Any) -> bytes:
        return reframe(rm, {2: scope_metrics})

    body = b"".join(ld(1, resource_metrics(rm)) for rm in req.resource_metrics)
    if rnd.random() < 0.5:
        body += rnd.choice(unknown)
    assert rebuilt(body, otlp.PROTOBUF) == whole(body, otlp.PROTOBUF)


def split_message(msg: Any, cut: int) -> tuple[bytes, bytes]:
    """Two serialized messages whose merge is ``msg``: its fields divided between them."""
    fields = msg.ListFields()
    head, tail = type(msg)(), type(msg)()
    for i, (field, value) in enumerate(fields):
        target = head if i < cut % (len(fields) + 1) else tail
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)
    return head.SerializeToString(), tail.SerializeToString()


@settings(max_examples=300, deadline=None)
@given(requests(), st.data())
def test_damaged_protobuf_is_refused_or_means_the_same(req: Any, data: st.DataObject) -> None:
    body = bytearray(req.SerializeToString())
    if not body:
        return
    how = data.draw(st.sampled_from(["flip", "truncate"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] ^= 1 << data.draw(st.integers(0, 7))
    else:
        del body[data.draw(st.integers(0, len(body) - 1)) :]
    got, want = outcome(rebuilt, bytes(body), otlp.PROTOBUF), outcome(whole, bytes(body), otlp.PROTOBUF)
    if want == "error" and got != "error":
        # the one accepted difference: a field nothing reads (a schema URL) is not decoded, so its
        # damage (invalid UTF-8) is not noticed
        assert any(not valid_utf8(url) for url in schema_urls(bytes(body)))
        return
    assert got == want


def valid_utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


def schema_urls(body: bytes) -> list[bytes]:
    """The schema URLs of a (well-framed) request: field 3 of every ResourceMetrics and ScopeMetrics."""

    def fields(b: bytes) -> list[tuple[int, bytes]]:
        out, i = [], 0
        while i < len(b):
            k, i = read_varint(b, i)
            if k & 7 == 2:
                n, i = read_varint(b, i)
                out.append((k >> 3, b[i : i + n]))
                i += n
            elif k & 7 == 0:
                i = read_varint(b, i)[1]
            else:
                i += {1: 8, 5: 4}[k & 7]
        return out

    urls = []
    for rm in (v for f, v in fields(body) if f == 1):
        for f, v in fields(rm):
            if f == 3:
                urls.append(v)
            elif f == 2:
                urls += [url for g, url in fields(v) if g == 3]
    return urls


def read_varint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        n |= (b[i] & 0x7F) << shift
        i += 1
        if b[i - 1] < 0x80:
            return n, i
        shift += 7


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"resourceMetrics": "\\ud800"}',
        b'{"resourceMetrics": [null]}',
        b'{"resourceMetrics": [{"scopeMetrics": [null]}]}',
        b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [null]}]}]}',
        b'{"resourceMetrics": [], "resource_metrics": []}',
        # a key given twice: protobuf's JSON parser refuses it; keeping the last would drop data
        b'{"resourceMetrics": [{"scopeMetrics": []}], "resourceMetrics": []}',
        b'{"resourceMetrics": [{"resource": {}, "scopeMetrics": [], "resource": {}}]}',
        b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [], "scope": {}, "metrics": []}]}]}',
        b'{"resourceMetrics": [{"scopeMetrics": [{"x": 1, "x": 2}]}]}',
        b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "a", "name": "b"}]}]}]}',
        b'{"resourceMetrics": [' * 5000,
        b"\xff\xfe",
    ],
)
def test_bad_json_is_a_bad_body(body: bytes) -> None:
    with pytest.raises(BadBody):
        otlp.check(body, otlp.JSON)


def test_json_whitespace_escapes_and_unknown_keys_are_not_repeated_keys() -> None:
    body = (
        b' \n{ "unknown" : [1, {"a": 2}] ,\t"resource\\u004detrics" :\r\n[ { "scopeMetrics" : [ {'
        b' "metrics" : [ {"name": "x", "gauge": {"dataPoints": [{"timeUnixNano": "1767225600000000000",'
        b' "asInt": "1"}]}} ] } ] } ] } \n'
    )
    assert otlp.check(body, otlp.JSON).points == 1


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"\x0a\x00" * (MAX_ENTRIES["resourceMetrics"] + 1), "resourceMetrics"),
        (ld(1, b"\x12\x00" * (MAX_ENTRIES["scopeMetrics"] + 1)), "scopeMetrics"),
        (ld(1, ld(2, b"\x12\x00" * (MAX_ENTRIES["metrics"] + 1))), "metrics"),
    ],
)
def test_a_request_of_too_many_entries_is_refused(body: bytes, kind: str) -> None:
    """Each entry costs a decode in Python however small it is: a few bytes of gzip must not buy
    minutes of CPU (an empty entry is 2 bytes; 8 MiB of them took 40 s before the cap)."""
    with pytest.raises(BadBody, match=f"more than {MAX_ENTRIES[kind]} {kind} entries"):
        otlp.check(body, otlp.PROTOBUF)
    # nor may unknown fields around the metrics (skipped one by one)
    with pytest.raises(BadBody, match="fields outside the metrics"):
        otlp.check(b"\x10\x00" * (MAX_ENTRIES["outer fields"] + 1), otlp.PROTOBUF)
    js = b'{"resourceMetrics": [' + b",".join([b"{}"] * (MAX_ENTRIES["resourceMetrics"] + 1)) + b"]}"
    with pytest.raises(BadBody, match="resourceMetrics entries"):
        otlp.check(js, otlp.JSON)


def test_json_nulls_are_absent_fields() -> None:
    body = (
        b'{"resourceMetrics": [{"resource": null, "scopeMetrics": [{"scope": null, "metrics": ['
        b'{"name": "x", "gauge": {"dataPoints": [{"timeUnixNano": "1767225600000000000", "asDouble": 1}]}}'
        b']}]}], "unknown": {}}'
    )
    assert otlp.check(body, otlp.JSON).points == 1
    [p] = otlp.to_points(body, otlp.JSON)
    assert (p.metric, p.labels, p.v) == ("x", {}, 1.0)


def test_points_come_in_bounded_chunks() -> None:
    req = ExportMetricsServiceRequest()
    sm = req.resource_metrics.add().scope_metrics.add()
    for m in range(7):
        g = sm.metrics.add()
        g.name = f"m{m}"
        for i in range(100):
            p = g.gauge.data_points.add()
            p.time_unix_nano, p.as_double = T0_NS + i * 1_000_000, float(i)
    body = req.SerializeToString()
    chunks = list(otlp.iter_points(body, otlp.PROTOBUF, 250))
    assert [len(c) for c in chunks] == [250, 250, 200]
    assert [p for c in chunks for p in c] == otlp.to_points(body, otlp.PROTOBUF)
