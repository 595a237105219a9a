"""On-disk format of the embedded log: segment files, records, seals, and scanning them.

Directory layout (one directory per partition ``p0`` .. ``p{N-1}``, see docs/log.md)::

    DIR/writer.lock                 partition 0's writer lock: flock'd by the process writing p0
                                    (the single-partition layout's lock, kept so old dirs still work)
    DIR/p{i}/writer.lock            partition i's writer lock (i >= 1)
    DIR/p{i}/{base:020d}.seg        segment: records with offsets >= base, strictly increasing
    DIR/p{i}/{base:020d}.seal       written (durably) when the writer leaves that segment
    DIR/p{i}/durable                the durable watermark: every offset below it is fsync'd
    DIR/consumers/{group}.lock      flock'd by the reader of the group that owns partition 0
    DIR/consumers/{group}@p{i}.lock flock'd by the reader of the group that owns partition i (i >= 1)
    DIR/consumers/{group}@commit.lock  held (blocking, briefly) around each update of the offsets file
    DIR/consumers/{group}@m{token}.lock  held by each open reader of the group; mtime = its heartbeat
    DIR/consumers/{group}.offset    the group's committed offsets, all partitions (atomic, durable)

Lock files hold ``pid`` (writer) or ``pid token`` (reader) of the holder; only the flock counts.
``@`` cannot appear in a group name, so these names never collide with another group's files.

Record: a :mod:`lossproof.segments.framing` frame with magic ``b"LPR1"`` whose ``aux`` is the key
length and whose ``number`` is the offset (byte for byte the format written before that module
existed; all integers little-endian, 32-byte header then key then value)::

    0   4  magic         b"LPR1"
    4   4  crc           zlib.crc32 (IEEE CRC-32) over bytes 8..32 of the header, then key, then value
    8   4  length        len(key) + len(value)
    12  4  key_length    len(key)
    16  8  offset        u64 record offset (dense inside a segment as written; gaps only after damage)
    24  8  timestamp_ms  i64 append time, unix ms
    32  .  key, value

A record is *valid* when the magic matches, ``key_length <= length <= MAX_PAYLOAD``, the whole record
is present and the CRC matches. Scanning stops at the first position that does not hold a valid record;
whether that is a torn tail or corruption is :func:`lossproof.segments.framing.verdict` (seal and
durable watermark are the marks that vouch for bytes and offsets).

Seal (``{base:020d}.seal``, 40 bytes, a :mod:`lossproof.segments.state` cell replaced atomically)::

    0   4  magic         b"LPS1"
    4   4  crc           zlib.crc32 over bytes 8..40
    8   8  end_pos       bytes of the segment file that hold its records; bytes after it are not trusted
    16  8  next_offset   first offset that is NOT durably in this segment
    24  8  reserved_next offsets [next_offset, reserved_next) were handed to appends that failed
                         (write/fsync error) and never became durable: not a gap, nothing to recover
    32  8  sealed_ms     when the seal was written

The writer seals a segment before it creates the next one. A normal roll seals with
``end_pos = file size`` and ``next_offset = reserved_next = next base``; a roll after a failed
write or fsync seals at the last successfully fsync'd byte, so the failed tail is never read.

Durable watermark (``durable``, 16 bytes, a :mod:`lossproof.segments.state` cell, rewritten in
place with pwrite and fsync'd after each group's data, before the group is acknowledged, so every
acknowledged offset is below it after a power cut)::

    0   4  magic b"LPW1"   4  4  crc over bytes 8..16   8  8  next durable offset
"""

from __future__ import annotations

import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from lossproof.obs.logging import get
from lossproof.segments import state as cells
from lossproof.segments.framing import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    FileWindow,
    Framing,
    Header,
    Parsed,
    Scan,
    Status,
)
from lossproof.segments.fs import FS, REAL
from lossproof.segments.names import SegmentNames

__all__ = ["HEADER_SIZE", "MAX_PAYLOAD", "FileWindow", "Header", "Parsed", "Scan", "Status"]

MAGIC = b"LPR1"

SEAL_MAGIC = b"LPS1"
WATERMARK_MAGIC = b"LPW1"
WATERMARK_SIZE = 16

SEGMENT_SUFFIX = ".seg"
SEAL_SUFFIX = ".seal"
WATERMARK_FILE = "durable"


WRITER_LOCK = "writer.lock"
_PARTITION_RE = re.compile(r"^p(\d{1,6})$")


def partition_dir(directory: Path, partition: int = 0) -> Path:
    return directory / f"p{partition}"


def writer_lock_path(directory: Path, partition: int) -> Path:
    """Partition 0 keeps the single-partition layout's ``DIR/writer.lock``; others lock in their dir."""
    if partition == 0:
        return directory / WRITER_LOCK
    return partition_dir(directory, partition) / WRITER_LOCK


