"""Native-protocol reports read in Rust (``lossproof._native.native_report``, native/src/reports.rs),
against the Python path they replace: msgspec's decoder (``lossproof.protocol.decode._Report``), the
canonical encoding and digest of ``lossproof.points``, and ``point_columns`` for the store's
columns. Whatever the Rust reader takes must come out exactly as the Python path makes it; whatever
it is not sure of must be None (the Python path then decodes, stores or refuses it as before)."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof import _native
from lossproof.log.base import LogRecord
from lossproof.points import PointsBlock, encode_points, report_digest
from lossproof.protocol import decode, native
from lossproof.protocol.decode import _report_decoders, record_parts
from lossproof.store.columns import Columns

_py_report = _report_decoders[native.MSGPACK]


# --- a msgpack writer that picks any width the format allows (msgspec always picks the smallest) ---


def _ints(x: int) -> list[bytes]:
    out = []
    if 0 <= x < 128:
        out.append(bytes([x]))
    if -32 <= x < 0:
        out.append(struct.pack(">b", x))
    for code, fmt, lo, hi in (
        (0xCC, ">B", 0, 2**8),
        (0xCD, ">H", 0, 2**16),
        (0xCE, ">I", 0, 2**32),
        (0xCF, ">Q", 0, 2**64),
        (0xD0, ">b", -(2**7), 2**7),
        (0xD1, ">h", -(2**15), 2**15),
        (0xD2, ">i", -(2**31), 2**31),
        (0xD3, ">q", -(2**63), 2**63),
    ):
        if lo <= x < hi:
            out.append(bytes([code]) + struct.pack(fmt, x))
    return out


def _len(n: int, fix: int, w16: int, w32: int, rnd: random.Random) -> bytes:
    options = [bytes([w16]) + struct.pack(">H", n), bytes([w32]) + struct.pack(">I", n)] if n < 2**16 else []
    if n < 16:
        options.append(bytes([fix | n]))
    if n >= 2**16:
        options.append(bytes([w32]) + struct.pack(">I", n))
    return rnd.choice(options)


def pack(obj: Any, rnd: random.Random) -> bytes:
    if isinstance(obj, bool) or obj is None:
        return {None: b"\xc0", False: b"\xc2", True: b"\xc3"}[obj]
    if isinstance(obj, int):
        return rnd.choice(_ints(obj))
    if isinstance(obj, float):
        options = [b"\xcb" + struct.pack(">d", obj)]
        if not math.isnan(obj) and (math.isinf(obj) or abs(obj) < 3e38):
            f32 = struct.pack(">f", obj)
            if struct.unpack(">f", f32)[0] == obj:
                options.append(b"\xca" + f32)
        return rnd.choice(options)
    if isinstance(obj, str):
        b = obj.encode()
        n = len(b)
        options = [b"\xda" + struct.pack(">H", n), b"\xdb" + struct.pack(">I", n)] if n < 2**16 else []
        if n < 32:
            options.append(bytes([0xA0 | n]))
        if n < 256:
            options.append(b"\xd9" + bytes([n]))
        if n >= 2**16:
            options.append(b"\xdb" + struct.pack(">I", n))
        return rnd.choice(options) + b
    if isinstance(obj, bytes):  # bin8/16/32, or ext8 of type 1 (a request field the worker skips)
        n = len(obj)
        options = [b"\xc4" + bytes([n]), b"\xc5" + struct.pack(">H", n), b"\xc6" + struct.pack(">I", n)]
        return rnd.choice([*options, b"\xc7" + bytes([n, 1])]) + obj
    if isinstance(obj, list):
        return _len(len(obj), 0x90, 0xDC, 0xDD, rnd) + b"".join(pack(x, rnd) for x in obj)
    if isinstance(obj, dict):
        items = list(obj.items())
        return _len(len(items), 0x80, 0xDE, 0xDF, rnd) + b"".join(
            pack(k, rnd) + pack(v, rnd) for k, v in items
        )
    raise TypeError(type(obj))


# --- what is compared ---------------------------------------------------------------------------


def _same_float(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


def assert_same(raw: bytes, content_type: str = native.MSGPACK) -> None:
    """``raw`` read by Rust is what msgspec reads, digest and canonical bytes included."""
    read = _native.native_report if content_type == native.MSGPACK else _native.native_report_json
    got = read(raw)
    assert got is not None
    seq, time_ms, block = got
    r = _report_decoders[content_type].decode(raw)
    assert (seq, time_ms, len(block)) == (r.seq, r.time, len(r.points))
    assert block.digest() == report_digest(r.points)
    assert block.encode() == encode_points(r.points)
    pts = PointsBlock(block)
    assert report_digest(pts) == report_digest(r.points)
    for (metric, labels, t, v), p in zip(block.expand(), r.points, strict=True):
        assert (metric, list(labels.items()), t) == (p.metric, list(p.labels.items()), p.t)
        assert type(v) is float and _same_float(v, p.v)


names = st.text(max_size=40)
label_sets = st.dictionaries(names, st.text(max_size=70), max_size=20)
times = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from(
        [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, -32, -33, -128, -129, -(2**31) - 1]
    ),
    st.integers(100_000_000_000, 4_102_444_800_000),
)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308]),
    st.integers(-(2**53), 2**53),
)
point = st.tuples(names, label_sets, times, values, st.booleans(), st.randoms(use_true_random=False))


def _point_map(
    metric: str, labels: dict[str, str], t: int, v: float, with_labels: bool, rnd: random.Random
) -> dict[str, Any]:
    items = list(labels.items())
    rnd.shuffle(items)
    fields: list[tuple[str, Any]] = [("metric", metric), ("t", t), ("v", v)]
    if with_labels or labels:
        fields.append(("labels", dict(items)))
    rnd.shuffle(fields)
    return dict(fields)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(point, max_size=40),
    st.integers(-(2**63), 2**63 - 1),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    st.integers(0, 3),
    st.randoms(use_true_random=False),
)
def test_any_report_reads_as_msgspec_reads_it_digest_included(
    pts: list[Any], seq: int, time_ms: int | None, repeat: int, rnd: random.Random
) -> None:
    points = [_point_map(m, labels, t, v, w, r) for m, labels, t, v, w, r in pts]
    # series repeated within a report (in place and later on), as a report of several scrapes has them
    points += points[: repeat * 3]
    report: dict[str, Any] = {"seq": seq, "points": points}
    if time_ms is not None:
        report["time"] = time_ms
    items = list(report.items())
    rnd.shuffle(items)
    assert_same(pack(dict(items), rnd))
    # and as msgspec itself writes it
    assert_same(msgspec.msgpack.encode(dict(items)))


def test_what_the_agent_sends_reads_the_same() -> None:
    from lossproof.agent.report import Point, encode_report

    pts = [
        Point("cpu_seconds", {"mode": "idle", "cpu": "0", "host": "h1"}, 1_700_000_000_000, 1.5),
        Point("up", {}, 1_700_000_000_000, math.nan),
        Point("é_metric", {"zé": "ü", "a": ""}, 1_700_000_000_001, -math.inf),
        Point("cpu_seconds", {"mode": "idle", "cpu": "0", "host": "h1"}, 1_700_000_000_002, 2.5),
    ]
    assert_same(encode_report(7, 1_700_000_000_000, pts))
    assert_same(encode_report(2**63 - 1, 0, []))


def _r(**fields: Any) -> dict[str, Any]:
    return {"seq": 1, "points": [{"metric": "m", "t": 5, "v": 1.0, "labels": {"a": "b"}}], **fields}


def _p(**fields: Any) -> dict[str, Any]:
    return {"seq": 1, "points": [{"metric": "m", "t": 5, "v": 1.0, **fields}]}


ENC = msgspec.msgpack.encode
LEFT_TO_PYTHON = {
    "unknown report field": ENC(_r(extra=1)),
    "unknown point field": ENC(_p(extra=1)),
    "no seq": ENC({"points": []}),
    "no points": ENC({"seq": 1}),
    "no metric": ENC({"seq": 1, "points": [{"t": 5, "v": 1.0}]}),
    "no t": ENC({"seq": 1, "points": [{"metric": "m", "v": 1.0}]}),
    "no v": ENC({"seq": 1, "points": [{"metric": "m", "t": 5}]}),
    "seq past int64": ENC(_r(seq=2**63)),
    "t past int64": ENC(_p(t=2**64 - 1)),
    "t a float": ENC(_p(t=5.0)),
    "v a str": ENC(_p(v="1")),
    "v an int past 2**53": ENC(_p(v=2**53 + 1)),
    "v a bool": ENC(_p(v=True)),
    "labels nil": ENC(_p(labels=None)),
    "label value an int": ENC(_p(labels={"a": 1})),
    "metric bin": ENC(_p(metric=b"m")),
    "points a map": ENC({"seq": 1, "points": {}}),
    "report an array": ENC([1, []]),
    "point an array": ENC({"seq": 1, "points": [["m", 5, 1.0]]}),
    "float32 NaN": b"\x82\xa3seq\x01\xa6points\x91\x83\xa6metric\xa1m\xa1t\x05\xa1v\xca\x7f\xc0\x00\x00",
    "invalid UTF-8": ENC(_p(metric="m")).replace(b"\xa1m", b"\xa1\xff"),
    "repeated field": b"\x83\xa3seq\x01\xa3seq\x02\xa6points\x90",
    "repeated label name": b"\x82\xa3seq\x01\xa6points\x91\x84\xa6metric\xa1m\xa1t\x05\xa1v\x01"
    b"\xa6labels\x82\xa1a\xa1x\xa1a\xa1y",
    "trailing bytes": ENC(_r()) + b"\x00",
    "truncated": ENC(_r())[:-1],
    "empty": b"",
    "ext": ENC(_p(v=msgspec.msgpack.Ext(1, b"x"))),
}


@pytest.mark.parametrize("raw", LEFT_TO_PYTHON.values(), ids=LEFT_TO_PYTHON.keys())
def test_what_it_is_not_sure_of_is_left_to_python(raw: bytes) -> None:
    assert _native.native_report(raw) is None


def _record(reports: list[bytes], content_type: str = native.MSGPACK) -> LogRecord:
    if content_type == native.JSON:
        body = b'{"agent": "a", "reports": [' + b", ".join(reports) + b"]}"
    else:
        body = b"\x82\xa5agent\xa1a\xa7reports" + _len(len(reports), 0x90, 0xDC, 0xDD, random.Random(0))
        body += b"".join(reports)
    env = native.Envelope(1, "t", "native", content_type, "identity", 0, "a", [(1, 1)], body)
    return LogRecord(0, 0, b"", native.encode_envelope(env), 0)


def python_path(mp: pytest.MonkeyPatch) -> None:
    """Decode requests and reports with msgspec only (the reference the Rust readers must match)."""
    mp.setattr(decode, "_FAST", {})
    mp.setattr(decode, "_WHOLE", {})


def _stored(record: LogRecord) -> list[Any]:
    """What the parts of ``record`` would store: reports' (seq, time, digest, points), dead letters."""
    out: list[Any] = []
    for part in record_parts(record):
        b = part.batch
        for r in b.reports:
            pts = [(p.metric, list(p.labels.items()), p.t, struct.pack("<d", p.v)) for p in r.points]
            out.append((r.seq, r.time_ms, report_digest(r.points), encode_points(r.points), pts, part.points))
        out.extend((d.reason.split(":")[0], d.offset) for d in b.dead_letters)
    return out


