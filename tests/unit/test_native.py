from __future__ import annotations

import json

import msgspec
import pytest

from lossproof.protocol import native

T = 1_767_225_600_000  # 2026-01-01 in unix ms

def _req(**over: object) -> bytes:
    body: dict[str, object] = {
        "agent": "a",
        "reports": [{"seq": 1, "points": [{"metric": "m", "t": T, "v": 1}]}],
    }
    body.update(over)
    return json.dumps(body).encode()


def test_decodes_json_and_msgpack() -> None:
    req = native.decode(_req(), native.JSON)
    assert req.agent == "a" and req.reports[0].points[0].v == 1.0
    mp = msgspec.msgpack.encode(json.loads(_req()))
    assert native.decode(mp, native.MSGPACK) == req


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (_req(agent=""), "$.agent"),
        (_req(reports=[{"seq": -1, "points": []}]), "$.reports[0].seq"),
        (_req(reports=[{"seq": 1, "points": [{"metric": "", "t": T, "v": 1}]}]), "metric"),
        (
            _req(reports=[{"seq": 1, "points": [{"metric": "m", "t": T, "v": 1, "labels": {"a": 1}}]}]),
            "labels",
        ),
        (_req(reports=[{"seq": 1, "points": [{"metric": "m", "t": -5, "v": 1}]}]), ".t"),
        (b"\xff", "malformed"),
    ],
)
def test_errors_say_where(body: bytes, where: str) -> None:
    with pytest.raises(native.BadRequest) as e:
        native.decode(body, native.JSON)
    assert where in str(e.value)


def test_seq_ranges() -> None:
    req = native.decode(_req(reports=[{"seq": s, "points": []} for s in (5, 1, 2, 3, 3, 7)]), native.JSON)
    assert native.seq_ranges(req) == [(1, 3), (5, 5), (7, 7)]


def test_envelope_round_trip() -> None:
    env = native.Envelope(1, "t", "native", native.JSON, "gzip", 5, "a", [(1, 2)], b"\x00body")
    assert native.decode_envelope(native.encode_envelope(env)) == env


@pytest.mark.parametrize("t", [0, 1, 1_767_225_600, 99_999_999_999])
def test_a_point_time_that_looks_like_seconds_is_refused_with_the_reason(t: int) -> None:
    body = _req(reports=[{"seq": 1, "points": [{"metric": "m", "t": t, "v": 1}]}])
    with pytest.raises(native.BadRequest) as e:
        native.decode(body, native.JSON)
    assert "in seconds" in str(e.value) and "$.reports[0].points[0].t" in str(e.value)


def test_the_earliest_plausible_point_time_is_accepted() -> None:
    body = _req(reports=[{"seq": 1, "points": [{"metric": "m", "t": native.MIN_POINT_TIME_MS, "v": 1}]}])
    assert native.decode(body, native.JSON).reports[0].points[0].t == native.MIN_POINT_TIME_MS
