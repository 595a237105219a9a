"""Decoder-level bounds: whatever ``check`` accepts, ``to_points`` turns into points the stores can
hold; whatever it cannot hold is a BadBody/BadRequest naming where, never another exception."""

from __future__ import annotations

import math

import msgspec
import pytest

from lossproof.httputil import header_text
from lossproof.protocol import influx, native, otlp, promrw
from lossproof.protocol.thirdparty import BadBody


def _native(**over: object) -> bytes:
    req: dict[str, object] = {"agent": "a", "reports": [{"seq": 1, "points": []}], **over}
    return msgspec.json.encode(req)


def test_native_integers_are_bounded_to_int64() -> None:
    sp = {
        "pending_reports": 0,
        "pending_bytes": 0,
        "oldest_pending_ms": 0,
        "first_pending_seq": 0,
        "last_seq": 1,
    }
    for field in sp:
        for big in (2**63, 2**64, 10**30):
            body = _native(spool={**sp, field: big})
            with pytest.raises(native.BadRequest, match=rf"\$\.spool\.{field}"):
                native.decode(body, native.JSON)
            if big < 2**64:  # msgpack has no larger integers
                with pytest.raises(native.BadRequest, match=rf"\$\.spool\.{field}"):
                    native.decode(msgspec.msgpack.encode(msgspec.json.decode(body)), native.MSGPACK)
    native.decode(_native(spool={**sp, "pending_bytes": 2**63 - 1}), native.JSON)


def test_native_nul_in_agent_or_reason_is_refused() -> None:
    """They become text columns, which PostgreSQL refuses to hold a NUL in (labels keep theirs)."""
    with pytest.raises(native.BadRequest, match=r"\$\.agent"):
        native.decode(_native(agent="a\x00b"), native.JSON)
    bad = [{"first": 1, "last": 2, "reason": "x\x00"}]
    with pytest.raises(native.BadRequest, match=r"\$\.dropped\[0\]\.reason"):
        native.decode(_native(dropped=bad), native.JSON)
    t = native.MIN_POINT_TIME_MS
    native.decode(_native(reports=[{"seq": 1, "points": [{"metric": "m\x00", "t": t, "v": 1}]}]), native.JSON)


def test_native_duplicate_seq_and_inconsistent_spool() -> None:
    pt = {"metric": "m", "t": native.MIN_POINT_TIME_MS, "v": 1.0}
    dup = _native(reports=[{"seq": 3, "points": [pt]}, {"seq": 4, "points": []}, {"seq": 3, "points": []}])
    with pytest.raises(native.BadRequest, match=r"duplicate seq 3 .*\$\.reports\[2\]"):
        native.decode(dup, native.JSON)
    # the same report twice (NaN included) is a harmless resend
    nan = {"metric": "m", "t": native.MIN_POINT_TIME_MS, "v": float("nan")}
    same = msgspec.msgpack.encode({"agent": "a", "reports": [{"seq": 3, "points": [nan]}] * 2})
    assert [r.seq for r in native.decode(same, native.MSGPACK).reports] == [3, 3]
    sp = {
        "pending_reports": 1,
        "pending_bytes": 1,
        "oldest_pending_ms": 0,
        "first_pending_seq": 6,
        "last_seq": 5,
    }
    with pytest.raises(native.BadRequest, match=r"first_pending_seq 6 > last_seq 5"):
        native.decode(_native(spool=sp), native.JSON)
    native.decode(_native(spool={**sp, "first_pending_seq": 5}), native.JSON)
    native.decode(_native(spool={**sp, "first_pending_seq": 0}), native.JSON)


@pytest.mark.parametrize("depth", [200, 10000])
def test_native_deep_nesting_is_bad_request(depth: int) -> None:
    body = b'{"agent":"n","reports":[],"zz":' + b"[" * depth + b"]" * depth + b"}"
    if depth < 1000:
        with pytest.raises(native.BadRequest, match="nothing to do"):  # nested, but fine
            native.decode(body, native.JSON)
        return
    with pytest.raises(native.BadRequest, match="nested too deeply"):
        native.decode(body, native.JSON)
    with pytest.raises(native.BadRequest, match="nested too deeply"):
        native.decode(b"\x83\xa5agent\xa1n\xa7reports\x90\xa2zz" + b"\x91" * depth + b"\x90", native.MSGPACK)