@pytest.mark.parametrize("raw", LEFT_TO_PYTHON.values(), ids=LEFT_TO_PYTHON.keys())
def test_a_record_is_stored_or_refused_as_the_python_path_does(
    raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _record([ENC(_r(seq=1)), raw, ENC(_r(seq=3))])
    fast = _stored(record)
    python_path(monkeypatch)
    assert fast == _stored(record)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(point, max_size=10), min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_records_are_stored_as_the_python_path_stores_them(reports: list[Any], rnd: random.Random) -> None:
    raws = [
        pack({"seq": i + 1, "points": [_point_map(*p) for p in pts]}, rnd) for i, pts in enumerate(reports)
    ]
    record = _record(raws)
    fast = _stored(record)
    with pytest.MonkeyPatch.context() as mp:
        python_path(mp)
        slow = _stored(record)
    assert fast == slow
    assert all(
        isinstance(p, PointsBlock)
        for part in record_parts(record)
        for p in (r.points for r in part.batch.reports)
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(point, max_size=30), st.integers(0, 3), st.booleans(), st.randoms(use_true_random=False))
def test_report_columns_are_point_columns(
    pts: list[Any], repeat: int, some_known: bool, rnd: random.Random
) -> None:
    points = [_point_map(*p) for p in pts]
    points += points[: repeat * 3]
    raw = pack({"seq": 1, "points": points}, rnd)
    got = _native.native_report(raw)
    assert got is not None
    py_points = _py_report.decode(raw).points
    known: dict[tuple[Any, ...], int] = {}
    if some_known and py_points:
        p = py_points[0]
        known[("t", p.metric, *p.labels.items())] = 7
    a_known, b_known = dict(known), dict(known)
    a_resolve, b_resolve = Memo(a_known), Memo(b_known)
    a, b = Columns(), Columns()
    a.add("t", PointsBlock(got[2]), a_known, a_resolve)
    b.add("t", py_points, b_known, b_resolve)
    assert [bytes(c) for c in a.in_order()] == [bytes(c) for c in b.in_order()]
    # a series is asked for once here, once per point there: the same series in the same order
    assert a_resolve.calls == list(dict.fromkeys(b_resolve.calls))
    assert len(a_resolve.calls) == len(set(a_resolve.calls))


class Memo:
    """A store's resolver: one id per key until the batch commits (the stores' pending ids), the
    key, tenant, metric and labels asked recorded."""

    def __init__(self, known: dict[tuple[Any, ...], int]) -> None:
        self.known = known
        self.ids: dict[tuple[Any, ...], int] = {}
        self.calls: list[Any] = []

    def __call__(self, key: tuple[Any, ...], tenant: str, metric: str, labels: Any) -> int:
        self.calls.append((key, tenant, metric, tuple(labels.items())))
        if key not in self.ids:
            self.ids[key] = 1000 + len(self.ids)
        return self.ids[key]


# --- JSON ---------------------------------------------------------------------------------------


def jdump(obj: Any, rnd: random.Random) -> bytes:
    """JSON of ``obj`` with random whitespace and number spellings (1.5, 15e-1, 0.15E1, 1.50)."""

    def ws() -> str:
        return rnd.choice(["", "", " ", "\n  ", "\t"])

    def num(x: Any) -> str:
        if isinstance(x, float) and math.isfinite(x) and x == x and rnd.random() < 0.5:
            r = repr(x)
            if "e" not in r and "." in r and rnd.random() < 0.5:
                return r + "0"
            if "e" not in r and rnd.random() < 0.5:
                return f"{x:e}" if float(f"{x:e}") == x else r
        return msgspec.json.encode(x).decode()

    def go(x: Any) -> str:
        if isinstance(x, dict):
            return "{" + ",".join(f"{ws()}{go(k)}{ws()}:{ws()}{go(v)}{ws()}" for k, v in x.items()) + "}"
        if isinstance(x, list):
            return "[" + ",".join(ws() + go(v) + ws() for v in x) + "]"
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return num(x)
        return msgspec.json.encode(x).decode()

    return (ws() + go(obj) + ws()).encode()


def assert_json(raw: bytes) -> bool:
    """Rust reads ``raw`` as msgspec does, or leaves it to Python; whether it read it."""
    got = _native.native_report_json(raw)
    try:
        _report_decoders[native.JSON].decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        assert got is None
        return False
    if got is None:
        return False
    assert_same(raw, native.JSON)
    return True


@settings(max_examples=300, deadline=None)
@given(st.lists(point, max_size=20), st.integers(-(2**63), 2**63 - 1), st.randoms(use_true_random=False))
def test_json_reports_read_as_msgspec_reads_them_or_are_left_to_python(
    pts: list[Any], seq: int, rnd: random.Random
) -> None:
    points = [_point_map(*p) for p in pts]
    report = {"seq": seq, "points": points}
    assert_json(jdump(report, rnd))
    assert_json(msgspec.json.encode(report))


def test_plain_json_is_read_in_rust() -> None:
    report = {
        "seq": 3,
        "time": 1_700_000_000_000,
        "points": [
            {"metric": "cpu", "labels": {"host": "h1", "é": "ü"}, "t": 1_700_000_000_000, "v": 0.25},
            {"metric": "cpu", "labels": {"host": "h1", "é": "ü"}, "t": 1_700_000_000_010, "v": 12},
            {"metric": "up", "t": 1_700_000_000_000, "v": -1.5e-7},
            {"metric": "up", "t": 1_700_000_000_000, "v": 0, "labels": {}},
        ],
    }
    raw = msgspec.json.encode(report)
    assert assert_json(raw)
    assert assert_json(b' \n{ "points" : [ ] , "seq" : -7 }\n')
    assert assert_json(raw.replace(b"0.25", b"2.5e-1").replace(b"-1.5e-7", b"-15E-8"))


JSON_LEFT_TO_PYTHON = {
    "escape": b'{"seq": 1, "points": [{"metric": "a\\"b", "t": 1, "v": 1}]}',
    "unicode escape": b'{"seq": 1, "points": [{"metric": "\\u00e9", "t": 1, "v": 1}]}',
    "17 digits": b'{"seq": 1, "points": [{"metric": "m", "t": 1, "v": 0.30000000000000004}]}',
    "exponent past 22": b'{"seq": 1, "points": [{"metric": "m", "t": 1, "v": 1e23}]}',
    "negative zero": b'{"seq": 1, "points": [{"metric": "m", "t": 1, "v": -0.0}]}',
    "null v": b'{"seq": 1, "points": [{"metric": "m", "t": 1, "v": null}]}',
    "t a float": b'{"seq": 1, "points": [{"metric": "m", "t": 1.0, "v": 1}]}',
    "t 19 digits": b'{"seq": 1, "points": [{"metric": "m", "t": 1000000000000000000, "v": 1}]}',
    "leading zero": b'{"seq": 01, "points": []}',
    "trailing comma": b'{"seq": 1, "points": [],}',
    "unknown field": b'{"seq": 1, "points": [], "x": 1}',
    "repeated label": b'{"seq": 1, "points": [{"metric": "m", "t": 1, "v": 1,'
    b' "labels": {"a": "1", "a": "2"}}]}',
    "control character": b'{"seq": 1, "points": [{"metric": "m\x01", "t": 1, "v": 1}]}',
    "trailing data": b'{"seq": 1, "points": []} x',
    "invalid UTF-8": b'{"seq": 1, "points": [{"metric": "\xff", "t": 1, "v": 1}]}',
}


@pytest.mark.parametrize("raw", JSON_LEFT_TO_PYTHON.values(), ids=JSON_LEFT_TO_PYTHON.keys())
def test_json_it_is_not_sure_of_is_left_to_python(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _native.native_report_json(raw) is None
    ok = b'{"seq": 9, "points": [{"metric": "m", "t": 1, "v": 1}]}'
    record = _record([ok, raw, ok.replace(b"9", b"10")], native.JSON)
    fast = _stored(record)
    python_path(monkeypatch)
    assert fast == _stored(record)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(point, max_size=8), min_size=1, max_size=3), st.randoms(use_true_random=False))
