"""The durable seq counter: a high-water mark H such that no seq above H was ever handed out.

The spool's records carry their seqs, but records can be lost after the fact (a torn tail, a disk
that loses fsync'd data as the log in the second post-mortem did). If the agent then resumed at
"highest seq found + 1" it would hand out a seq the server may already hold, and the server, storing
a report once per (agent, seq), would silently drop the new report. So H is kept apart from the data.

File ``seq``: two 24-byte slots, written alternately with pwrite + fsync, so a torn write of one
leaves the other intact; the valid slot with the higher value wins::

    0  4  magic b"LPSQ"   4  4  crc32 of bytes 8..24   8  8  high-water mark   16  8  generation
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

MAGIC = b"LPSQ"
SLOT = struct.Struct("<4sIQQ")
NAME = "seq"


def _decode(buf: bytes) -> tuple[int, int] | None:
    if len(buf) < SLOT.size:
        return None
    magic, crc, value, gen = SLOT.unpack(buf[: SLOT.size])
    if magic != MAGIC or zlib.crc32(buf[8 : SLOT.size]) != crc:
        return None
    return value, gen


class SeqCounter:
    def __init__(self, directory: Path) -> None:
        self.path = directory / NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        slots = [_decode(os.pread(self._fd, SLOT.size, i * SLOT.size)) for i in (0, 1)]
        valid = [s for s in slots if s is not None]
        self.value = max((v for v, _ in valid), default=0)
        self._gen = max((g for _, g in valid), default=0)
        # A killed agent may have written a slot and died before its fsync: it reads back from the
        # page cache, and advance() would skip a value that is not higher. Sync it now, or a power
        # cut after this start takes it back.
        os.fsync(self._fd)

    def advance(self, value: int) -> None:
        """Durably record that seqs up to ``value`` have been handed out (no-op if not higher)."""
        if value <= self.value:
            return
        self._gen += 1
        body = struct.pack("<QQ", value, self._gen)
        slot = MAGIC + struct.pack("<I", zlib.crc32(body)) + body
        os.pwrite(self._fd, slot, (self._gen % 2) * SLOT.size)
        os.fsync(self._fd)
        self.value = value

    def close(self) -> None:
        os.close(self._fd)
