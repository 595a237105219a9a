"""Prometheus remote write: descriptors, mapping, hostile bodies, and check/to_points agreement."""

from __future__ import annotations

import math
from pathlib import Path

import cramjam
import pytest
from google.protobuf import descriptor_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lossproof.points import Point, encode_points
from lossproof.protocol import promrw
from lossproof.protocol.thirdparty import MAX_TIME_MS, BadBody
from lptest.proto import write_request

PROTO_DIR = Path(promrw.__file__).parent / "proto"
T0 = 1_767_225_600_000


def _fields(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, object]:
    out: dict[str, object] = {}
    for m in fd.message_type:
        out[m.name] = (
            sorted(
                (f.name, f.number, f.type, f.label, f.type_name, f.HasField("oneof_index")) for f in m.field
            ),
            sorted((e.name, [(v.name, v.number) for v in e.value]) for e in m.enum_type),
            [o.name for o in m.oneof_decl],
        )
    return out


@pytest.mark.parametrize(
    ("proto_file", "package", "schema"),
    [
        ("prometheus_remote_write.proto", "prometheus", promrw.V1_SCHEMA),
        ("prometheus_write_v2.proto", "io.prometheus.write.v2", promrw.V2_SCHEMA),
    ],
)
def test_descriptors_match_the_shipped_proto_files(
    tmp_path: Path, proto_file: str, package: str, schema: dict
) -> None:  # type: ignore[type-arg]
    """The runtime-built descriptors are exactly what protoc compiles from the shipped .proto."""
    from grpc_tools import protoc
    out = tmp_path / "set.pb"
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", str(PROTO_DIR / proto_file)])
    assert rc == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    compiled = fds.file[0]
    assert compiled.package == package
    assert _fields(compiled) == _fields(promrw.file_descriptor(proto_file, package, schema))


def test_mapping_name_labels_nan_inf_and_empty_labels() -> None:
    body = write_request(
        [
            ({"__name__": "up", "job": "p", "gone": ""}, [(T0, 1.0), (T0 + 1, math.nan)]),
            ({"__name__": "temp", "instance": "a:1"}, [(T0, math.inf), (T0 + 5, -math.inf)]),
        ]
    )
    checked = promrw.check(body, promrw.V1)
    assert checked.points == 4
    pts = promrw.to_points(body, promrw.V1)
    assert [(p.metric, p.labels, p.t) for p in pts] == [
        ("up", {"job": "p"}, T0),
        ("up", {"job": "p"}, T0 + 1),
        ("temp", {"instance": "a:1"}, T0),
        ("temp", {"instance": "a:1"}, T0 + 5),
    ]
    assert pts[0].v == 1.0 and math.isnan(pts[1].v) and pts[2].v == math.inf and pts[3].v == -math.inf


def test_metadata_only_request_is_accepted_with_metadata_and_no_points() -> None:
    req = promrw.WriteRequest()
    for type_, name, help_, unit in [
        (1, "http_requests_total", "Requests.", ""),
        (3, "latency_seconds", "Latency.", "seconds"),
        (0, "says_nothing", "", ""),  # left out
        (2, "", "No name.", ""),  # left out
        (2, "nul", "a\0b", ""),  # left out: no store keeps a NUL
        (2, "temp", "Old.", ""),
        (2, "temp", "Temperature.", "celsius"),  # the last one wins
        (99, "future_type", "A type this code does not know.", ""),
    ]:
        md = req.metadata.add()
        md.type, md.metric_family_name, md.help, md.unit = type_, name, help_, unit
    body = bytes(req.SerializeToString())
    checked = promrw.check(body, promrw.V1)
    assert (checked.points, checked.metadata) == (0, 8)
    assert promrw.to_points(body, promrw.V1) == []
    assert promrw.to_metadata(body, promrw.V1) == [
        ("http_requests_total", "counter", "Requests.", ""),
        ("latency_seconds", "histogram", "Latency.", "seconds"),
        ("temp", "gauge", "Temperature.", "celsius"),
        ("future_type", "unknown", "A type this code does not know.", ""),
    ]