def test_the_series_limit_counts_the_series_the_python_path_counts(
    reports: list[Any], rnd: random.Random
) -> None:
    from lossproof.ingest.series_limit import record_series

    raws = [
        pack({"seq": i + 1, "points": [_point_map(*p) for p in pts]}, rnd) for i, pts in enumerate(reports)
    ]
    record = _record(raws).value
    fast = record_series(record)
    with pytest.MonkeyPatch.context() as mp:
        python_path(mp)
        assert fast == record_series(record)


def test_long_strings_and_many_labels_and_points_keep_msgspecs_widths() -> None:
    """str8/16/32, map16 and array16/32 in the canonical encoding, as msgspec picks them."""
    rnd = random.Random(5)
    labels = {f"l{i}": "x" * i for i in range(40)}
    points = [
        {"metric": "m" * 300, "t": 1, "v": 1.0, "labels": labels},
        {"metric": "é" * 40_000, "t": 2, "v": 2.0, "labels": {"k" * 70_000: "v" * 255}},
    ]
    points += [{"metric": "p", "t": i, "v": float(i)} for i in range(70_000)]
    report = {"seq": 1, "points": points}
    assert_same(msgspec.msgpack.encode(report))
    assert_same(pack(report, rnd))


def test_a_store_tells_resends_from_conflicts_across_the_two_paths(tmp_path: Any) -> None:
    """A report stored from Python points and resent as a block (and the other way round) is a
    duplicate; the same seq with another point is a conflict, kept with the Python path's bytes."""
    from lossproof.agent.report import Point as AgentPoint
    from lossproof.agent.report import encode_report
    from lossproof.store.base import ReportWrite, WriteBatch
    from lossproof.store.sqlite import SqliteStore

    def pts(seq: int, v: float) -> list[AgentPoint]:
        return [
            AgentPoint(
                "m", {"b": "2", "a": "é"}, 1_700_000_000_000 + 100 * seq + i, v if i == 3 else math.nan
            )
            for i in range(10)
        ]

    def both(seq: int, v: float) -> tuple[Any, Any]:
        raw = encode_report(seq, 0, pts(seq, v))
        got = _native.native_report(raw)
        assert got is not None
        return PointsBlock(got[2]), _py_report.decode(raw).points

    store = SqliteStore(tmp_path / "s.db")
    try:

        def write(seq: int, points: Any) -> Any:
            return store.write_batch(WriteBatch(reports=[ReportWrite("t", "a", seq, points)], now_ms=1))

        block1, python1 = both(1, 1.0)
        block2, python2 = both(2, 1.0)
        assert write(1, python1).points_written == 10
        assert write(2, block2).points_written == 10
        again = [write(1, block1), write(2, python2)]
        assert [(r.points_written, r.reports_duplicate, r.reports_conflict) for r in again] == [(0, 1, 0)] * 2
        changed_block, changed_python = both(1, 2.0)
        r = write(1, changed_block)
        assert (r.points_written, r.reports_duplicate, r.reports_conflict) == (0, 0, 1)
        (c,) = store.conflicts("t")
        assert c.seq == 1 and c.digest == report_digest(changed_python)
    finally:
        store.close()


