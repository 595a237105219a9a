"""The body of ``POST /v1/reports``: reports straight from the spool plus ``dropped`` and ``spool``.

The spool holds each report already encoded as msgpack; ``msgspec.Raw`` splices those bytes into the
request without decoding or re-encoding a single point.
"""

from __future__ import annotations

from typing import Any

import msgspec

from lossproof.agent.ranges import Tagged
from lossproof.agent.spool import SpoolStats

CONTENT_TYPE = "application/msgpack"
_enc = msgspec.msgpack.Encoder()


def encode_request(
    agent: str,
    reports: list[bytes],
    dropped: list[Tagged],
    spool: SpoolStats | None,
    incarnation: tuple[str, int] = ("", 1),
) -> bytes:
    body: dict[str, Any] = {"agent": agent, "reports": [msgspec.Raw(r) for r in reports]}
    inc, first_seq = incarnation
    if inc:
        body["incarnation"] = inc
    if first_seq != 1:
        body["first_seq"] = first_seq
    if dropped:
        body["dropped"] = [{"first": a, "last": b, "reason": why[:1024]} for a, b, why in dropped]
    if spool is not None:
        body["spool"] = {
            "pending_reports": spool.pending_reports,
            "pending_bytes": spool.pending_bytes,
            "oldest_pending_ms": spool.oldest_pending_ms,
            "first_pending_seq": spool.first_pending_seq,
            "last_seq": spool.last_seq,
        }
    return _enc.encode(body)
