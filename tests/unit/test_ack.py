"""The acknowledgement rule every native client applies before deleting data (protocol/ack.py)."""

from __future__ import annotations

import json

import pytest

from lossproof.protocol.ack import ACK_HEADERS, NotAcknowledged, acknowledged


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_acked_ranges_cover_exactly_their_seqs() -> None:
    got = acknowledged(ACK_HEADERS, body({"acked": [[1, 3], [7, 7]], "replay": []}), [1, 2, 3, 4, 7, 8])
    assert got == {1, 2, 3, 7}


def test_the_header_is_case_insensitive_where_the_client_s_headers_are() -> None:
    import urllib3

    h = urllib3.HTTPHeaderDict({"x-lossproof-protocol": "1"})
    assert acknowledged(h, body({"acked": [[5, 5]]}), [5]) == {5}


@pytest.mark.parametrize(
    ("headers", "answer", "why"),
    [
        ({}, body({"acked": [[1, 1]]}), "no X-Lossproof-Protocol header"),
        ({"X-Lossproof-Protocol": "2"}, body({"acked": [[1, 1]]}), "does not speak"),
        (ACK_HEADERS, b"<html>maintenance</html>", "not JSON"),
        (ACK_HEADERS, body({"status": "ok"}), "no acked list"),
        (ACK_HEADERS, body(["acked"]), "no acked list"),
        (ACK_HEADERS, body({"acked": "1-3"}), "no acked list"),
        (ACK_HEADERS, body({"acked": [[3, 1]]}), "not a [first, last] range"),
        (ACK_HEADERS, body({"acked": [[0, 1]]}), "not a [first, last] range"),
        (ACK_HEADERS, body({"acked": [[1, 2, 3]]}), "not a [first, last] range"),
        (ACK_HEADERS, body({"acked": [[True, True]]}), "not a [first, last] range"),
        (ACK_HEADERS, body({"acked": [["1", "2"]]}), "not a [first, last] range"),
        (ACK_HEADERS, body({"acked": [[1.0, 2.0]]}), "not a [first, last] range"),
    ],
)
def test_anything_else_is_not_an_acknowledgement(headers: dict[str, str], answer: bytes, why: str) -> None:
    with pytest.raises(NotAcknowledged, match=why.replace("[", r"\[").replace("]", r"\]")):
        acknowledged(headers, answer, [1])
