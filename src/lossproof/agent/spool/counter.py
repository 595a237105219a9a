"""The durable seq counter: a high-water mark H such that no seq above H was ever handed out.

The spool's records carry their seqs, but records can be lost after the fact (a torn tail, a disk
that loses fsync'd data as the log in the second post-mortem did). If the agent then resumed at
"highest seq found + 1" it would hand out a seq the server may already hold, and the server, storing
a report once per (agent, seq), would silently drop the new report. So H is kept apart from the data.

File ``seq``: a :class:`lossproof.segments.state.TwoSlotCounter` with magic ``b"LPSQ"`` (two 24-byte
slots written alternately with pwrite + fsync; the valid slot with the higher value wins)::

    0  4  magic b"LPSQ"   4  4  crc32 of bytes 8..24   8  8  high-water mark   16  8  generation
"""

from __future__ import annotations

from pathlib import Path

from lossproof.segments.state import SLOT, TwoSlotCounter, decode_slot

MAGIC = b"LPSQ"
NAME = "seq"

__all__ = ["MAGIC", "NAME", "SLOT", "SeqCounter", "_decode"]


def _decode(buf: bytes) -> tuple[int, int] | None:
    return decode_slot(MAGIC, buf)


class SeqCounter(TwoSlotCounter):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory / NAME, MAGIC)