def list_partitions(directory: Path) -> list[int]:
    """Numbers of the partition directories that exist under ``directory``, ascending."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _PARTITION_RE.match(name)
        if m and (directory / name).is_dir():
            out.append(int(m.group(1)))
    out.sort()
    return out


_SEGMENTS = SegmentNames(20, SEGMENT_SUFFIX)
_SEALS = SegmentNames(20, SEAL_SUFFIX)


def segment_path(pdir: Path, base: int) -> Path:
    return _SEGMENTS.path(pdir, base)


def seal_path(pdir: Path, base: int) -> Path:
    return _SEALS.path(pdir, base)


def list_segments(pdir: Path) -> list[int]:
    """Base offsets of the segment files in ``pdir``, ascending ([] if the directory is missing)."""
    return _SEGMENTS.list(pdir)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- records -------------------------------------------------------------------------------------


def _check_key_length(key_length: int, length: int) -> str | None:
    return f"key length {key_length} > record length {length}" if key_length > length else None


FRAMING = Framing(MAGIC, max_payload=MAX_PAYLOAD, check_aux=_check_key_length)


def encode_header(offset: int, timestamp_ms: int, key: bytes, value: bytes) -> bytes:
    return FRAMING.header(offset, timestamp_ms, len(key), key, value)


def encode_record(offset: int, timestamp_ms: int, key: bytes, value: bytes) -> bytes:
    return encode_header(offset, timestamp_ms, key, value) + key + value


def key_value(p: Parsed) -> tuple[bytes, bytes]:
    """The key and value of a record read with its payload (the frame's ``aux`` is the key length)."""
    assert p.header is not None
    k = p.header.aux
    return bytes(p.payload[:k]), bytes(p.payload[k:])


def read_header(win: FileWindow, pos: int, *, fresh: bool = False) -> Parsed:
    """Parse (but do not CRC-check) the header at ``pos``."""
    return FRAMING.read_header(win, pos, fresh=fresh)


def read_record(win: FileWindow, pos: int, *, want_payload: bool = True, limit: int | None = None) -> Parsed:
    """Parse and CRC-check the record at ``pos`` (see :meth:`Framing.read_record`); split the
    payload with :func:`key_value`. ``limit`` is a seal's end_pos."""
    return FRAMING.read_record(win, pos, want_payload=want_payload, limit=limit)


def find_valid_after(
    win: FileWindow, pos: int, end: int, *, min_offset: int = -1
) -> tuple[Header | None, int]:
    return FRAMING.find_valid_after(win, pos, end, min_number=min_offset)


# --- whole-segment scan (recovery) ---------------------------------------------------------------


def scan_segment(path: Path, base: int, *, verify_crc: bool = True, limit: int | None = None) -> Scan:
    """Walk the records of one segment file from byte 0 up to ``limit`` (default: the file end).

    With ``verify_crc=False`` only headers are checked (cheap: one read per chunk, payloads
    skipped). Offsets must be >= base and strictly increasing. Whether a bad spot is a torn tail or
    corruption is :func:`lossproof.segments.framing.verdict`.
    """
    return FRAMING.scan_path(path, after=base - 1, limit=limit, verify_crc=verify_crc)


# --- seals ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seal:
    end_pos: int
    next_offset: int
    reserved_next: int
    sealed_ms: int


_SEAL_BODY = struct.Struct("<QQQq")


def encode_seal(seal: Seal) -> bytes:
    body = _SEAL_BODY.pack(seal.end_pos, seal.next_offset, seal.reserved_next, seal.sealed_ms)
    return cells.cell(SEAL_MAGIC, body)


def decode_seal(data: bytes) -> Seal | None:
    body = cells.open_cell(SEAL_MAGIC, data, _SEAL_BODY.size)
    if body is None:
        return None
    seal = Seal(*_SEAL_BODY.unpack(body))
    return None if seal.reserved_next < seal.next_offset else seal


class BadSeal(Exception):
    pass


def read_seal(pdir: Path, base: int) -> Seal | None:
    """The segment's seal, None if it has none; raises BadSeal if the file is damaged."""
    data = cells.load(seal_path(pdir, base))
    if data is None:
        return None
    seal = decode_seal(data)
    if seal is None:
        raise BadSeal(f"{seal_path(pdir, base)}: damaged seal ({len(data)} bytes)")
    return seal


def read_seal_or_none(pdir: Path, base: int) -> Seal | None:
    """The segment's seal; None if it has none or it is damaged (logged: the segment is then read as
    an unsealed one, up to its first bad record)."""
    try:
        return read_seal(pdir, base)
    except BadSeal as e:
        get("lossproof.log.embedded").warning("log.seal_damaged", error=str(e))
        return None


def write_seal(pdir: Path, base: int, seal: Seal, *, fsync: bool = True, fs: FS = REAL) -> None:
    """Durably write a seal: tmp file, fsync, rename, fsync the directory."""
    cells.replace(seal_path(pdir, base), encode_seal(seal), fsync=fsync, fs=fs)


# --- durable watermark ---------------------------------------------------------------------------

_WATERMARK_BODY = struct.Struct("<Q")


def watermark_cell(pdir: Path) -> cells.InPlaceCell:
    """The partition's durable watermark file, rewritten in place and fsync'd after each group."""
    return cells.InPlaceCell(pdir / WATERMARK_FILE, WATERMARK_MAGIC, _WATERMARK_BODY, fsync=True)


def encode_watermark(value: int) -> bytes:
    return cells.cell(WATERMARK_MAGIC, _WATERMARK_BODY.pack(value))


def decode_watermark(data: bytes) -> int | None:
    body = cells.open_cell(WATERMARK_MAGIC, data, _WATERMARK_BODY.size)
    return None if body is None else int(_WATERMARK_BODY.unpack(body)[0])


def read_watermark_fd(fd: int) -> int | None:
    return decode_watermark(os.pread(fd, WATERMARK_SIZE, 0))


def read_watermark(pdir: Path) -> int | None:
    """The partition's durable watermark (None if missing or unreadable right now)."""
    v = watermark_cell(pdir).read()
    return None if v is None else v[0]