# --- whole requests read in Rust (native_request) -------------------------------------------------


def _parts(record: LogRecord) -> list[Any]:
    """Everything the parts of ``record`` hand the store, reports as in ``_stored``."""
    out: list[Any] = []
    for part in record_parts(record):
        b = part.batch
        out.append((part.points, part.size, b.incarnations, b.lost, b.spool, len(b.reports)))
    return out + _stored(record)


_fields = st.fixed_dictionaries(
    {},
    optional={
        "agent": st.sampled_from(["a", "", "ü" * 40]),
        "dropped": st.lists(
            st.fixed_dictionaries(
                {"first": st.integers(1, 9), "last": st.integers(1, 9), "reason": st.just("r")}
            ),
            max_size=2,
        ),
        "spool": st.none()
        | st.fixed_dictionaries(
            {
                "pending_reports": st.integers(0, 5),
                "pending_bytes": st.integers(0, 5),
                "oldest_pending_ms": st.integers(0, 5),
                "first_pending_seq": st.integers(0, 5),
                "last_seq": st.integers(0, 5),
            }
        ),
        "incarnation": st.sampled_from(["", "inc-1"]),
        "first_seq": st.integers(1, 5),
        # fields the worker does not know: skipped, whatever they hold
        "extra": st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**64 - 1)
            | st.floats()
            | st.text(max_size=3)
            | st.binary(max_size=3),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
            ),
            max_leaves=8,
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    _fields,
    st.lists(st.lists(point, max_size=6), max_size=4),
    st.integers(0, 7),
    st.sampled_from(["", "twice", "missing", "trailing", "not a map", "int key"]),
    st.randoms(use_true_random=False),
)
def test_whole_requests_are_stored_as_the_python_path_stores_them(
    fields: dict[str, Any], reports: list[Any], at: int, odd: str, rnd: random.Random
) -> None:
    raws = [
        pack({"seq": i + 1, "points": [_point_map(*p) for p in pts]}, rnd) for i, pts in enumerate(reports)
    ]
    pairs = [pack(k, rnd) + pack(v, rnd) for k, v in fields.items()]
    reports_pair = pack("reports", rnd) + _len(len(raws), 0x90, 0xDC, 0xDD, rnd) + b"".join(raws)
    if odd != "missing":
        pairs.insert(min(at, len(pairs)), reports_pair)
    if odd == "twice":
        pairs.append(reports_pair)
    if odd == "int key":
        pairs.append(b"\x01\x02")
    body = _len(len(pairs), 0x80, 0xDE, 0xDF, rnd) + b"".join(pairs)
    if odd == "trailing":
        body += b"\xc0"
    if odd == "not a map":
        body = _len(len(pairs), 0x90, 0xDC, 0xDD, rnd) + b"".join(pairs)
    env = native.Envelope(1, "t", "native", native.MSGPACK, "identity", 0, "a", [(1, 1)], body)
    record = LogRecord(0, 0, b"", native.encode_envelope(env), 0)
    whole = _native.native_request(body)
    fast = _parts(record)
    with pytest.MonkeyPatch.context() as mp:
        python_path(mp)
        assert fast == _parts(record)
    if odd in ("twice", "missing", "trailing", "not a map", "int key"):
        assert whole is None  # left to msgspec, whose rule it is
    elif all(_native.native_report(r) is not None for r in raws):
        assert whole is not None  # read in Rust: the reports as native_report reads each
        head, blocks = whole
        if "agent" in fields:
            assert msgspec.msgpack.decode(head, type=decode._Request).reports == []
        assert [(s, t, n) for s, t, _, n in blocks] == [
            (g[0], g[1], len(r)) for g, r in ((_native.native_report(r), r) for r in raws) if g is not None
        ]


