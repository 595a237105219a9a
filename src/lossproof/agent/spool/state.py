"""The spool's small durable state: what was acknowledged, what was given up on, and the floor.

File ``state``: ``b"LPST"``, crc32 of the body (u32), body length (u32), then the body (msgpack).
It is a sized cell of :mod:`lossproof.segments.state`, replaced atomically (write a temp file, fsync,
rename, fsync the directory), so a crash leaves the old or the new state, never a mix.

Losing an acknowledgement costs only a harmless resend (the server stores a seq once), so acks could
be written lazily; losing a *drop* would be a silent loss, so a drop is always written before the
data it covers may be deleted.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from lossproof.agent.ranges import SeqRange, Tagged
from lossproof.segments import state as cells

MAGIC = b"LPST"
NAME = "state"
# The dropped history only serves replay requests for old seqs; past this many ranges the oldest go.
MAX_DROPPED_RANGES = 10_000


class StateError(Exception):
    pass


class SpoolState(msgspec.Struct):
    version: int = 1
    # Every seq below ``floor`` is resolved (acknowledged or dropped) and may be gone from disk.
    floor: int = 1
    # Acknowledged seqs at or above the floor.
    acked: list[SeqRange] = msgspec.field(default_factory=list)
    # Every seq given up on, with why (answers later replay requests with the original reason).
    dropped: list[Tagged] = msgspec.field(default_factory=list)
    # Dropped ranges not yet carried by a request that a 200 answered.
    unreported: list[Tagged] = msgspec.field(default_factory=list)
    # Segment id -> unix ms when its last pending report was acknowledged: the replay window's start.
    acked_at: dict[int, int] = msgspec.field(default_factory=dict)
    # The agent's incarnation (docs/protocol.md): a random id made with the spool, so a wiped spool
    # (or another host's) starts a seq space of its own. "" in a spool made before incarnations.
    incarnation: str = ""
    # The first seq of the incarnation: 1, or the lowest pending seq when one was started because
    # the server answered a reused seq (409) and the reports held were kept with their seqs.
    first_seq: int = 1


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(SpoolState)


def load(directory: Path) -> SpoolState | None:
    """The stored state, or None if there is none yet. A damaged file is a :class:`StateError`."""
    data = cells.load(directory / NAME)
    if data is None:
        return None
    body, why = cells.open_sized_cell(MAGIC, data)
    if body is None:
        what = "not a spool state file" if why == "bad magic" else why
        raise StateError(f"{directory / NAME}: {what}")
    try:
        return _dec.decode(body)
    except msgspec.DecodeError as e:
        raise StateError(f"{directory / NAME}: {e}") from None


def save(directory: Path, st: SpoolState) -> None:
    if len(st.dropped) > MAX_DROPPED_RANGES:
        st.dropped = st.dropped[-MAX_DROPPED_RANGES:]
    body = _enc.encode(st)
    cells.replace(directory / NAME, cells.sized_cell(MAGIC, body))