def test_v2_metadata_resolves_through_the_symbols_keyed_by_the_series_name() -> None:
    req = promrw.RequestV2()
    req.symbols.extend(["", "__name__", "reqs_total", "job", "a", "b", "Requests.", "requests", "up"])
    for job in (4, 5):  # two series of one metric: one metadata entry
        ts = req.timeseries.add()
        ts.labels_refs.extend([1, 2, 3, job])
        ts.metadata.type, ts.metadata.help_ref, ts.metadata.unit_ref = 1, 6, 7
        s = ts.samples.add()
        s.timestamp, s.value = T0, 1.0
    ts = req.timeseries.add()  # unspecified type, no help, no unit: nothing to keep
    ts.labels_refs.extend([1, 8])
    ts.metadata.type = 0
    body = bytes(req.SerializeToString())
    checked = promrw.check(body, promrw.V2)
    assert (checked.points, checked.metadata) == (2, 3)
    points, meta = promrw.decode(body, promrw.V2)
    assert len(points) == 2
    assert meta == [promrw.Metadata("reqs_total", "counter", "Requests.", "requests")]
    # a reference outside the symbols is refused
    req.timeseries[0].metadata.help_ref = 9
    with pytest.raises(BadBody, match="metadata help_ref/unit_ref"):
        promrw.check(bytes(req.SerializeToString()), promrw.V2)


def test_native_histogram_becomes_count_sum_and_cumulative_buckets() -> None:
    req = promrw.WriteRequest()
    ts = req.timeseries.add()
    lb = ts.labels.add()
    lb.name, lb.value = "__name__", "lat"
    h = ts.histograms.add()
    h.count_int, h.sum, h.schema, h.zero_threshold, h.zero_count_int, h.timestamp = 6, 10.0, 0, 0.001, 1, T0
    span = h.positive_spans.add()
    span.offset, span.length = 1, 3  # buckets 1..3: (1,2], (2,4], (4,8]
    h.positive_deltas.extend([2, -1, 1])  # absolute 2, 1, 2
    body = bytes(req.SerializeToString())
    checked = promrw.check(body, promrw.V1)
    assert (checked.points, checked.histograms) == (0, 1)
    pts = {(p.metric, p.labels.get("le")): p.v for p in promrw.to_points(body, promrw.V1)}
    assert pts == {
        ("lat_count", None): 6.0,
        ("lat_sum", None): 10.0,
        ("lat_bucket", "0.001"): 1.0,
        ("lat_bucket", "2"): 3.0,
        ("lat_bucket", "4"): 4.0,
        ("lat_bucket", "8"): 6.0,
        ("lat_bucket", "+Inf"): 6.0,
    }
    # the relay: a body with native histograms is decoded by iter_decode, not from the columns
    ts = req.timeseries.add()
    for k, v in (("__name__", "plain"), ("job", "")):
        lb = ts.labels.add()
        lb.name, lb.value = k, v
    s = ts.samples.add()
    s.timestamp, s.value = T0, 1.0
    body = bytes(req.SerializeToString())
    assert promrw.check(body, promrw.V1, keep=True).decoding.fast is None
    _decoding_agrees(body, promrw.V1, promrw.to_points(body, promrw.V1))


def test_remote_write_2_symbols_and_written_headers() -> None:
    req = promrw.RequestV2()
    req.symbols.extend(["", "__name__", "up", "job", "p"])
    ts = req.timeseries.add()
    ts.labels_refs.extend([1, 2, 3, 4])
    s = ts.samples.add()
    s.timestamp, s.value = T0, 1.0
    e = ts.exemplars.add()
    e.value, e.timestamp = 1.0, T0
    body = bytes(req.SerializeToString())
    checked = promrw.check(body, promrw.V2)
    assert (checked.points, checked.exemplars) == (1, 1)
    assert promrw.samples_written(checked) == {
        "X-Prometheus-Remote-Write-Samples-Written": "1",
        "X-Prometheus-Remote-Write-Histograms-Written": "0",
        "X-Prometheus-Remote-Write-Exemplars-Written": "0",
    }
    [p] = promrw.to_points(body, promrw.V2)
    assert (p.metric, p.labels, p.t, p.v) == ("up", {"job": "p"}, T0, 1.0)
    ts.labels_refs.append(99)
    with pytest.raises(BadBody, match="labels_refs"):
        promrw.check(bytes(req.SerializeToString()), promrw.V2)


def test_content_type_negotiation() -> None:
    assert promrw.proto_of("application/x-protobuf") == promrw.V1
    assert promrw.proto_of("") == promrw.V1
    assert promrw.proto_of("application/x-protobuf;proto=prometheus.WriteRequest") == promrw.V1
    assert promrw.proto_of("application/x-protobuf; proto=io.prometheus.write.v2.Request") == promrw.V2
    for bad in ("application/json", "application/x-protobuf;proto=foo.Bar"):
        with pytest.raises(promrw.UnsupportedBody):
            promrw.proto_of(bad)
    with pytest.raises(promrw.UnsupportedBody):
        promrw.check_encoding("gzip")


