"""InfluxDB line protocol: escaping, values, precisions, hostile lines, and round-trip properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof.protocol import influx
from lossproof.protocol.thirdparty import BadBody


def points(
    body: bytes, precision: str = "ns", now: int = 1_767_225_600_123
) -> list[tuple[str, dict, int, float]]:  # type: ignore[type-arg]
    influx.check(body, precision)
    return [(p.metric, p.labels, p.t, p.v) for p in influx.to_points(body, precision, now, {"db": "d"})]


def test_values_names_and_the_value_field() -> None:
    body = (
        b"cpu,host=a usage=1.5,count=3i,big=18446744073709551615u,on=true,off=F,neg=-2e-3 1767225600000000000"
    )
    assert points(body) == [
        ("cpu_usage", {"db": "d", "host": "a"}, 1_767_225_600_000, 1.5),
        ("cpu_count", {"db": "d", "host": "a"}, 1_767_225_600_000, 3.0),
        ("cpu_big", {"db": "d", "host": "a"}, 1_767_225_600_000, float(2**64 - 1)),
        ("cpu_on", {"db": "d", "host": "a"}, 1_767_225_600_000, 1.0),
        ("cpu_off", {"db": "d", "host": "a"}, 1_767_225_600_000, 0.0),
        ("cpu_neg", {"db": "d", "host": "a"}, 1_767_225_600_000, -0.002),
    ]
    assert points(b"temp value=20") == [("temp", {"db": "d"}, 1_767_225_600_123, 20.0)]


def test_escaping_edge_cases() -> None:
    body = (
        b'my\\ meas\\,x,tag\\ key=va\\=l\\,ue,path=C:\\\\dir f\\=ld\\ 1=1,s="quo\\"te\\\\, x=1" 1000000\n'
        b'weird\\x,t="q" v=2 2000000\n'
    )
    got = points(body, "ns")
    assert got == [
        ("my meas,x_f=ld 1", {"db": "d", "tag key": "va=l,ue", "path": "C:\\\\dir"}, 1, 1.0),
        ("weird\\x_v", {"db": "d", "t": '"q"'}, 2, 2.0),
    ]
    checked = influx.check(body, "ns")
    assert (checked.points, checked.skipped) == (2, 1)
    assert influx.string_fields(body) == ['quo"te\\, x=1']


def test_comments_blank_lines_crlf_and_whitespace() -> None:
    body = b"# a comment\n\n  \ncpu v=1 1000\r\n\t# indented comment\ncpu v=2  2000  \n"
    assert [(m, t, v) for m, _, t, v in points(body, "ms")] == [("cpu_v", 1000, 1.0), ("cpu_v", 2000, 2.0)]
    assert influx.check(body, "ms").points == 2


@pytest.mark.parametrize(
    ("precision", "stamp", "t_ms"),
    [
        ("ns", 1_767_225_600_123_456_789, 1_767_225_600_123),
        ("n", 1_767_225_600_123_456_789, 1_767_225_600_123),
        ("us", 1_767_225_600_123_456, 1_767_225_600_123),
        ("u", 1_767_225_600_123_456, 1_767_225_600_123),
        ("ms", 1_767_225_600_123, 1_767_225_600_123),
        ("s", 1_767_225_600, 1_767_225_600_000),
        ("m", 29_453_760, 1_767_225_600_000),
        ("h", 490_896, 1_767_225_600_000),
    ],
)
def test_precisions(precision: str, stamp: int, t_ms: int) -> None:
    assert points(b"m v=1 %d" % stamp, precision)[0][2] == t_ms


def test_a_line_without_timestamp_gets_the_receive_time_truncated_to_the_precision() -> None:
    assert points(b"m v=1", "s", now=1_767_225_600_999)[0][2] == 1_767_225_600_000
    assert points(b"m v=1", "ns", now=1_767_225_600_999)[0][2] == 1_767_225_600_999


HOSTILE: list[tuple[str, bytes, str, str]] = [
    ("NaN", b"cpu v=NaN 1", "ns", "NaN"),
    ("Inf", b"cpu v=-Inf 1", "ns", "NaN and Inf"),
    ("no fields", b"cpu,host=a", "ns", "missing field set"),
    ("no fields with timestamp", b"cpu 1234", "ns", "line 1"),
    ("empty tag value", b"cpu,host= v=1", "ns", "empty value"),
    ("unterminated string", b'cpu v="abc', "ns", "unterminated"),
    ("bad value", b"cpu v=12abc", "ns", "line 1"),
    ("second line bad", b"cpu v=1\ncpu v=\ncpu v=3", "ns", "line 2"),
    ("timestamp in ns sent as s", b"cpu v=1 1767225600000000000", "s", "precision"),
    ("negative timestamp", b"cpu v=1 -1", "ns", "outside"),
    ("timestamp past int64", b"cpu v=1 99999999999999999999", "ns", "line 1"),
    ("too many tags", b"cpu," + b",".join(b"t%d=v" % i for i in range(64)) + b" v=1", "ns", "tags"),
    ("huge tag value", b"cpu,t=" + b"x" * 5000 + b" v=1", "ns", "over 4096"),
    ("huge measurement", b"x" * 2000 + b" v=1", "ns", "over 1024"),
    ("not utf-8", b"cpu,t=\xff v=1", "ns", "UTF-8"),
    ("comment marker as measurement", b"#cpu v=1\ncpu", "ns", "line 2"),
]


@pytest.mark.parametrize(("name", "body", "precision", "needle"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_lines_are_refused_with_a_message(
    name: str, body: bytes, precision: str, needle: str
) -> None:
    with pytest.raises(BadBody, match=needle):
        influx.check(body, precision)


def test_unknown_precision() -> None:
    with pytest.raises(BadBody, match="precision"):
        influx.precision_of("fortnight")


# -- properties ------------------------------------------------------------------------------------

name_chars = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
names = st.text(name_chars, min_size=1, max_size=10)


def esc(s: str, chars: str) -> str:
    for c in chars:
        s = s.replace(c, "\\" + c)
    return s


ROUND_TRIPS: list[int] = []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            names.filter(lambda s: not s.startswith("#") and "\\" not in s and not s[0].isspace()),
            st.dictionaries(
                names.filter(lambda s: "\\" not in s), names.filter(lambda s: "\\" not in s), max_size=4
            ),
            st.dictionaries(
                names.filter(lambda s: "\\" not in s),
                st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**63), 2**63 - 1)),
                min_size=1,
                max_size=3,
            ),
            st.integers(0, 4_102_444_800_000),
        ),
        min_size=1,
        max_size=5,
    )
)
def round_trip_of_generated_lines(
    lines: list[tuple[str, dict[str, str], dict[str, float | int], int]],
) -> None:
    """Serialize points with every escape, check and decode them back: same names, tags, values, times."""
    text = []
    want = []
    for meas, tags, fields, t in lines:
        tag_s = "".join(f",{esc(k, ',= ')}={esc(v, ',= ')}" for k, v in tags.items())
        field_s = ",".join(
            f"{esc(k, ',= ')}={v}i" if isinstance(v, int) else f"{esc(k, ',= ')}={v!r}"
            for k, v in fields.items()
        )
        text.append(f"{esc(meas, ', ')}{tag_s} {field_s} {t}")
        for k, v in fields.items():
            want.append((meas if k == "value" else f"{meas}_{k}", {"db": "d", **tags}, t, float(v)))
    body = "\n".join(text).encode()
    if any("\n" in s or "\r" in s for s in body.decode().split("\n")):
        return
    try:
        checked = influx.check(body, "ms")
    except BadBody as e:
        # only the length bounds may refuse a generated line
        assert "over" in str(e), (body, e)
        return
    assert checked.points == len(lines)
    ROUND_TRIPS.append(1)
    got = [(p.metric, p.labels, p.t, p.v) for p in influx.to_points(body, "ms", 0, {"db": "d"})]
    assert got == want


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from(list('ab =,\\"#\n\r\t0123456789.-eiutfTF')), max_size=60))
def test_arbitrary_text_is_refused_cleanly_or_decodes(text: str) -> None:
    body = text.encode()
    try:
        checked = influx.check(body, "ns")
    except BadBody:
        return
    pts = influx.to_points(body, "ns", 1_767_225_600_000, {})
    # every data line has a field: each field is a point, or a string (skipped and counted)
    assert len(pts) + checked.skipped >= checked.points
    for p in pts:
        assert p.metric and not math.isnan(p.v) and 0 <= p.t <= 4_102_444_800_000


def test_round_trip_of_generated_lines() -> None:
    """The property, and that it was not vacuous (checked in the same test: pytest-xdist may run two
    tests of one module in different processes)."""
    ROUND_TRIPS.clear()
    round_trip_of_generated_lines()
    assert len(ROUND_TRIPS) > 100, "most generated bodies were refused: the property tested nothing"