def test_otlp_deep_json_is_bad_body() -> None:
    body = b'{"resourceMetrics":[{"zz":' + b"[" * 10000 + b"]" * 10000 + b"}]}"
    with pytest.raises(BadBody):
        otlp.check(body, otlp.JSON)


def _v1() -> bytes:
    req = promrw.WriteRequest()
    ts = req.timeseries.add()
    lb = ts.labels.add()
    lb.name, lb.value = "__name__", "m"
    ts.samples.add(timestamp=1_700_000_000_000, value=1.0)
    return bytes(req.SerializeToString())


def _v2() -> bytes:
    req = promrw.RequestV2()
    req.symbols.extend(["", "__name__", "m"])
    ts = req.timeseries.add()
    ts.labels_refs.extend([1, 2])
    ts.samples.add(timestamp=1_700_000_000_000, value=1.0)
    return bytes(req.SerializeToString())


def test_remote_write_message_type_mismatch_is_bad_body() -> None:
    with pytest.raises(BadBody, match=r"looks like a prometheus\.WriteRequest"):
        promrw.check(_v1(), promrw.V2)
    with pytest.raises(BadBody, match=r"looks like a io\.prometheus\.write\.v2\.Request"):
        promrw.check(_v2(), promrw.V1)
    assert promrw.check(_v1(), promrw.V1).points == 1
    assert promrw.check(_v2(), promrw.V2).points == 1
    assert promrw.check(b"", promrw.V1).points == 0


def test_remote_write_empty_labels_are_not_counted() -> None:
    req = promrw.WriteRequest()
    ts = req.timeseries.add()
    for name, value in [("__name__", "m"), ("job", "j"), *((f"e{i}", "") for i in range(100))]:
        lb = ts.labels.add()
        lb.name, lb.value = name, value
    ts.samples.add(timestamp=1_700_000_000_000, value=1.0)
    body = bytes(req.SerializeToString())
    assert promrw.check(body, promrw.V1).points == 1
    assert [p.labels for p in promrw.to_points(body, promrw.V1)] == [{"job": "j"}]
    # 2.0 the same
    req2 = promrw.RequestV2()
    req2.symbols.extend(["", "__name__", "m", "job", "j", *(f"e{i}" for i in range(100))])
    ts2 = req2.timeseries.add()
    ts2.labels_refs.extend([1, 2, 3, 4, *(x for i in range(100) for x in (5 + i, 0))])
    ts2.samples.add(timestamp=1_700_000_000_000, value=1.0)
    assert promrw.check(bytes(req2.SerializeToString()), promrw.V2).points == 1


@pytest.mark.parametrize(
    "line,match",
    [
        (b"m v=1 -01", "line 1: timestamp -01"),
        (b"m v=1 0999999999999999999", "line 1: timestamp 0999999999999999999"),
        (b"m v=1e999", "float64 range"),
        (b"m v=" + b"9" * 400, "float64 range"),
        (b"m v=9223372036854775808i", "integer"),
        (b"m v=" + b"9" * 5000 + b"i", "integer"),
        (b"m v=-1u", "not valid line protocol"),
        (b"m v=18446744073709551616u", "unsigned integer"),
    ],
)
def test_influx_out_of_range_is_bad_body(line: bytes, match: str) -> None:
    with pytest.raises(BadBody, match=match):
        influx.check(line, "s")


def test_influx_values_in_range_convert() -> None:
    body = b"m a=1e308,b=-9223372036854775808i,c=18446744073709551615u,d=" + b"0" * 5000 + b"7i 1"
    assert influx.check(body, "s").points == 1
    values = {p.metric: p.v for p in influx.to_points(body, "s", 0, {})}
    assert values == {"m_a": 1e308, "m_b": -(2.0**63), "m_c": 2.0**64 - 1, "m_d": 7.0}
    assert all(math.isfinite(v) for v in values.values())
    # a tag value that looks like a huge number is just text
    assert influx.check(b"m,t=1e999 v=1", "s").points == 1


def test_header_text_is_safe_for_labels() -> None:
    bad = b"agent\xff\xfe/1.0".decode("utf-8", "surrogateescape")
    assert header_text(bad) == "agent\ufffd\ufffd/1.0"
    assert header_text("\ud800x") == "?x"
    assert header_text("a\nb\x00c") == "a\ufffdb\ufffdc"
    assert len(header_text("x" * 1000)) == 64
    header_text(bad).encode("utf-8")
