"""Ingest's one-pass check of a native ``POST /v1/reports`` body (``lossproof._native.reports_check``,
under ``native.check``) against msgspec's exact decode it stands in for (``_reports_check`` off): for
any body, valid, near every bound, encoded in any valid way, damaged or random bytes, ``check``
gives the same answer (the same summary, or the same error and message) either way."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lossproof.agent.request import encode_request
from lossproof.agent.spool.spool import SpoolStats
from lossproof.protocol import native
from lossproof.protocol.native import MAX_TIME_MS, MIN_POINT_TIME_MS
from lptest.proto import damaged

I64 = 2**63 - 1


def outcome(body: bytes, ctype: str, fast: bool) -> Any:
    with pytest.MonkeyPatch.context() as m:
        if not fast:
            m.setattr(native, "_reports_check", None)
        try:
            return ("ok", native.check(body, ctype))
        except Exception as e:
            return ("error", type(e), str(e))


def same(body: bytes, ctype: str) -> Any:
    got, want = outcome(body, ctype, True), outcome(body, ctype, False)
    assert got == want, body[:80]
    return got


# --- values near every bound ------------------------------------------------------------------------

# Each value is valid (at its bounds too) most of the time and now and then just past a bound or of
# the wrong type, so that some bodies pass and some fail on a single value.
odd = st.sampled_from([None, True, "1", [], {}, 1.5])
RARE = 40  # one draw in this many is a bad value


# hypothesis draws the ends of a range far more often than the rest: a middle value is the rare one
_rare = st.integers(0, RARE).map(lambda i: i == RARE // 2)


def pick(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
    return _rare.flatmap(lambda r: st.sampled_from(bad) | odd if r else st.sampled_from(good))


def rarely(draw: st.DrawFn) -> bool:
    return draw(_rare)


names = pick(["a", "m", "é", "node_cpu_seconds_total", "m" * 1024, "é" * 1024], ["", "m" * 1025, "é" * 1025])
label_values = pick(["", "v", "h1", "é", "v" * 4096, "é" * 4096], ["v" * 4097])
agents = pick(["a", "agent-1", "a" * 256, "é" * 256, "ü"], ["", "a" * 257, "é" * 257, "a\x00b"])
incarnations = pick(["", "inc-1", "x" * 64, "~!"], ["has space", "x" * 65, "é"])
counts = pick([0, 1, 7, 255, 65536, 2**32, I64], [-1, I64 + 1, 2**64 - 1])
seqs = pick([1, 2, 3, 4, 1000, I64], [0, -1, I64 + 1])
times = pick(
    [MIN_POINT_TIME_MS, 1_764_900_000_000, MAX_TIME_MS], [MIN_POINT_TIME_MS - 1, MAX_TIME_MS + 1, 0, -1]
)
report_times = pick([0, 1_764_900_000_000, MAX_TIME_MS], [MAX_TIME_MS + 1, -1])
floats = pick([0, 1.5, -0.0, math.nan, math.inf, -math.inf, 1e300, 2**64, I64, -(2**63), 10**30, 7], [1e308])


@st.composite
def label_sets(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.sampled_from([0, 1, 2, 3, 63, 64, 65] if rarely(draw) else [0, 1, 2, 3]))
    out: dict[str, Any] = {f"l{i}": "v" for i in range(n)}
    for _ in range(draw(st.integers(0, 2))):
        name = draw(names)
        out[name if isinstance(name, str | int | None) else 5] = draw(label_values)
    return out


@st.composite
def points(draw: st.DrawFn) -> dict[str, Any]:
    p: dict[str, Any] = {}
    for key, s in (("metric", names), ("t", times), ("v", floats), ("labels", label_sets())):
        if key == "labels" and draw(st.booleans()):
            continue  # optional
        if not rarely(draw):  # now and then a required field is missing
            p[key] = draw(s)
    return p


@st.composite
def reports(draw: st.DrawFn) -> dict[str, Any]:
    r: dict[str, Any] = {"seq": draw(seqs), "points": draw(st.lists(points(), max_size=3))}
    if draw(st.booleans()):
        r["time"] = draw(report_times)
    if rarely(draw):
        del r[draw(st.sampled_from(["seq", "points"]))]
    if rarely(draw):
        r["extra"] = 1
    return r


@st.composite
def spools(draw: st.DrawFn) -> Any:
    if rarely(draw):
        return draw(odd)
    s: dict[str, Any] = {
        "pending_reports": draw(counts),
        "pending_bytes": draw(counts),
        "oldest_pending_ms": draw(st.sampled_from([0, MAX_TIME_MS]) | times),
        "first_pending_seq": draw(counts),
        "last_seq": draw(counts),
    }
    if not rarely(draw):  # the lowest pending seq is not above the last one (0: none yet)
        s["last_seq"] = draw(st.sampled_from([0, s["first_pending_seq"], I64]))
    if rarely(draw):
        del s[draw(st.sampled_from(sorted(s)))]
    return s


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    req: dict[str, Any] = {
        "agent": draw(agents),
        "reports": draw(st.lists(reports(), min_size=1, max_size=3)),
    }
    if rarely(draw):
        req["reports"] = []
    elif not rarely(draw):  # distinct seqs
        for i, r in enumerate(req["reports"]):
            if isinstance(r.get("seq"), int) and r["seq"] > 0:
                r["seq"] = min(r["seq"], I64 - 3) + i
    if draw(st.booleans()):
        req["incarnation"] = draw(incarnations)
    if draw(st.booleans()):
        req["first_seq"] = draw(seqs)
    if draw(st.booleans()):
        req["spool"] = draw(spools())
    if not draw(st.integers(0, 5)):
        req["dropped"] = draw(st.sampled_from([[], [{"first": 1, "last": 2, "reason": "spool_full"}], [1]]))
    if rarely(draw):
        del req[draw(st.sampled_from(["agent", "reports"]))]
    if rarely(draw):
        req["unknown"] = [1, {"a": 2}]
    return req


# --- every valid encoding, not only msgspec's ----------------------------------------------------------


def mp_encode(v: Any, draw: st.DrawFn) -> bytes:
    """msgpack with a width drawn for every int, string, map and array (all valid encodings)."""

    def head(n: int, fix: int | None, fix_max: int, wide: list[tuple[int, str]]) -> bytes:
        opts = ([bytes([fix | n])] if fix is not None and n <= fix_max else []) + [
            bytes([tag]) + struct.pack(fmt, n) for tag, fmt in wide if n < 256 ** struct.calcsize(fmt)
        ]
        return draw(st.sampled_from(opts))

    if v is None:
        return b"\xc0"
    if v is True or v is False:
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        opts = []
        if 0 <= v <= 0x7F:
            opts.append(bytes([v]))
        if -32 <= v < 0:
            opts.append(struct.pack(">b", v))
        for tag, fmt in ((0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q")):
            if 0 <= v < 256 ** struct.calcsize(fmt):
                opts.append(bytes([tag]) + struct.pack(fmt, v))
        for tag, fmt in ((0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q")):
            bits = 8 * struct.calcsize(fmt) - 1
            if -(2**bits) <= v < 2**bits:
                opts.append(bytes([tag]) + struct.pack(fmt, v))
        return draw(st.sampled_from(opts)) if opts else mp_encode(float(v), draw)  # beyond msgpack ints
    if isinstance(v, float):
        f64 = [b"\xcb" + struct.pack(">d", v)]
        f32 = struct.pack(">f", v) if abs(v) < 3e38 or not math.isfinite(v) else b""
        exact = f32 and (struct.unpack(">f", f32)[0] == v or math.isnan(v))
        return draw(st.sampled_from([*f64, b"\xca" + f32] if exact else f64))
    if isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        return head(len(b), 0xA0, 31, [(0xD9, ">B"), (0xDA, ">H"), (0xDB, ">I")]) + b
    if isinstance(v, list):
        return head(len(v), 0x90, 15, [(0xDC, ">H"), (0xDD, ">I")]) + b"".join(mp_encode(x, draw) for x in v)
    if isinstance(v, dict):
        items = list(v.items())
        if items and rarely(draw):
            items.append(items[draw(st.integers(0, len(items) - 1))])  # a key twice
        return head(len(items), 0x80, 15, [(0xDE, ">H"), (0xDF, ">I")]) + b"".join(
            mp_encode(k, draw) + mp_encode(x, draw) for k, x in items
        )
    raise TypeError(type(v))


def json_encode(v: Any, draw: st.DrawFn) -> bytes:
    """JSON with whitespace drawn between tokens, now and then a key twice, a string escaped or a
    number written another way."""
    ws = st.sampled_from(["", "", " ", "\n", "\t ", "\r\n"])

    def enc(v: Any) -> str:
        if isinstance(v, dict):
            items = list(v.items())
            if items and rarely(draw):
                items.append(items[draw(st.integers(0, len(items) - 1))])
            inner = ",".join(f"{draw(ws)}{enc(k)}{draw(ws)}:{draw(ws)}{enc(x)}{draw(ws)}" for k, x in items)
            return "{" + (inner or draw(ws)) + "}"
        if isinstance(v, list):
            return "[" + (",".join(f"{draw(ws)}{enc(x)}{draw(ws)}" for x in v) or draw(ws)) + "]"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=rarely(draw))
        if isinstance(v, float) and not math.isfinite(v):
            return draw(st.sampled_from(["null", "1e400", "-1e400", "NaN"]))
        if isinstance(v, int) and not isinstance(v, bool):
            other = [f"{v}.0", f"{v}e0", f"0{v}", f"-{v}", f"{v}E+0"]
            return draw(st.sampled_from(other)) if rarely(draw) else str(v)
        return json.dumps(v)

    return (draw(ws) + enc(v) + draw(ws)).encode("utf-8", "surrogatepass")


CASES = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@CASES
@given(requests(), st.data())
def test_msgpack_bodies_get_the_same_answer(req: dict[str, Any], data: st.DataObject) -> None:
    same(mp_encode(req, data.draw), native.MSGPACK)


@CASES
@given(requests(), st.data())
def test_json_bodies_get_the_same_answer(req: dict[str, Any], data: st.DataObject) -> None:
    same(json_encode(req, data.draw), native.JSON)


@CASES
@given(st.data(), st.sampled_from([native.JSON, native.MSGPACK]))
def test_damaged_bodies_get_the_same_answer(data: st.DataObject, ctype: str) -> None:
    body = agent_body(data.draw(st.integers(1, 4)), json_=ctype == native.JSON)
    same(damaged(body, data), ctype)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([native.JSON, native.MSGPACK]))
def test_random_bytes_get_the_same_answer(body: bytes, ctype: str) -> None:
    same(body, ctype)


# --- the fast path answers for what agents send ---------------------------------------------------------


def agent_body(n: int, json_: bool = False) -> bytes:
    reps = [
        native._report_enc.encode(
            {
                "seq": 10 + i,
                "time": 1_764_900_001_000,
                "points": [
                    {
                        "metric": f"m{j}",
                        "labels": {"host": "h1", "core": str(j)},
                        "t": 1_764_900_000_000,
                        "v": j / 3,
                    }
                    for j in range(5)
                ],
            }
        )
        for i in range(n)
    ]
    spool = SpoolStats(
        pending_reports=n,
        pending_bytes=999,
        oldest_pending_ms=1_764_900_000_000,
        first_pending_seq=10,
        last_seq=9 + n,
        window_reports=0,
        window_bytes=0,
        disk_bytes=4096,
        segments=1,
    )
    body = encode_request("agent-7", reps, [], spool, ("inc-3", 5))
    return msgspec.json.encode(msgspec.msgpack.decode(body)) if json_ else body


@pytest.mark.parametrize("json_", [False, True])
def test_an_agents_request_takes_the_one_pass_check(json_: bool) -> None:
    ctype = native.JSON if json_ else native.MSGPACK
    body = agent_body(3, json_)
    quick = native.quick_check(body, ctype)
    assert quick == native.Checked("agent-7", [(10, 12)], 3, 15, "inc-3")
    assert same(body, ctype) == ("ok", quick)


def test_bodies_it_leaves_to_the_exact_decode() -> None:
    """Each valid for msgspec but outside what the one pass vouches for: it says None, and the exact
    decode answers."""
    base = {"agent": "a", "reports": [{"seq": 1, "points": []}]}
    for body, ctype in [
        (msgspec.json.encode({**base, "dropped": [{"first": 1, "last": 2, "reason": "x"}]}), native.JSON),
        (b'{"agent":"\\u0061","reports":[{"seq":1,"points":[]}]}', native.JSON),  # an escape
        (b'{"agent":"a","agent":"a","reports":[{"seq":1,"points":[]}]}', native.JSON),  # a key twice
        (
            msgspec.msgpack.encode({**base, "reports": [{"seq": 1, "points": []}] * 2}),
            native.MSGPACK,
        ),  # a resend
        (msgspec.msgpack.encode({**base, "other": 1}), native.MSGPACK),  # a field msgspec ignores
    ]:
        assert native.quick_check(body, ctype) is None, body
        assert same(body, ctype)[0] == "ok", body


def _valid() -> dict[str, Any]:
    point = {"metric": "m", "t": 1_764_900_000_000, "v": 1.5, "labels": {"host": "h1"}}
    spool = {
        "pending_reports": 1,
        "pending_bytes": 9,
        "oldest_pending_ms": 0,
        "first_pending_seq": 3,
        "last_seq": 3,
    }
    return {
        "agent": "a",
        "incarnation": "i",
        "first_seq": 1,
        "spool": spool,
        "reports": [{"seq": 3, "time": 0, "points": [point]}],
    }


def _at(req: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The dict holding ``path``'s last part (``reports.0.points.0.metric``), and that part."""
    *parents, last = path.split(".")
    node: Any = req
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    return node, last


