from __future__ import annotations

import json

import msgspec
import pytest

from lossproof.protocol import native


def _req(**over: object) -> bytes:
    body: dict[str, object] = {
        "agent": "a",
        "reports": [{"seq": 1, "points": [{"metric": "m", "t": 1000, "v": 1}]}],
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
        (_req(reports=[{"seq": 1, "points": [{"metric": "", "t": 1, "v": 1}]}]), "metric"),
        (
            _req(reports=[{"seq": 1, "points": [{"metric": "m", "t": 1, "v": 1, "labels": {"a": 1}}]}]),
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
