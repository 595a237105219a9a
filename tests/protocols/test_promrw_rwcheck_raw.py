"""Review s9-revA: rw1_check on hand-encoded (non-canonical) bodies against the exact path, and the
worker's decoding of what it accepts against the message classes."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lossproof.protocol import promrw
from lossproof.protocol.thirdparty import MAX_TIME_MS


def varint(n: int, pad: int = 0) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n or pad > 0:
            out.append(b | 0x80)
            if not n:
                pad -= 1
                if pad == 0:
                    out.append(0)
                    break
                continue
        else:
            out.append(b)
            break
    return bytes(out)


def field(num: int, wire: int, payload: bytes, lenpad: int = 0) -> bytes:
    tag = varint(num << 3 | wire)
    if wire == 2:
        return tag + varint(len(payload), lenpad) + payload
    return tag + payload


strs = st.sampled_from(
    [
        b"__name__",
        b"job",
        b"",
        b"a",
        "é".encode(),
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"x" * 1020,
        b"\x00",
    ]
)
times = st.sampled_from([0, 1, -1, MAX_TIME_MS, MAX_TIME_MS + 1, 2**63 - 1, 2**64 - 1, 1_700_000_000_000])


@st.composite
def label(draw) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["name", "value", "other"]))
        if kind == "other":
            parts.append(
                draw(st.sampled_from([field(3, 0, varint(1)), field(1, 0, varint(5)), field(2, 5, b"abcd")]))
            )
        else:
            parts.append(
                field(1 if kind == "name" else 2, 2, draw(strs), draw(st.sampled_from([0, 0, 0, 1, 4])))
            )
    return b"".join(parts)


@st.composite
def sample(draw) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["v", "t", "t", "tpad", "other"]))
        if kind == "v":
            parts.append(
                field(1, 1, struct.pack("<d", draw(st.sampled_from([1.0, math.nan, 0.0, math.inf]))))
            )
        elif kind == "t":
            parts.append(field(2, 0, varint(draw(times))))
        elif kind == "tpad":
            parts.append(field(2, 0, varint(draw(times), draw(st.integers(1, 4)))))
        else:
            parts.append(
                draw(
                    st.sampled_from([field(2, 1, b"\0" * 8), field(1, 0, varint(3)), field(3, 0, varint(1))])
                )
            )
    return b"".join(parts)


@st.composite
def series(draw) -> bytes:
    parts = []
    if draw(st.booleans()):
        parts.append(field(1, 2, field(1, 2, b"__name__") + field(2, 2, b"up")))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["l", "l", "s", "s", "other"]))
        if kind == "l":
            parts.append(field(1, 2, draw(label())))
        elif kind == "s":
            parts.append(field(2, 2, draw(sample())))
        else:
            parts.append(
                draw(st.sampled_from([field(5, 0, varint(1)), field(1, 0, varint(1)), field(3, 2, b"")]))
            )
    parts = draw(st.permutations(parts))
    return b"".join(parts)


@st.composite
def bodies(draw) -> bytes:
    return b"".join(
        field(1, 2, draw(series()), draw(st.sampled_from([0, 0, 1]))) for _ in range(draw(st.integers(0, 3)))
    )


def outcome(body: bytes, fast: bool):
    mp = pytest.MonkeyPatch()
    if not fast:
        mp.setattr(promrw, "_rw1_check", None)
    try:
        return ("ok", promrw.check(body, promrw.V1))
    except Exception as e:
        return ("error", type(e), str(e))
    finally:
        mp.undo()


def reference_points(body: bytes):
    req = promrw.WriteRequest.FromString(body)
    out = []
    for ts in req.timeseries:
        labels = {lb.name: lb.value for lb in ts.labels}
        name = labels.pop("__name__")
        labels = {k: v for k, v in labels.items() if v}
        for s in ts.samples:
            out.append((name, tuple(labels.items()), s.timestamp, struct.pack("<d", s.value)))
    return out


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies())
def test_raw_bodies_check_the_same_and_decode_the_same(body: bytes) -> None:
    got, want = outcome(body, True), outcome(body, False)
    assert got == want, body
    if got[0] == "ok":
        pts = [
            (p.metric, tuple(p.labels.items()), p.t, struct.pack("<d", p.v))
            for p in promrw.to_points(body, promrw.V1)
        ]
        assert pts == reference_points(body)


good_strs = st.sampled_from(
    [b"job", b"a", b"b", b"c", "é".encode(), "\U0010ffff".encode(), b"x" * 500, b"\x00", b"__name__"]
)
bad_bits = st.sampled_from(
    [b""] * 40
    + [
        field(2, 2, b"\xed\xa0\x80"),  # surrogate value
        field(2, 2, b"\xc0\x80"),  # overlong NUL
        field(2, 2, b""),  # explicit empty value
        field(1, 2, b""),  # explicit empty name
        field(2, 2, b"\xf4\x90\x80\x80"),  # > U+10FFFF
    ]
)


@st.composite
def good_label(draw) -> bytes:
    parts = [field(1, 2, draw(good_strs)), field(2, 2, draw(good_strs))]
    parts = draw(st.permutations(parts))
    return b"".join(parts) + draw(bad_bits)


@st.composite
def good_sample(draw) -> bytes:
    v = field(1, 1, struct.pack("<d", draw(st.sampled_from([1.0, math.nan, -0.0, math.inf]))))
    good_t = st.sampled_from([0, 1, 5, MAX_TIME_MS, 1_700_000_000_000])
    t = field(
        2,
        0,
        varint(
            draw(good_t | times if draw(st.integers(0, 9)) == 0 else good_t),
            draw(st.sampled_from([0] * 8 + [1, 3])),
        ),
    )
    extra = draw(st.sampled_from([[]] * 12 + [[v], [t], [field(2, 0, varint(0))]]))
    parts = draw(st.permutations([v, t, *extra]))
    return b"".join(parts)


@st.composite
def good_series(draw) -> bytes:
    name = draw(st.sampled_from([b"up"] * 6 + [b"x" * 1010, b"x" * 1015, b"", "é".encode()]))
    parts = [field(1, 2, field(1, 2, b"__name__") + field(2, 2, name))]
    parts += [
        field(1, 2, draw(good_label()))
        for _ in range(draw(st.sampled_from([0, 1, 2, 3, 0, 1, 2, 63, 64, 65])))
    ]
    parts += [field(2, 2, draw(good_sample())) for _ in range(draw(st.integers(0, 3)))]
    if draw(st.integers(0, 15)) == 0:
        parts.append(
            field(1, 2, field(1, 2, b"__name__") + field(2, 2, draw(st.sampled_from([b"", b"dup"]))))
        )
    return b"".join(draw(st.permutations(parts)))


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.lists(good_series(), max_size=3).map(lambda xs: b"".join(field(1, 2, x) for x in xs)))
def test_near_valid_raw_bodies_check_the_same_and_decode_the_same(body: bytes) -> None:
    got, want = outcome(body, True), outcome(body, False)
    assert got == want, body[:200]
    if got[0] == "ok":
        pts = [
            (p.metric, tuple(p.labels.items()), p.t, struct.pack("<d", p.v))
            for p in promrw.to_points(body, promrw.V1)
        ]
        assert pts == reference_points(body)