P = "reports.0.points.0"
DROPPED = [{"first": 1, "last": 2, "reason": "x"}]
BOUNDS: list[tuple[str, Any]] = [
    *[("agent", v) for v in ["a" * 256, "a" * 257, "é" * 256, "é" * 257, "", "a\x00b", 5, None]],
    *[("incarnation", v) for v in ["x" * 64, "x" * 65, "has space", "é", "", "\x7f", "abc\n", "\n"]],
    *[("first_seq", v) for v in [0, 1, I64, I64 + 1, -1, 1.0]],
    *[("reports.0.seq", v) for v in [0, 1, I64, I64 + 1, -1, 1.0, "1"]],
    *[("reports.0.time", v) for v in [-1, 0, MAX_TIME_MS, MAX_TIME_MS + 1]],
    *[(f"{P}.metric", v) for v in ["", "m" * 1024, "m" * 1025, "é" * 1024, "é" * 1025, 1]],
    *[
        (f"{P}.t", v)
        for v in [MIN_POINT_TIME_MS - 1, MIN_POINT_TIME_MS, MAX_TIME_MS, MAX_TIME_MS + 1, 1.5e12]
    ],
    *[(f"{P}.v", v) for v in [0, -7, 1e300, 1e308, math.inf, math.nan, 2**64 - 1, I64 + 1, "1", None, True]],
    *[(f"{P}.labels", v) for v in [{}, {f"l{i}": "" for i in range(64)}, {f"l{i}": "" for i in range(65)}]],
    *[(f"{P}.labels", {k: "v"}) for k in ["", "k" * 1024, "k" * 1025, "é" * 1024, "é" * 1025]],
    *[(f"{P}.labels", {"k": v}) for v in ["", "v" * 4096, "v" * 4097, "é" * 4096, "é" * 4097, 1, None]],
    *[("spool.last_seq", v) for v in [0, 2, 3, I64, -1]],
    *[("spool.oldest_pending_ms", v) for v in [MAX_TIME_MS, MAX_TIME_MS + 1]],
    *[("dropped", v) for v in [[], DROPPED]],
    *[("spool", v) for v in [None, {}]],
    *[("reports", v) for v in [[]]],
]