HOSTILE: list[tuple[str, bytes, str]] = [
    ("truncated protobuf", write_request([({"__name__": "a"}, [(T0, 1.0)])])[:-3], "not a valid"),
    # a label value sent as a varint: an unknown field, so the series has no metric name
    ("label value of the wrong type", b"\n\x0e\n\x0c\n\x08__name__\x10\x05", "__name__"),
    # a sample's timestamp sent as a string, its value as a varint
    (
        "timestamp of the wrong type",
        b"\n\x1d\n\r\n\x08__name__\x12\x01a\x12\x0c\t\x00\x00\x00\x00\x00\x00\x00?\x12\x01x",
        "wire type",
    ),
    (
        "value of the wrong type",
        b"\n\x16\n\r\n\x08__name__\x12\x01a\x12\x05\x08\x01\x10\xe8\x07",
        "wire type",
    ),
    ("sample without a timestamp", write_request([({"__name__": "a"}, [(0, 1.0)])]), "without a timestamp"),
    ("no __name__", write_request([({"job": "x"}, [(T0, 1.0)])]), "__name__"),
    ("empty __name__", write_request([({"__name__": ""}, [(T0, 1.0)])]), "__name__"),
    ("empty label name", write_request([({"__name__": "a", "": "v"}, [(T0, 1.0)])]), "label name"),
    (
        "huge label set",
        write_request([({"__name__": "a", **{f"l{i}": "v" for i in range(100)}}, [(T0, 1.0)])]),
        "labels",
    ),
    ("huge label value", write_request([({"__name__": "a", "l": "x" * 5000}, [(T0, 1.0)])]), "characters"),
    ("huge metric name", write_request([({"__name__": "m" * 2000}, [(T0, 1.0)])]), "characters"),
    ("timestamp in ns", write_request([({"__name__": "a"}, [(T0 * 1_000_000, 1.0)])]), "timestamp"),
    ("negative timestamp", write_request([({"__name__": "a"}, [(-1, 1.0)])]), "timestamp"),
    ("year 2101", write_request([({"__name__": "a"}, [(MAX_TIME_MS + 1, 1.0)])]), "timestamp"),
    ("invalid utf-8 label", b"\n\x0b\n\x09\n\x01a\x12\x04\xff\xfe\xfd\xfc", "not a valid"),
]