def test_what_the_agent_sends_is_read_whole_in_rust() -> None:
    from lossproof.agent.report import Point as AgentPoint
    from lossproof.agent.report import encode_encoded_report, encode_points
    from lossproof.agent.request import encode_request

    pts = msgspec.Raw(encode_points([AgentPoint("m", {"h": "1"}, 5, 1.5)]))
    body = bytes(
        encode_request("a", [encode_encoded_report(1, 5, pts), encode_encoded_report(2, 6, pts)], [], None)
    )
    got = _native.native_request(body)
    assert got is not None and [(s, t) for s, t, _, _ in got[1]] == [(1, 5), (2, 6)]


def test_a_huge_count_is_refused_as_the_python_path_refuses_it_not_an_abort() -> None:
    """A count of reports, or of a report's points, is only bounded by the bytes left: reserving
    room for it up front asked for ~240 (reports) or ~20 (points) bytes a byte of body, and a failed
    allocation aborts the process (a worker re-reading the record would crash in a loop). In a
    child process under a memory limit: it must end, each record dead-lettered."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        r"""
        import resource, struct
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from lossproof.log.base import LogRecord
        from lossproof.protocol import decode, native
        n = 110_000_000
        head = b"\x82\xa5agent\xa1a\xa7reports"
        many_reports = head + b"\xdd" + struct.pack(">I", n) + bytes(n)
        many_points = head + b"\x91\x82\xa3seq\x01\xa6points\xdd" + struct.pack(">I", n) + bytes(n)
        for body in (many_reports, many_points):
            env = native.Envelope(1, "t", "native", native.MSGPACK, "identity", 0, "a", [(1, 1)], body)
            parts = list(decode.record_parts(LogRecord(0, 0, b"", native.encode_envelope(env), 0)))
            print("dead letters", sum(len(p.batch.dead_letters) for p in parts), flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["dead letters 1", "dead letters 1"], done.stdout