@pytest.mark.parametrize(("path", "value"), BOUNDS, ids=lambda x: repr(x)[:24])
@pytest.mark.parametrize("ctype", [native.MSGPACK, native.JSON])
def test_each_bound_alone(path: str, value: Any, ctype: str) -> None:
    """One value at or just past its bound in an otherwise valid request: the same answer both ways,
    and a body within every bound takes the one pass unless it is one the pass leaves to the exact
    decode (a non-empty ``dropped``, a null ``spool``, no report, a JSON number near the float's end)."""
    req = _valid()
    node, key = _at(req, path)
    node[key] = value
    if ctype == native.MSGPACK:
        body = msgspec.msgpack.encode(req)
    else:
        body = json.dumps(req, ensure_ascii=False).encode("utf-8", "surrogatepass")
    got = same(body, ctype)
    left_to_exact = [("dropped", DROPPED), ("spool", None), ("reports", [])]
    if ctype == native.JSON:  # the one pass keeps well inside the float range msgspec allows,
        left_to_exact.append((f"{P}.v", 1e308))  # and reads JSON integers of up to 18 digits
        if isinstance(value, int) and len(str(abs(value))) > 18:
            left_to_exact.append((path, value))
    if got[0] == "ok" and (path, value) not in left_to_exact:
        assert native.quick_check(body, ctype) is not None, (path, value)


@pytest.mark.parametrize("ctype", [native.MSGPACK, native.JSON])
@pytest.mark.parametrize("incarnation", ["abc\n", "\n", "x" * 63 + "\n"])
def test_an_incarnation_with_a_trailing_newline_is_refused(incarnation: str, ctype: str) -> None:
    """Printable ASCII without spaces (docs/protocol.md): a regex's ``$`` also matches before a final
    newline, which let ``"abc\\n"`` through as an incarnation of its own (another seq space than
    ``"abc"``), shown and logged with a line break in it."""
    req = {**_valid(), "incarnation": incarnation}
    body = msgspec.msgpack.encode(req) if ctype == native.MSGPACK else json.dumps(req).encode()
    with pytest.raises(native.BadRequest, match="incarnation"):
        native.decode(body, ctype)
