"""What counts as an acknowledgement of the native protocol, for every client that deletes data on one.

The first post-mortem's failure was a 200 that nothing durable stood behind. So a client (the agent,
``lossproof send``, ``lossproof replay``) treats a report as acknowledged only when all of these hold:

* the status is 200;
* the answer carries ``X-Lossproof-Protocol: 1``, which lossproof's ingest API and fallback receiver
  put on every answer they give: a proxy, a maintenance page, a wrong URL or another service does not;
* the body is JSON with an ``acked`` list of ``[first, last]`` seq ranges (built only from the log's
  durable receipt), and the report's seq lies in one of them.

Anything else is a protocol error: the reports stay where they are (spool, state file, journal), the
client logs it and counts it (``protocol_error``), and treats the destination as failing. The same
goes for a refusal: a 400 or 413 makes a client give a report up only when it carries the header
(:func:`from_lossproof`); nginx answering an http:// request on its https port with a 400 does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from lossproof.protocol.native import SEQ_CONFLICT

PROTOCOL_HEADER = "X-Lossproof-Protocol"
PROTOCOL_VERSION = "1"
# Sent with every answer of the ingest API and the fallback receiver (set_protocol_header).
ACK_HEADERS = {PROTOCOL_HEADER: PROTOCOL_VERSION}


class NotAcknowledged(Exception):
    """A 200 that is not a lossproof acknowledgement: nothing it answered may be deleted."""


def from_lossproof(headers: Mapping[str, str]) -> bool:
    """Whether an answer comes from a lossproof server speaking this protocol version."""
    version = headers.get(PROTOCOL_HEADER)
    return version is not None and version.strip() == PROTOCOL_VERSION


def is_seq_conflict(status: int, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether an answer is lossproof's ``409 seq_conflict``: a seq of the request is stored with
    other content, and the client must start a new incarnation and send the reports again."""
    if status != 409 or not from_lossproof(headers):
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("reason") == SEQ_CONFLICT


def acknowledged(headers: Mapping[str, str], body: bytes, seqs: Iterable[int]) -> set[int]:
    """The seqs of ``seqs`` that a 200 answer (``headers``, ``body``) acknowledges; raises
    :class:`NotAcknowledged` when the answer is not a lossproof acknowledgement at all."""
    version = headers.get(PROTOCOL_HEADER)
    if version is None:
        raise NotAcknowledged(f"the 200 has no {PROTOCOL_HEADER} header: not a lossproof ingest")
    if version.strip() != PROTOCOL_VERSION:
        raise NotAcknowledged(f"{PROTOCOL_HEADER}: {version[:20]!r} is a protocol this client does not speak")
    try:
        parsed = json.loads(body)
    except ValueError:
        raise NotAcknowledged("the 200's body is not JSON") from None
    acked = parsed.get("acked") if isinstance(parsed, dict) else None
    if not isinstance(acked, list):
        raise NotAcknowledged("the 200's body has no acked list")
    ranges: list[tuple[int, int]] = []
    for r in acked:
        if (
            not isinstance(r, list)
            or len(r) != 2
            or not all(type(x) is int for x in r)  # bool is an int: not a seq
            or not 1 <= r[0] <= r[1]
        ):
            raise NotAcknowledged(f"the 200's acked field holds {str(r)[:40]}, not a [first, last] range")
        ranges.append((r[0], r[1]))
    return {s for s in seqs if any(a <= s <= b for a, b in ranges)}
