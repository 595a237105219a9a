"""Prometheus remote write 1.0 (``prometheus.WriteRequest``) and 2.0 (``io.prometheus.write.v2.Request``).

No maintained PyPI package carries the remote-write protobuf classes, so the message descriptors are
built here with the protobuf runtime's descriptor API from the schema in ``proto/*.proto`` (shipped
in the package; a test compiles those files with protoc and checks the descriptors match). The
message classes come from the runtime's message factory, so parsing runs in protobuf's C code (upb).

Mapping (see docs/protocols.md): a series' ``__name__`` label is the metric; its other labels,
without empty-valued ones (an empty label is no label in Prometheus), are the labels. Samples keep
their millisecond timestamps and values (NaN staleness markers and +-Inf included). A native
histogram sample becomes ``<name>_count``, ``<name>_sum`` and cumulative ``<name>_bucket{le=...}``
series. Exemplars are accepted and counted, not stored.

Metadata (type, help, unit of a metric family) is kept: 1.0 sends it in ``WriteRequest.metadata``
(keyed by ``metric_family_name``), 2.0 per series (``Metadata`` with ``help_ref`` / ``unit_ref``
into the symbols, keyed by the series' ``__name__``). :func:`decode` returns it as
:class:`Metadata` with Prometheus' lower-case type names; an entry that says nothing (type unknown,
no help, no unit), or whose name is empty, too long or holds a NUL, is left out.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator
from dataclasses import replace
from itertools import chain, repeat
from operator import attrgetter, contains, getitem, itemgetter, sub
from typing import Any, NamedTuple

import cramjam
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from lossproof.native_ext import _native
from lossproof.points import Point, SeriesBlock, SeriesSamples, is_stale_nan
from lossproof.protocol.thirdparty import (
    MAX_BUCKETS,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_NAME,
    MAX_TIME_MS,
    BadBody,
    Checked,
    UnsupportedBody,
    check_points,
    exp_buckets,
    fmt_float,
    time_error,
)

# -- the schema, as descriptors --------------------------------------------------------------------

_F = descriptor_pb2.FieldDescriptorProto
_SCALAR = {
    "double": _F.TYPE_DOUBLE,
    "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64,
    "uint32": _F.TYPE_UINT32,
    "sint32": _F.TYPE_SINT32,
    "sint64": _F.TYPE_SINT64,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}

# field: (name, number, type, "repeated" | "" | "oneof:<name>")
# type: a scalar name, a message of the same file, or "enum:<nested enum>"
_Fields = list[tuple[str, int, str, str]]

_HISTOGRAM: _Fields = [
    ("count_int", 1, "uint64", "oneof:count"),
    ("count_float", 2, "double", "oneof:count"),
    ("sum", 3, "double", ""),
    ("schema", 4, "sint32", ""),
    ("zero_threshold", 5, "double", ""),
    ("zero_count_int", 6, "uint64", "oneof:zero_count"),
    ("zero_count_float", 7, "double", "oneof:zero_count"),
    ("negative_spans", 8, "BucketSpan", "repeated"),
    ("negative_deltas", 9, "sint64", "repeated"),
    ("negative_counts", 10, "double", "repeated"),
    ("positive_spans", 11, "BucketSpan", "repeated"),
    ("positive_deltas", 12, "sint64", "repeated"),
    ("positive_counts", 13, "double", "repeated"),
    ("reset_hint", 14, "enum:ResetHint", ""),
    ("timestamp", 15, "int64", ""),
    ("custom_values", 16, "double", "repeated"),
]
_BUCKET_SPAN: _Fields = [("offset", 1, "sint32", ""), ("length", 2, "uint32", "")]
_SAMPLE: _Fields = [("value", 1, "double", ""), ("timestamp", 2, "int64", "")]

V1_SCHEMA: dict[str, tuple[_Fields, dict[str, list[str]]]] = {
    "WriteRequest": (
        [("timeseries", 1, "TimeSeries", "repeated"), ("metadata", 3, "MetricMetadata", "repeated")],
        {},
    ),
    "MetricMetadata": (
        [
            ("type", 1, "enum:MetricType", ""),
            ("metric_family_name", 2, "string", ""),
            ("help", 4, "string", ""),
            ("unit", 5, "string", ""),
        ],
        {
            "MetricType": [
                "UNKNOWN",
                "COUNTER",
                "GAUGE",
                "HISTOGRAM",
                "GAUGEHISTOGRAM",
                "SUMMARY",
                "INFO",
                "STATESET",
            ]
        },
    ),
    "Sample": (_SAMPLE, {}),
    "Exemplar": (
        [("labels", 1, "Label", "repeated"), ("value", 2, "double", ""), ("timestamp", 3, "int64", "")],
        {},
    ),
    "Histogram": (_HISTOGRAM, {"ResetHint": ["UNKNOWN", "YES", "NO", "GAUGE"]}),
    "BucketSpan": (_BUCKET_SPAN, {}),
    "TimeSeries": (
        [
            ("labels", 1, "Label", "repeated"),
            ("samples", 2, "Sample", "repeated"),
            ("exemplars", 3, "Exemplar", "repeated"),
            ("histograms", 4, "Histogram", "repeated"),
        ],
        {},
    ),
    "Label": ([("name", 1, "string", ""), ("value", 2, "string", "")], {}),
}

V2_SCHEMA: dict[str, tuple[_Fields, dict[str, list[str]]]] = {
    "Request": ([("symbols", 4, "string", "repeated"), ("timeseries", 5, "TimeSeries", "repeated")], {}),
    "TimeSeries": (
        [
            ("labels_refs", 1, "uint32", "repeated"),
            ("samples", 2, "Sample", "repeated"),
            ("histograms", 3, "Histogram", "repeated"),
            ("exemplars", 4, "Exemplar", "repeated"),
            ("metadata", 5, "Metadata", ""),
            ("created_timestamp", 6, "int64", ""),
        ],
        {},
    ),
    "Exemplar": (
        [
            ("labels_refs", 1, "uint32", "repeated"),
            ("value", 2, "double", ""),
            ("timestamp", 3, "int64", ""),
        ],
        {},
    ),
    "Sample": (_SAMPLE, {}),
    "Metadata": (
        [("type", 1, "enum:MetricType", ""), ("help_ref", 3, "uint32", ""), ("unit_ref", 4, "uint32", "")],
        {
            "MetricType": [
                f"METRIC_TYPE_{t}"
                for t in (
                    "UNSPECIFIED",
                    "COUNTER",
                    "GAUGE",
                    "HISTOGRAM",
                    "GAUGEHISTOGRAM",
                    "SUMMARY",
                    "INFO",
                    "STATESET",
                )
            ]
        },
    ),
    "Histogram": (
        _HISTOGRAM,
        {"ResetHint": [f"RESET_HINT_{h}" for h in ("UNSPECIFIED", "YES", "NO", "GAUGE")]},
    ),
    "BucketSpan": (_BUCKET_SPAN, {}),
}


def file_descriptor(
    name: str,
    package: str,
    schema: dict[str, tuple[_Fields, dict[str, list[str]]]],
    syntax: str = "proto3",
) -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax=syntax)
    for msg_name, (fields, enums) in schema.items():
        m = fd.message_type.add(name=msg_name)
        for enum_name, values in enums.items():
            e = m.enum_type.add(name=enum_name)
            for number, value in enumerate(values):
                e.value.add(name=value, number=number)
        oneofs: dict[str, int] = {}
        for fname, number, ftype, kind in fields:
            f = m.field.add(name=fname, number=number)
            f.label = _F.LABEL_REPEATED if kind == "repeated" else _F.LABEL_OPTIONAL
            if ftype == "map":  # map<string, string>
                entry = m.nested_type.add(name=f"{fname.title()}Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
                entry.field.add(name="value", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
                f.type = _F.TYPE_MESSAGE
                f.type_name = f".{package}.{msg_name}.{entry.name}"
            elif ftype in _SCALAR:
                f.type = _SCALAR[ftype]
            elif ftype.startswith("enum:"):
                f.type = _F.TYPE_ENUM
                f.type_name = f".{package}.{msg_name}.{ftype[5:]}"
            else:
                f.type = _F.TYPE_MESSAGE
                f.type_name = f".{package}.{ftype}"
            if kind.startswith("oneof:"):
                oneof = kind[6:]
                if oneof not in oneofs:
                    oneofs[oneof] = len(m.oneof_decl)
                    m.oneof_decl.add(name=oneof)
                f.oneof_index = oneofs[oneof]
    return fd


_pool = descriptor_pool.DescriptorPool()
_pool.Add(file_descriptor("prometheus_remote_write.proto", "prometheus", V1_SCHEMA))
_pool.Add(file_descriptor("prometheus_write_v2.proto", "io.prometheus.write.v2", V2_SCHEMA))


def _message(full_name: str) -> Any:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(full_name))


WriteRequest = _message("prometheus.WriteRequest")
RequestV2 = _message("io.prometheus.write.v2.Request")

# -- content negotiation ---------------------------------------------------------------------------

V1 = "prometheus.WriteRequest"
V2 = "io.prometheus.write.v2.Request"
VERSION_HEADER = {V1: "0.1.0", V2: "2.0.0"}


def proto_of(content_type: str) -> str:
    """Which message a ``Content-Type`` announces (the spec's negotiation); UnsupportedBody if none.

    ``application/x-protobuf`` alone (and an absent header, as old senders do) means 1.0."""
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media not in ("", "application/x-protobuf"):
        raise UnsupportedBody(
            f"unsupported Content-Type {content_type!r}: remote write sends application/x-protobuf"
        )
    proto = V1
    for p in params.split(";"):
        k, _, v = p.partition("=")
        if k.strip().lower() == "proto":
            proto = v.strip().strip('"')
    if proto not in (V1, V2):
        raise UnsupportedBody(f"unsupported remote-write message proto={proto!r}: use {V1} or {V2}")
    return proto


def check_encoding(encoding: str) -> None:
    if encoding.strip().lower() not in ("", "snappy"):
        raise UnsupportedBody(
            f"unsupported Content-Encoding {encoding!r}: remote write bodies are snappy (block format)"
        )


class TooLarge(Exception):
    pass


def snappy_decompress(data: bytes, limit: int) -> bytes:
    """Snappy block format, refused before any work if it announces more than ``limit`` bytes."""
    try:
        n = cramjam.snappy.decompress_raw_len(data)
    except Exception as e:  # cramjam raises its own error types
        raise BadBody(f"invalid snappy data: {e}") from None
    if n > limit:
        raise TooLarge(f"snappy body decompresses to {n} bytes, limit {limit}")
    try:
        return bytes(cramjam.snappy.decompress_raw(data))
    except Exception as e:
        raise BadBody(f"invalid snappy data: {e}") from None


def parse(body: bytes, proto: str) -> Any:
    cls = RequestV2 if proto == V2 else WriteRequest
    try:
        return cls.FromString(body)
    except message.DecodeError as e:
        raise BadBody(f"body is not a valid {proto} protobuf message: {e}") from None


# -- validation (ingest) ---------------------------------------------------------------------------
#
# Checking series one by one through the message objects costs ~8 us a series in Python. After the
# exact parse, the checks below read *views* of the same bytes, so the per-series and per-sample work
# stays in upb's C code and C builtins (map, min, max): the body is parsed again as messages whose
# nested fields are declared ``bytes``; joining those and parsing the result as one message merges
# every series' labels, or every sample, into one repeated field (protobuf's rule for concatenated
# messages), so one min()/max() sees every timestamp. The exact parse already proved each part valid.

_VIEWS: dict[str, tuple[_Fields, dict[str, list[str]]]] = {
    # the request with each series as bytes (1.0: field 1, 2.0: field 5)
    "SeriesBlobs": ([("v1", 1, "bytes", "repeated"), ("v2", 5, "bytes", "repeated")], {}),
    # every 1.0 series merged into one: its parts as bytes
    "Merged": (
        [
            ("labels", 1, "bytes", "repeated"),
            ("samples", 2, "bytes", "repeated"),
            ("exemplars", 3, "bytes", "repeated"),
            ("histograms", 4, "bytes", "repeated"),
        ],
        {},
    ),
    "MergedV2": (
        [
            ("samples", 2, "bytes", "repeated"),
            ("histograms", 3, "bytes", "repeated"),
            ("exemplars", 4, "bytes", "repeated"),
        ],
        {},
    ),
    # every label merged: all names, all values (empty strings are not on the wire)
    "LabelsFlat": ([("name", 1, "string", "repeated"), ("value", 2, "string", "repeated")], {}),
    # every sample merged: all timestamps (a zero timestamp is not on the wire: it is in range anyway)
    "SamplesFlat": ([("value", 1, "double", "repeated"), ("timestamp", 2, "int64", "repeated")], {}),
    # a 1.0 request whose series' labels are a map: duplicate names collapse, the last one winning
    # (as in to_points)
    "Maps": ([("timeseries", 1, "SeriesMap", "repeated")], {}),
    "SeriesMap": ([("labels", 1, "map", "repeated")], {}),
    # what the worker reads besides the series, so that it never holds the whole parsed request:
    # 1.0's metadata (field 3, the same message as MetricMetadata) and 2.0's symbols (field 4)
    "MetadataOnly": ([("metadata", 3, "MetadataEntry", "repeated")], {}),
    "MetadataEntry": V1_SCHEMA["MetricMetadata"],
    "SymbolsOnly": ([("symbols", 4, "string", "repeated")], {}),
}
_pool.Add(file_descriptor("lossproof_promrw_views.proto", "lossproof.promrw", _VIEWS))
# A Sample field sent with the wrong wire type is, to protobuf, an unknown field: the sample would
# be stored at time 0 or with value 0. These proto2 views (singular fields have presence, and do not
# take the packed form) each read one wrong wire type of Sample's two fields.
_WRONG_WIRE: dict[str, tuple[_Fields, dict[str, list[str]]]] = {
    "SampleVarint": ([("value", 1, "uint64", ""), ("timestamp", 2, "fixed64", "")], {}),
    "SampleBytes": ([("value", 1, "bytes", ""), ("timestamp", 2, "bytes", "")], {}),
    "SampleFixed32": ([("value", 1, "fixed32", ""), ("timestamp", 2, "fixed32", "")], {}),
}
_SCALAR["fixed64"] = _F.TYPE_FIXED64
_SCALAR["fixed32"] = _F.TYPE_FIXED32
_pool.Add(file_descriptor("lossproof_promrw_wire.proto", "lossproof.promrw.wire", _WRONG_WIRE, "proto2"))


_SeriesBlobs, _Merged, _MergedV2, _LabelsFlat, _SamplesFlat, _Maps = (
    _message(f"lossproof.promrw.{v}")
    for v in ("SeriesBlobs", "Merged", "MergedV2", "LabelsFlat", "SamplesFlat", "Maps")
)
_WRONG_WIRE_VIEWS = [_message(f"lossproof.promrw.wire.{v}") for v in _WRONG_WIRE]
_labels_of = attrgetter("labels")
# native/src/rwcheck.rs. A module attribute, not a direct call: the tests set it to None to compare
# against the exact parse it stands in for.
_rw1_check: Callable[[bytes, int, int, int], int | None] | None = _native.rw1_check
_NAME = "__name__"


class Decoding:
    """What :func:`check` read of a body, kept for a receiver that turns it into points at once (the
    agent's relay): :meth:`iter_points` reuses what the check read instead of parsing the body again.

    A 1.0 body without native histograms (what Prometheus sends) is read once in Rust
    (``lossproof._native.rw1_series``, the worker's reader, see :func:`_iter_v1`) into columns: one
    label dict per series, on which the check runs its label checks, and the samples' times and
    values; no protobuf object per series or sample. Any other body goes through
    :func:`iter_decode`."""

    def __init__(self, body: bytes, proto: str) -> None:
        self.body, self.proto = body, proto
        self.fast: _Columns | None = None

    def iter_points(self, max_points: int) -> Iterator[list[Point]]:
        """The points of the checked body, at most ``max_points`` a chunk (a histogram is never
        split), in the body's order: the same points as :func:`iter_decode`'s chunks."""
        if self.fast is None:
            for c in iter_decode(self.body, self.proto, max_points):
                points = [p for s in c.series for p in s.points()]
                if points:
                    yield points
            return
        yield from self.fast.iter_points(max_points)


_label_dict_of, _first_of, _last_of = itemgetter(0), itemgetter(1), itemgetter(2)


class _Columns:
    """A 1.0 body as the native reader gives it: one dict of labels per series (with ``__name__``
    and any empty-valued label; a repeated name: the last value wins, in the first one's place),
    every sample's time and value (8 bytes each), and each series' range of samples."""

    def __init__(self, t_col: bytes, v_col: bytes, series: list[Any]) -> None:
        self.labels: list[dict[str, str]] = list(map(_label_dict_of, series))
        self.t_col, self.v_col = t_col, v_col
        self.samples = list(map(sub, map(_last_of, series), map(_first_of, series)))

    @classmethod
    def of(cls, body: bytes) -> _Columns | None:
        """None if the native reader does not read the whole body (the exact parse did: not
        expected, but then the message classes decide)."""
        try:
            t_col, v_col, series, error = _native.rw1_series(body)
        except ValueError:
            return None
        return None if error is not None else cls(t_col, v_col, series)

    def iter_points(self, max_points: int) -> Iterator[list[Point]]:
        labels = self.labels
        metrics = list(map(dict.pop, labels, repeat(_NAME)))
        if any(map(contains, map(dict.values, labels), repeat(""))):  # an empty value: no label
            labels = [{k: v for k, v in d.items() if v} if "" in d.values() else d for d in labels]
        if any(map((1).__ne__, self.samples)):  # not one sample a series: repeat each series' columns
            metrics = list(chain.from_iterable(map(repeat, metrics, self.samples)))
            labels = list(chain.from_iterable(map(repeat, labels, self.samples)))
        times, values = array("q"), array("d")
        times.frombytes(self.t_col)
        values.frombytes(self.v_col)
        t, v = times.tolist(), values.tolist()
        for i in range(0, len(t), max_points):
            j = i + max_points
            yield list(map(Point, metrics[i:j], labels[i:j], t[i:j], v[i:j]))


def check(body: bytes, proto: str, keep: bool = False) -> Checked:
    """Decode the (decompressed) body and check its bounds. Raises BadBody. With ``keep``, the
    answer carries the :class:`Decoding` of the body (``Checked.decoding``)."""
    if proto == V1 and not keep and _rw1_check is not None:
        # One pass in Rust that answers only for a plain body (what Prometheus sends) certainly
        # valid and within every bound below; None otherwise, and the exact parse and checks below
        # then refuse it or pass it (native/src/rwcheck.rs). Ingest's common case.
        samples = _rw1_check(body, MAX_LABELS, MAX_NAME, MAX_TIME_MS)
        if samples is not None:
            return Checked(points=samples, histograms=0, exemplars=0, metadata=0)
    req = parse(body, proto)  # exact: every part of the message is valid
    if body and not req.ListFields():
        # Only fields unknown to the announced message, which protobuf skips: most likely the other
        # version's message under a wrong Content-Type. Answering 2xx would drop it silently.
        other = V1 if proto == V2 else V2
        raise BadBody(
            f"body has none of the fields of {proto} (the Content-Type says proto={proto}); it looks "
            f"like a {other} message: send it with Content-Type application/x-protobuf;proto={other}"
        )
    if proto == V2:
        checked = _check_v2(body, req)
        return replace(checked, decoding=Decoding(body, proto)) if keep else checked
    blobs = _SeriesBlobs.FromString(body).v1
    merged = _Merged.FromString(b"".join(blobs))
    # each series' labels: as the relay will store them (the native reader's dicts), or else as
    # maps (a view, when nothing is kept); both are maps (the last of a repeated name wins) and
    # the same checks run on either
    fast = _Columns.of(body) if keep else None
    maps: list[Any] = fast.labels if fast is not None else _label_maps(body)
    if maps:
        if (
            not all(map(contains, maps, repeat(_NAME)))
            or max(map(len, maps)) > MAX_LABELS + 1
            or any(map(contains, maps, repeat("")))
        ):
            _explain_v1(req)
        metrics = list(map(getitem, maps, repeat(_NAME)))
        if not all(metrics) or max(map(len, metrics)) > MAX_NAME:
            _explain_v1(req)
    # A label whose encoding is at most MAX_NAME bytes is within both bounds; longer ones are rare
    # enough to check name by name.
    if merged.labels and max(map(len, merged.labels)) > MAX_NAME:
        flat = _LabelsFlat.FromString(b"".join(merged.labels))
        if max(map(len, flat.name)) > MAX_NAME or max(map(len, flat.value), default=0) > MAX_LABEL_VALUE:
            _explain_v1(req)
    samples = _check_samples(merged.samples, req.timeseries)[0]
    histograms = _check_histograms(merged.histograms, body, proto, req.timeseries)
    decoding = None
    if keep:
        decoding = Decoding(body, proto)
        if fast is not None and not histograms:
            decoding.fast = fast
    return Checked(
        points=samples,
        histograms=histograms,
        exemplars=len(merged.exemplars),
        metadata=len(req.metadata),
        decoding=decoding,
    )


def _label_maps(body: bytes) -> list[Any]:
    return list(map(_labels_of, _Maps.FromString(body).timeseries))


def _check_samples(blobs: Any, series: Any) -> tuple[int, Any]:
    """The samples' count, and their timestamps and values as the SamplesFlat view (None if none)."""
    flat = None
    if blobs:
        joined = b"".join(blobs)
        for view in _WRONG_WIRE_VIEWS:
            wrong = view.FromString(joined)
            for f in ("value", "timestamp"):
                if wrong.HasField(f):
                    raise BadBody(f"a sample's {f} field has the wrong protobuf wire type")
        flat = _SamplesFlat.FromString(joined)
        times = flat.timestamp
        # a zero timestamp is not on the wire: fewer timestamps than samples means one is missing
        if len(times) != len(blobs) or min(times) < 0 or max(times) > MAX_TIME_MS:
            for i, ts in enumerate(series):
                for s in ts.samples:
                    if s.timestamp == 0:
                        raise BadBody(f"timeseries[{i}]: a sample without a timestamp (or timestamp 0)")
                    _check_times(s.timestamp, s.timestamp, f"timeseries[{i}]")
            raise BadBody("a sample carries a malformed timestamp field")
    return len(blobs), flat


def _check_histograms(blobs: Any, body: bytes, proto: str, series: Any) -> int:
    if blobs:  # native histograms are rare: checked one by one, then decoded as the worker will
        for i, ts in enumerate(series):
            for j, h in enumerate(ts.histograms):
                _check_histogram(h, f"timeseries[{i}].histograms[{j}]")
        # their series are derived (<name>_bucket, an le label): bounded as they will be stored
        check_points(decode(body, proto)[0], "a native histogram")
    return len(blobs)


def _explain_v1(req: Any) -> None:
    """The slow path for a body that may break a bound (the fast checks over-approximate: they
    count empty-valued labels): find the series and say what is wrong, or return if nothing is."""
    for i, ts in enumerate(req.timeseries):
        where = f"timeseries[{i}]"
        for lb in ts.labels:  # every label, also a duplicate name's earlier ones
            _check_label(lb.name, lb.value, where)
        labels = {lb.name: lb.value for lb in ts.labels}
        _check_labels(list(labels), list(labels.values()), where)


def _check_v2(body: bytes, req: Any) -> Checked:
    # 2.0 is rarer (Prometheus sends it only when configured to): labels are checked series by series.
    symbols = list(req.symbols)
    nsym = len(symbols)
    exemplars = metadata = 0
    for i, ts in enumerate(req.timeseries):
        where = f"timeseries[{i}]"
        refs = list(ts.labels_refs)
        if len(refs) % 2 or (refs and max(refs) >= nsym):
            raise BadBody(f"{where}: labels_refs must be pairs of indexes into the {nsym} symbols")
        if ts.HasField("metadata"):
            md = ts.metadata
            if max(md.help_ref, md.unit_ref) >= max(nsym, 1):  # 0 (absent) is fine without symbols
                raise BadBody(f"{where}: metadata help_ref/unit_ref point outside the {nsym} symbols")
            metadata += 1
        labels = {symbols[k]: symbols[v] for k, v in zip(refs[0::2], refs[1::2], strict=True)}
        _check_labels(list(labels), list(labels.values()), where)
        for e in ts.exemplars:
            if len(e.labels_refs) % 2 or (e.labels_refs and max(e.labels_refs) >= nsym):
                raise BadBody(f"{where}: exemplar labels_refs point outside the {nsym} symbols")
            exemplars += 1
    merged = _MergedV2.FromString(b"".join(_SeriesBlobs.FromString(body).v2))
    samples = _check_samples(merged.samples, req.timeseries)[0]
    histograms = _check_histograms(merged.histograms, body, V2, req.timeseries)
    return Checked(points=samples, histograms=histograms, exemplars=exemplars, metadata=metadata)


def _check_labels(names: list[str], values: list[str], where: str) -> None:
    # an empty-valued label is no label (it is not stored)
    count = sum(1 for k, v in zip(names, values, strict=True) if v and k != _NAME)
    if count > MAX_LABELS:
        raise BadBody(f"{where}: {count} labels besides __name__ (with a value), at most {MAX_LABELS}")
    if _NAME not in names:
        raise BadBody(f"{where}: no __name__ label (every series needs a metric name)")
    for n, v in zip(names, values, strict=True):
        _check_label(n, v, where)


def _check_label(n: str, v: str, where: str) -> None:
    if not n or len(n) > MAX_NAME:
        raise BadBody(f"{where}: label name {n[:64]!r} must be 1..{MAX_NAME} characters")
    if len(v) > MAX_LABEL_VALUE or (n == _NAME and not 0 < len(v) <= MAX_NAME):
        raise BadBody(f"{where}: label {n!r} has a value of {len(v)} characters (empty or too long)")


def _check_times(lo: int, hi: int, where: str) -> None:
    if lo < 0:
        raise time_error(where, lo)
    if hi > MAX_TIME_MS:
        raise time_error(where, hi)


def _check_histogram(h: Any, where: str) -> None:
    histogram_buckets(h, where)  # the worker's own decoding: what passes here, it stores
    if h.timestamp == 0:  # as for a sample: 0 is what an absent timestamp reads as
        raise BadBody(f"{where}: a native histogram without a timestamp (or timestamp 0)")
    _check_times(h.timestamp, h.timestamp, where)


# -- native histograms: one decoding for the ingest check and the worker ---------------------------
#
# The rules are Prometheus' (model/histogram: Histogram.Validate, FloatHistogram.Validate,
# checkHistogramSpans, checkHistogramCustomBounds), which its remote-write receiver applies before
# answering: a histogram Prometheus would refuse with a 400 is refused here, and any other one is
# decoded by the very function the worker calls, so the check and the worker cannot disagree.

CUSTOM_BUCKETS = -53


def histogram_buckets(h: Any, where: str) -> list[tuple[str, float]]:
    """The cumulative ``(le, count)`` pairs of a native histogram, lowest bound first, ``+Inf`` (the
    count) last. Raises BadBody, naming ``where``, for a histogram Prometheus refuses."""
    schema = h.schema
    is_float = h.WhichOneof("count") == "count_float"
    count = float(h.count_float) if is_float else float(h.count_int)
    if is_float:
        zero = float(h.zero_count_float)
        pos_n, neg_n = len(h.positive_counts), len(h.negative_counts)
    else:
        zero = float(h.zero_count_int)
        # an integer histogram's buckets are deltas (counts belong to float histograms)
        pos_n, neg_n = len(h.positive_deltas), len(h.negative_deltas)
    if schema == CUSTOM_BUCKETS:
        bounds = list(h.custom_values)
        _check_custom(h, bounds, pos_n, zero, where)
        positive = _absolute(h.positive_spans, h.positive_deltas, h.positive_counts, is_float, 0, where)
        acc = 0.0
        pairs: list[tuple[str, float]] = []
        for i, c in positive:
            acc += c
            # index len(bounds) is the implicit +Inf bucket: it only adds to the count
            if i < len(bounds):
                pairs.append((fmt_float(bounds[i]), acc))
        _check_count(count, acc, h.sum, is_float, where)
    elif -4 <= schema <= 8:
        if h.custom_values:
            raise BadBody(f"{where}: exponential schema {schema} with custom bounds (only -53 has them)")
        for sign, n in (("positive", pos_n), ("negative", neg_n)):
            _check_spans(getattr(h, f"{sign}_spans"), n, sign, where, first_may_be_negative=True)
        # Prometheus bucket i is (base**(i-1), base**i]: OTLP's numbering shifted by one.
        positive = _absolute(h.positive_spans, h.positive_deltas, h.positive_counts, is_float, -1, where)
        negative = _absolute(h.negative_spans, h.negative_deltas, h.negative_counts, is_float, -1, where)
        if zero < 0:
            raise BadBody(f"{where}: the zero bucket's count {zero:g} is negative")
        # plain sum: counts are not negative (no cancellation), and fsum raises past 1e308
        total = zero + sum(c for _, c in positive) + sum(c for _, c in negative)
        _check_count(count, total, h.sum, is_float, where)
        pairs = exp_buckets(schema, h.zero_threshold, zero, positive, negative)
    else:
        raise BadBody(f"{where}: native histogram schema {schema} (valid: -4..8, -53 for custom buckets)")
    pairs.append(("+Inf", count))
    return pairs


def _check_custom(h: Any, bounds: list[float], n: int, zero: float, where: str) -> None:
    if len(bounds) > MAX_BUCKETS:
        raise BadBody(f"{where}: {len(bounds)} custom bounds, at most {MAX_BUCKETS}")
    for i, b in enumerate(bounds):
        if math.isnan(b):
            raise BadBody(f"{where}: custom bound {i} is NaN")
        if i and b <= bounds[i - 1]:
            raise BadBody(f"{where}: custom bounds must increase strictly ({bounds[i - 1]!r}, then {b!r})")
    if bounds and bounds[-1] == math.inf:
        raise BadBody(f"{where}: the last custom bound must not be +Inf (it is implicit)")
    if zero != 0 or h.zero_threshold != 0:
        raise BadBody(f"{where}: a custom-bucket histogram must have no zero bucket (count and threshold 0)")
    if h.negative_spans or h.negative_deltas or h.negative_counts:
        raise BadBody(f"{where}: a custom-bucket histogram must not have negative buckets")
    _check_spans(h.positive_spans, n, "positive", where, first_may_be_negative=False)
    reach = sum(s.offset + s.length for s in h.positive_spans)
    if reach > len(bounds) + 1:
        raise BadBody(
            f"{where}: spans reach bucket {reach - 1}, but {len(bounds)} custom bounds define "
            f"{len(bounds) + 1} buckets"
        )


def _check_spans(spans: Any, n: int, sign: str, where: str, first_may_be_negative: bool) -> None:
    length = 0
    for k, s in enumerate(spans):
        if s.offset < 0 and (k > 0 or not first_may_be_negative):
            raise BadBody(f"{where}: {sign} span {k} has a negative offset {s.offset}")
        length += s.length
    if length > MAX_BUCKETS:
        raise BadBody(f"{where}: {length} {sign} buckets, at most {MAX_BUCKETS}")
    if length != n:
        raise BadBody(f"{where}: {sign} spans cover {length} buckets but {n} counts are given")


def _check_count(count: float, buckets: float, sum_: float, is_float: bool, where: str) -> None:
    # NaN observations add to the count but to no bucket: with a NaN sum the count may be larger.
    # Float counts are compared with a little slack for rounding.
    if is_float:
        ok = not buckets > count * (1 + 1e-9) + 1e-9
    else:
        ok = count >= buckets if math.isnan(sum_) else count == buckets
    if not ok:
        raise BadBody(
            f"{where}: the histogram's count {count:g} does not match its buckets' {buckets:g} observations"
        )


# -- conversion (worker) ---------------------------------------------------------------------------


class Metadata(NamedTuple):
    """A metric family's metadata, as Prometheus' ``/api/v1/metadata`` shows it."""

    metric: str
    type: str  # counter, gauge, histogram, gaugehistogram, summary, info, stateset, unknown
    help: str
    unit: str


# enum number -> Prometheus' name (the same numbering in 1.0 and 2.0; 2.0's 0 is UNSPECIFIED)
_TYPES = ("unknown", "counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset")


def _metadata(name: str, type_: int, help_: str, unit: str) -> Metadata | None:
    kind = _TYPES[type_] if 0 <= type_ < len(_TYPES) else "unknown"
    if not name or len(name) > MAX_NAME or (kind == "unknown" and not help_ and not unit):
        return None
    if "\0" in name or "\0" in help_ or "\0" in unit:  # no store keeps a NUL in text
        return None
    return Metadata(name, kind, help_, unit)


def to_points(body: bytes, proto: str) -> list[Point]:
    """The stored points of a (decompressed) body that :func:`check` accepted."""
    return decode(body, proto)[0]


def to_metadata(body: bytes, proto: str) -> list[Metadata]:
    """The metric metadata of a (decompressed) body that :func:`check` accepted."""
    return decode(body, proto)[1]


def decode(body: bytes, proto: str) -> tuple[list[Point], list[Metadata]]:
    """The stored points and the metric metadata (one per metric, the last one given winning) of a
    (decompressed) body that :func:`check` accepted: :func:`iter_decode`'s chunks joined."""
    points: list[Point] = []
    metadata: list[Metadata] = []
    for chunk in iter_decode(body, proto):
        for s in chunk.series:
            points.extend(s.points())
        metadata.extend(chunk.metadata)
    return points, metadata


class Chunk(NamedTuple):
    """A part of a decoded body: at most ``max_points`` points (a histogram is never split, so a
    chunk may exceed it by one histogram's buckets), and the metadata in the last chunk only. The
    samples come as columns, in the body's order: per series, or (1.0) as ranges of the body's
    columns (:class:`SeriesBlock`); a histogram as the series it becomes, one sample each."""

    series: list[SeriesSamples | SeriesBlock]
    metadata: list[Metadata]
    size: int  # encoded bytes of the series these points came from


# The worker's memory follows the points it holds (a Point with its int and float is ~100 bytes in
# Python for a 12-byte sample on the wire), not the body: a body is decoded a chunk at a time.
CHUNK_POINTS = 65_536
_V1_SERIES = _message("prometheus.TimeSeries")
_V2_SERIES = _message("io.prometheus.write.v2.TimeSeries")
_MetadataOnly = _message("lossproof.promrw.MetadataOnly")
_SymbolsOnly = _message("lossproof.promrw.SymbolsOnly")


def iter_decode(
    body: bytes, proto: str, max_points: int = CHUNK_POINTS, max_bytes: int = 1 << 62
) -> Iterator[Chunk]:
    """:func:`decode` a few series at a time. Parsing the whole request at once holds every series
    as a protobuf message and then every point (~25 bytes of memory per body byte); here only the
    series' encoded bytes (a view, about the body's size) and one chunk of points are held. A chunk
    also ends once its series add up to ``max_bytes`` (their labels are held too). Always yields at
    least one chunk (the last one carries the metadata).

    The caller should not keep a reference to ``body``: it is released once the views are read."""
    if proto != V2:
        yield from _iter_v1(body, max_points, max_bytes)
        return
    meta: dict[str, Metadata] = {}
    symbols = list(_SymbolsOnly.FromString(body).symbols)
    blobs = _SeriesBlobs.FromString(body).v2
    del body
    out: list[SeriesSamples | SeriesBlock] = []
    n_out = 0  # samples in out
    size = 0
    for blob in blobs:
        ts = _V2_SERIES.FromString(blob)
        size += len(blob)
        refs = list(ts.labels_refs)
        labels = {symbols[k]: symbols[v] for k, v in zip(refs[0::2], refs[1::2], strict=True)}
        if ts.HasField("metadata"):
            md = ts.metadata
            help_ = symbols[md.help_ref] if md.help_ref else ""
            unit = symbols[md.unit_ref] if md.unit_ref else ""
            m = _metadata(labels.get(_NAME, ""), md.type, help_, unit)
            if m is not None:
                meta[m.metric] = m
        name = labels.pop(_NAME)
        if "" in labels.values():
            labels = {k: v for k, v in labels.items() if v}
        samples = ts.samples
        i, n = 0, len(samples)
        while i < n:  # a series with more samples than a chunk holds is split
            j = min(n, i + max_points - n_out)
            part = samples[i:j]
            out.append(SeriesSamples(name, labels, [x.timestamp for x in part], [x.value for x in part]))
            n_out += j - i
            i = j
            if n_out >= max_points:
                yield Chunk(out, [], size)
                out, n_out, size = [], 0, 0
        for h in ts.histograms:
            hp = _histogram_points(name, labels, h)
            out.extend(SeriesSamples(p.metric, p.labels, [p.t], [p.v]) for p in hp)
            n_out += len(hp)
            if n_out >= max_points:
                yield Chunk(out, [], size)
                out, n_out, size = [], 0, 0
        if size >= max_bytes and out:
            yield Chunk(out, [], size)
            out, n_out, size = [], 0, 0
    yield Chunk(out, list(meta.values()), size)


def _iter_v1(body: bytes, max_points: int, max_bytes: int) -> Iterator[Chunk]:
    """:func:`iter_decode` of a 1.0 body. Its series are read in Rust (``lossproof._native.rw1_block``,
    native/src/rwcols.rs) into one block: the samples' times and values as two columns and each
    series' store key as text, no Python object per series or per sample. A chunk's series are
    ranges of the block's samples (:class:`SeriesBlock`), which the store turns into its columns
    with one series-id look-up per series; the chunks' bounds come from the block too
    (``RwBlock.plan``). Building a labels dict and two arrays per series here, and a key tuple per
    series in the store, was most of the worker's remote-write decoding (docs/store.md, "Native
    code"). A series with exemplars or histograms is also parsed by its message class, which checks
    those and reads the histograms, here, in the body's order; so is one without ``__name__`` (a
    KeyError, as before). The block (16 bytes a sample and the keys' text) is held until the
    chunks' last reference to it is gone."""
    meta: dict[str, Metadata] = {}
    for md in _MetadataOnly.FromString(body).metadata:
        m = _metadata(md.metric_family_name, md.type, md.help, md.unit)
        if m is not None:
            meta[m.metric] = m
    try:
        block, error = _native.rw1_block(body)
    except ValueError as e:  # as the message classes say it
        raise message.DecodeError(f"Error parsing message: {e}") from None
    view = memoryview(body) if block.has_more() else None
    del body
    out: list[SeriesSamples | SeriesBlock] = []
    n_out = 0  # samples in out
    size = 0
    k, n = 0, len(block)
    while True:
        events, k, n_out, size = block.plan(k, max_points, max_bytes, n_out, size, bool(out))
        for a, b in events:
            if a < 0:  # the chunk ends: b is its size
                yield Chunk(out, [], b)
                out = []
            else:
                out.append(SeriesBlock(block, a, b))
        if k == n:
            break
        # a series the plan leaves to Python: exemplars or histograms, or no __name__
        first, last, start, end, more, named = block.series_info(k)
        # exemplars or histograms: the message class checks them (and reads the histograms)
        histograms = _V1_SERIES.FromString(view[start:end]).histograms if view is not None and more else ()
        size += end - start
        if not named:
            raise KeyError(_NAME)
        name, labels = block.labels(k)
        i = first
        while i < last:  # a series with more samples than a chunk holds is split
            j = min(last, i + max_points - n_out)
            out.append(SeriesBlock(block, i, j))
            n_out += j - i
            i = j
            if n_out >= max_points:
                yield Chunk(out, [], size)
                out, n_out, size = [], 0, 0
        for h in histograms:
            hp = _histogram_points(name, labels, h)
            out.extend(SeriesSamples(p.metric, p.labels, [p.t], [p.v]) for p in hp)
            n_out += len(hp)
            if n_out >= max_points:
                yield Chunk(out, [], size)
                out, n_out, size = [], 0, 0
        if size >= max_bytes and out:
            yield Chunk(out, [], size)
            out, n_out, size = [], 0, 0
        k += 1
    if error is not None:  # where the message classes failed: after the series before it
        raise message.DecodeError(f"Error parsing message: {error}")
    yield Chunk(out, list(meta.values()), size)


def _absolute(
    spans: Any, deltas: Any, counts: Any, is_float: bool, shift: int, where: str
) -> list[tuple[int, float]]:
    """(bucket index, count) from spans (already checked against the bucket count) plus deltas
    (integer histogram) or counts (float histogram); a negative count is refused."""
    idx: list[int] = []
    i = 0
    for s in spans:
        i += s.offset  # the first span's offset is its start, later ones the gap since the last
        idx.extend(range(i + shift, i + shift + s.length))
        i += s.length
    if is_float:
        vals = list(counts)
    else:
        vals = []
        c = 0
        for d in deltas:
            c += d
            vals.append(float(c))
    if vals and min(vals) < 0:
        k = next(k for k, v in enumerate(vals) if v < 0)
        raise BadBody(f"{where}: bucket {k} has a negative count {vals[k]:g}")
    return list(zip(idx, vals, strict=True))


def _histogram_points(name: str, labels: dict[str, str], h: Any) -> list[Point]:
    t = h.timestamp
    if is_stale_nan(h.sum):
        # Prometheus' staleness marker for a native histogram (its sum the marker, no count, no
        # bucket): the marker for the series it becomes, not a histogram of zeros. Its earlier
        # finite buckets are not known here: they end with the lookback (docs/protocols.md).
        return [
            Point(f"{name}_count", labels, t, h.sum),
            Point(f"{name}_sum", labels, t, h.sum),
            Point(f"{name}_bucket", {**labels, "le": "+Inf"}, t, h.sum),
        ]
    pairs = histogram_buckets(h, name)
    out = [Point(f"{name}_count", labels, t, pairs[-1][1]), Point(f"{name}_sum", labels, t, h.sum)]
    bucket = f"{name}_bucket"
    out.extend(Point(bucket, {**labels, "le": le}, t, v) for le, v in pairs)
    return out


def samples_written(checked: Checked) -> dict[str, str]:
    """The 2.0 response headers: what was written (exemplars are accepted but not stored)."""
    return {
        "X-Prometheus-Remote-Write-Samples-Written": str(checked.points),
        "X-Prometheus-Remote-Write-Histograms-Written": str(checked.histograms),
        "X-Prometheus-Remote-Write-Exemplars-Written": "0",
    }


__all__ = [
    "V1",
    "V2",
    "VERSION_HEADER",
    "Metadata",
    "RequestV2",
    "TooLarge",
    "WriteRequest",
    "check",
    "check_encoding",
    "decode",
    "iter_decode",
    "parse",
    "proto_of",
    "samples_written",
    "snappy_decompress",
    "to_metadata",
    "to_points",
]