@pytest.mark.parametrize(("name", "body", "needle"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_are_refused_with_a_message(name: str, body: bytes, needle: str) -> None:
    with pytest.raises(BadBody, match=needle):
        promrw.check(body, promrw.V1)


def test_snappy_bounds() -> None:
    with pytest.raises(BadBody, match="snappy"):
        promrw.snappy_decompress(b"\x07garbage", 1 << 20)
    # a bomb: 64 MiB of zeros announce their size up front and are refused before any work
    bomb = bytes(cramjam.snappy.compress_raw(b"\0" * (64 << 20)))
    with pytest.raises(promrw.TooLarge):
        promrw.snappy_decompress(bomb, 16 << 20)
    # a header that lies about the size
    body = bytes(cramjam.snappy.compress_raw(b"abc" * 100))
    with pytest.raises(BadBody):
        promrw.snappy_decompress(b"\x05" + body[2:], 1 << 20)


# -- properties ------------------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=12)
labels = st.dictionaries(names, names, max_size=6)
samples = st.lists(
    st.tuples(st.integers(-(2**40), 2**43), st.floats(allow_nan=True, allow_infinity=True)), max_size=4
)
series = st.lists(
    st.tuples(st.one_of(labels, labels.map(lambda d: {"__name__": "m", **d})), samples), max_size=6
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series)
def test_check_and_to_points_agree(data: list[tuple[dict[str, str], list[tuple[int, float]]]]) -> None:
    """Whatever check accepts, to_points turns into exactly that many points, with sane fields."""
    body = write_request(data)
    try:
        checked = promrw.check(body, promrw.V1)
    except BadBody:
        return
    pts = promrw.to_points(body, promrw.V1)
    assert len(pts) == checked.points == sum(len(s) for _, s in data)
    _decoding_agrees(body, promrw.V1, pts)
    for p in pts:
        assert p.metric and "__name__" not in p.labels and "" not in p.labels.values()
        assert 0 <= p.t <= MAX_TIME_MS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_refused_cleanly_or_decode(body: bytes) -> None:
    for proto in (promrw.V1, promrw.V2):
        try:
            checked = promrw.check(body, proto)
        except BadBody:
            continue
        assert len(promrw.to_points(body, proto)) >= checked.points
        _decoding_agrees(body, proto, promrw.to_points(body, proto))


@settings(max_examples=200, deadline=None)
@given(series, st.data())
def test_mutated_bodies_are_refused_cleanly_or_decode(
    data: list[tuple[dict[str, str], list[tuple[int, float]]]], draw: st.DataObject
) -> None:
    """Flip, cut or splice bytes of a valid body: a clean BadBody, or a body the worker can read."""
    body = bytearray(write_request(data))
    if body:
        i = draw.draw(st.integers(0, len(body) - 1))
        body[i] = draw.draw(st.integers(0, 255))
        body = body[: draw.draw(st.integers(0, len(body)))]
    try:
        checked = promrw.check(bytes(body), promrw.V1)
    except BadBody:
        return
    assert len(promrw.to_points(bytes(body), promrw.V1)) == checked.points
    _decoding_agrees(bytes(body), promrw.V1, promrw.to_points(bytes(body), promrw.V1))


def _decoding_agrees(body: bytes, proto: str, expected: list[Point], max_points: int = 3) -> None:
    """The relay's decoding kept by the check (the native reader's columns, or iter_decode)
    gives exactly the worker's points, in order, in chunks of at most max_points."""
    checked = promrw.check(body, proto, keep=True)
    assert checked == promrw.check(body, proto)  # the relay's check answers as ingest's
    decoding = checked.decoding
    assert isinstance(decoding, promrw.Decoding)
    chunks = list(decoding.iter_points(max_points))
    assert all(chunks)
    if decoding.fast is not None:  # (a histogram is never split: only the columns are exact)
        assert all(len(c) <= max_points for c in chunks)
    got = [p for c in chunks for p in c]
    assert encode_points(got) == encode_points(expected)  # bytes: NaN equals NaN, label order aside
    assert [list(p.labels) for p in got] == [list(p.labels) for p in expected]


def test_the_relay_decodes_prometheus_bodies_from_the_checks_columns() -> None:
    """The shape Prometheus sends (and more: zero values, several samples or none in a series, labels
    in any order, a repeated label name, an empty-valued label) takes the columnar path; native
    histograms take iter_decode's. Both give the worker's points, and the same answer as ingest's
    check (which keeps nothing)."""
    fast = [
        [({"__name__": "up", "job": "p", "i": str(i)}, [(T0 + i, float(i % 3))]) for i in range(50)],
        [({"__name__": "a"}, [(T0, 0.0), (T0 + 1, -0.0), (T0 + 2, math.nan)]), ({"__name__": "b"}, [])],
        [({"job": "x", "__name__": "late"}, [(T0, 1.5)]), ({"__name__": "c", "z": "1"}, [(T0, 2.0)])],
    ]
    for data in fast:
        body = write_request(data)
        decoding = promrw.check(body, promrw.V1, keep=True).decoding
        assert decoding.fast is not None
        _decoding_agrees(body, promrw.V1, promrw.to_points(body, promrw.V1))
        assert promrw.check(body, promrw.V1).decoding is None  # ingest keeps nothing
    # a repeated label name: the last value wins, in the first one's place (as the worker reads it)
    req = promrw.WriteRequest()
    ts = req.timeseries.add()
    for k, v in (("__name__", "dup"), ("a", "1"), ("b", "2"), ("a", "3")):
        lb = ts.labels.add()
        lb.name, lb.value = k, v
    s = ts.samples.add()
    s.timestamp, s.value = T0, 0.0
    body = req.SerializeToString()
    assert promrw.check(body, promrw.V1, keep=True).decoding.fast is not None
    _decoding_agrees(body, promrw.V1, promrw.to_points(body, promrw.V1))
    assert promrw.to_points(body, promrw.V1)[0].labels == {"a": "3", "b": "2"}
    # an empty label (no name, no value) and an explicitly empty name: refused, kept or not
    for extra in (b"", b"\x0a\x00", b"\x0a\x00\x12\x01v"):
        series = promrw.WriteRequest.FromString(body).timeseries[0].SerializeToString()
        series += b"\x0a" + bytes([len(extra)]) + extra  # one more label
        bad = b"\x0a" + bytes([len(series)]) + series
        for keep in (False, True):
            with pytest.raises(BadBody, match="label name"):
                promrw.check(bad, promrw.V1, keep)
    # an empty-valued label is left out of the points (as the worker does); a series without a name
    # is refused
    other = [
        [({"__name__": "e", "gone": ""}, [(T0, 1.0)]), ({"__name__": "f", "a": "1", "b": ""}, [(T0, 2.0)])],
        [({"__name__": "ok"}, [(T0, 1.0)]), ({"job": "noname"}, [(T0, 1.0)])],
    ]
    for data in other:
        body = write_request(data)
        try:
            decoding = promrw.check(body, promrw.V1, keep=True).decoding
        except BadBody:
            continue
        assert decoding.fast is not None
        _decoding_agrees(body, promrw.V1, promrw.to_points(body, promrw.V1))
