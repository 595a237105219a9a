"""Small CRC'd state files, written once for every durable file kind.

Every small state file lossproof keeps is one of three shapes, all built from one *cell*: four
bytes of magic, the zlib.crc32 of the body, then the body (``sized`` cells put the body length
between the CRC and the body, for variable-length bodies)::

    0  4  magic    4  4  crc32(body)    [8  4  len(body)]    .  body

* :func:`replace` / :func:`load` — a whole file replaced atomically (temp file, fsync, rename,
  fsync of the directory): after a crash or power cut it holds the old content or the new, never a
  mix. The spool's ``state`` (``LPST``, sized), the log's seals (``LPS1``).
* :class:`InPlaceCell` — a fixed-size cell rewritten in place with ``pwrite`` (fsync'd or not);
  a torn write shows as a CRC mismatch. The log's durable watermark (``LPW1``, fsync'd after every
  group, with fdatasync) and the journal's (``LPFW``, a hint, not fsync'd).
* :class:`TwoSlotCounter` — a monotonic counter in two alternating slots, so a torn write of one
  leaves the other intact; the valid slot with the higher value wins. The spool's seq high-water
  mark (``LPSQ``).

Files written before this module existed are exactly these bytes, so they read unchanged.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

from lossproof.segments.fs import FS, REAL

_CRC = struct.Struct("<I")
_SIZED = struct.Struct("<II")


def cell(magic: bytes, body: bytes) -> bytes:
    """``magic + crc32(body) + body``."""
    return magic + _CRC.pack(zlib.crc32(body)) + body


def open_cell(magic: bytes, data: bytes | memoryview, body_size: int | None = None) -> bytes | None:
    """The body of a cell, or None if the magic or CRC is wrong (or the size is not ``body_size``)."""
    if len(data) < 8 or (body_size is not None and len(data) != 8 + body_size):
        return None
    if bytes(data[:4]) != magic:
        return None
    body = bytes(data[8:])
    if _CRC.unpack_from(data, 4)[0] != zlib.crc32(body):
        return None
    return body


def sized_cell(magic: bytes, body: bytes) -> bytes:
    """``magic + crc32(body) + len(body) + body`` (variable-length bodies)."""
    return magic + _SIZED.pack(zlib.crc32(body), len(body)) + body


def open_sized_cell(magic: bytes, data: bytes) -> tuple[bytes | None, str]:
    """(body, "") of a sized cell, or (None, why not)."""
    if len(data) < 12 or data[:4] != magic:
        return None, "bad magic"
    crc, length = _SIZED.unpack_from(data, 4)
    body = data[12 : 12 + length]
    if len(body) != length or zlib.crc32(body) != crc:
        return None, "checksum mismatch"
    return body, ""


def replace(path: Path, data: bytes, *, fsync: bool = True, tmp: Path | None = None, fs: FS = REAL) -> None:
    """Atomically (and, with ``fsync``, durably) replace the file at ``path`` (``tmp``: the temporary
    name, when several processes may replace the same file at once)."""
    fs.write_atomic(path, data, fsync=fsync, tmp=tmp)


def json_cell(key: str, body: bytes) -> bytes:
    """A JSON state file: ``{"KEY": BODY, "crc32": crc32(BODY)}`` (the log's consumer offsets)."""
    return b'{"' + key.encode() + b'": ' + body + b', "crc32": ' + str(zlib.crc32(body)).encode() + b"}\n"


def load(path: Path) -> bytes | None:
    """A state file's bytes, or None if there is none."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class InPlaceCell:
    """A fixed-size cell rewritten in place at byte 0 of its own file."""

    def __init__(self, path: Path, magic: bytes, body: struct.Struct, *, fsync: bool) -> None:
        self.path = path
        self.magic = magic
        self.body = body
        self.size = 8 + body.size
        self.fsync = fsync
        self.fd: int | None = None
        self.created = False

    def open(self) -> None:
        """Open (creating) the file for writing; ``created`` says whether it is new."""
        if self.fd is None:
            self.created = not self.path.exists()
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, *values: int) -> None:
        self.open()
        assert self.fd is not None
        data = cell(self.magic, self.body.pack(*values))
        if os.pwrite(self.fd, data, 0) != len(data):
            raise OSError(errno.EIO, f"short write of {self.path}")
        if self.fsync:
            # fdatasync: the cell's bytes and the file's size are all a read needs (the log's
            # watermark, after every group: fsync also journalled the mtime, 0.1-0.2 ms a group)
            os.fdatasync(self.fd)

    def read_fd(self, fd: int) -> tuple[int, ...] | None:
        body = open_cell(self.magic, os.pread(fd, self.size, 0), self.body.size)
        return None if body is None else tuple(int(v) for v in self.body.unpack(body))

    def read(self, *, tries: int = 3) -> tuple[int, ...] | None:
        """The values, or None if missing or unreadable (a read racing the writer is retried)."""
        if self.fd is not None:
            return self.read_fd(self.fd)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            for _ in range(tries):
                v = self.read_fd(fd)
                if v is not None:
                    return v
            return None
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


SLOT = struct.Struct("<4sIQQ")
_SLOT_BODY = struct.Struct("<QQ")


def decode_slot(magic: bytes, buf: bytes) -> tuple[int, int] | None:
    """(value, generation) of one :class:`TwoSlotCounter` slot, or None if it is not valid."""
    body = open_cell(magic, buf[: SLOT.size], _SLOT_BODY.size)
    if body is None:
        return None
    value, gen = _SLOT_BODY.unpack(body)
    return int(value), int(gen)


class TwoSlotCounter:
    """A durable high-water mark in two alternating 24-byte slots::

    0  4  magic   4  4  crc32 of bytes 8..24   8  8  value   16  8  generation
    """

    SLOT = SLOT

    def __init__(self, path: Path, magic: bytes) -> None:
        self.path = path
        self.magic = magic
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        slots = [self.decode(os.pread(self._fd, self.SLOT.size, i * self.SLOT.size)) for i in (0, 1)]
        valid = [s for s in slots if s is not None]
        self.value = max((v for v, _ in valid), default=0)
        self._gen = max((g for _, g in valid), default=0)
        # A killed process may have written a slot and died before its fsync: it reads back from
        # the page cache, and advance() would skip a value that is not higher. Sync it now, or a
        # power cut after this start takes it back.
        os.fsync(self._fd)

    def decode(self, buf: bytes) -> tuple[int, int] | None:
        return decode_slot(self.magic, buf)

    def advance(self, value: int) -> None:
        """Durably record ``value`` (no-op if not higher than the current one)."""
        if value <= self.value:
            return
        self._gen += 1
        slot = cell(self.magic, _SLOT_BODY.pack(value, self._gen))
        os.pwrite(self._fd, slot, (self._gen % 2) * SLOT.size)
        os.fsync(self._fd)
        self.value = value

    def close(self) -> None:
        os.close(self._fd)
