"""What the ledger must hear of a request the main ingest refused for good (a 4xx other than the
replay's own misconfiguration): its seqs, lost with the reason, and the ranges its agent had
already given up on (see :mod:`lossproof.fallback.replay`)."""

from __future__ import annotations

import msgspec

from lossproof.fallback import journal as jn
from lossproof.protocol import native
from lossproof.protocol.compression import decompress

REASON_MAX = 300  # characters of a lost range's reason (the protocol allows 1024)
LOST_RANGES_PER_REQUEST = 500  # dropped ranges per ledger report (split further on a 413)
MAX_DECODED = 1 << 30  # to find a rejected body's own `dropped` ranges (the fallback bounded it)


class _DroppedOnly(msgspec.Struct):
    """The only part of a native body a rejected request's ledger report needs."""

    dropped: list[native.DroppedIn] = []


_dropped_decoders: dict[str, msgspec.json.Decoder[_DroppedOnly] | msgspec.msgpack.Decoder[_DroppedOnly]] = {
    native.JSON: msgspec.json.Decoder(_DroppedOnly),
    native.MSGPACK: msgspec.msgpack.Decoder(_DroppedOnly),
}


def body_dropped(entry: jn.Entry) -> list[tuple[int, int, str]]:
    """The ``dropped`` ranges the agent put in this request (empty if it cannot be decoded)."""
    decoder = _dropped_decoders.get(entry.content_type)
    if decoder is None:
        return []
    try:
        req = decoder.decode(decompress(entry.body, entry.encoding, MAX_DECODED))
    except Exception:  # a body the main ingest refused may well be undecodable: nothing to add
        return []
    return [(d.first, d.last, d.reason) for d in req.dropped if d.first <= d.last]


def rejected_reason(status: int, error: str) -> str:
    """The reason recorded in the ledger for the seqs of a request the main ingest refused."""
    text = " ".join(f"replay rejected: {status} {error}".split())
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 3] + "..."


def lost_ranges(entry: jn.Entry, status: int, error: str) -> list[tuple[int, int, str]]:
    """What the ledger must record as lost when ``entry`` was refused with ``status``: its seqs,
    and the ranges its agent had already given up on. Empty for a request without an agent."""
    if not entry.agent or entry.content_type not in _dropped_decoders:
        return []
    why = rejected_reason(status, error)
    out = [(a, b, why) for a, b in entry.seqs if 1 <= a <= b]
    out += [(a, b, r) for a, b, r in body_dropped(entry) if (a, b, r) not in out]
    return out
