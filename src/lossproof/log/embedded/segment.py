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

Record (all integers little-endian, 32-byte header then key then value)::

    0   4  magic         b"LPR1"
    4   4  crc           zlib.crc32 (IEEE CRC-32) over bytes 8..32 of the header, then key, then value
    8   4  length        len(key) + len(value)
    12  4  key_length    len(key)
    16  8  offset        u64 record offset (dense inside a segment as written; gaps only after damage)
    24  8  timestamp_ms  i64 append time, unix ms
    32  .  key, value

A record is *valid* when the magic matches, ``key_length <= length <= MAX_PAYLOAD``, the whole record
is present and the CRC matches. Scanning stops at the first position that does not hold a valid record;
whether that is a torn tail (nothing valid after it) or corruption (a valid record further on, found by
searching for the magic) is decided by :func:`scan_segment`.

Seal (``{base:020d}.seal``, 40 bytes)::

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

Durable watermark (``durable``, 16 bytes, rewritten in place with pwrite and fsync'd after each group's data,
before the group is acknowledged, so every acknowledged offset is below it after a power cut)::

    0   4  magic b"LPW1"   4  4  crc over bytes 8..16   8  8  next durable offset
"""

from __future__ import annotations

import enum
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from lossproof.durable import write_atomic

MAGIC = b"LPR1"
HEADER = struct.Struct("<4sIIIQq")
HEADER_SIZE = HEADER.size  # 32
_HEADER_TAIL = struct.Struct("<IIQq")  # the CRC'd part of the header: length, key_length, offset, ts
MAX_PAYLOAD = 256 * 2**20
READ_CHUNK = 1 << 20

SEAL_MAGIC = b"LPS1"
SEAL = struct.Struct("<4sIQQQq")
WATERMARK_MAGIC = b"LPW1"
WATERMARK = struct.Struct("<4sIQ")

SEGMENT_SUFFIX = ".seg"
SEAL_SUFFIX = ".seal"
WATERMARK_FILE = "durable"
_SEGMENT_RE = re.compile(r"^(\d{20})\.seg$")


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


def segment_path(pdir: Path, base: int) -> Path:
    return pdir / f"{base:020d}{SEGMENT_SUFFIX}"


def seal_path(pdir: Path, base: int) -> Path:
    return pdir / f"{base:020d}{SEAL_SUFFIX}"


def list_segments(pdir: Path) -> list[int]:
    """Base offsets of the segment files in ``pdir``, ascending ([] if the directory is missing)."""
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return []
    bases = []
    for name in names:
        m = _SEGMENT_RE.match(name)
        if m:
            bases.append(int(m.group(1)))
    bases.sort()
    return bases


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- records -------------------------------------------------------------------------------------


def encode_header(offset: int, timestamp_ms: int, key: bytes, value: bytes) -> bytes:
    tail = _HEADER_TAIL.pack(len(key) + len(value), len(key), offset, timestamp_ms)
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(tail)))
    return MAGIC + crc.to_bytes(4, "little") + tail


def encode_record(offset: int, timestamp_ms: int, key: bytes, value: bytes) -> bytes:
    return encode_header(offset, timestamp_ms, key, value) + key + value


@dataclass(frozen=True, slots=True)
class Header:
    pos: int  # byte position of the record in its file
    crc: int
    length: int
    key_length: int
    offset: int
    timestamp_ms: int

    @property
    def size(self) -> int:
        return HEADER_SIZE + self.length

    @property
    def end(self) -> int:
        return self.pos + HEADER_SIZE + self.length


class Status(enum.Enum):
    OK = "ok"
    INCOMPLETE = "incomplete"  # the file ends inside this record (or exactly here)
    BAD = "bad"  # bytes here are not a valid record


def check_header(magic: bytes, length: int, key_length: int) -> str | None:
    """Why a header is implausible, or None."""
    if magic != MAGIC:
        return "bad magic"
    if length > MAX_PAYLOAD:
        return f"record length {length} too large"
    if key_length > length:
        return f"key length {key_length} > record length {length}"
    return None


class FileWindow:
    """Buffered positional reads of one file: few big ``pread`` calls, no per-field syscalls.

    Only bytes returned for a *complete, CRC-valid* record may be served from the cache later;
    callers re-read (``fresh=True``) before concluding that a record is incomplete or bad, because a
    recovering writer may have replaced a torn tail the cache still holds.
    """

    def __init__(self, fd: int, chunk: int = READ_CHUNK) -> None:
        self.fd = fd
        self.chunk = chunk
        self._buf = b""
        self._start = 0

    def get(self, pos: int, n: int, *, fresh: bool = False) -> memoryview | None:
        """Exactly ``n`` bytes at ``pos``, or None if the file is shorter."""
        rel = pos - self._start
        if fresh or rel < 0 or rel + n > len(self._buf):
            self._buf = os.pread(self.fd, max(n, self.chunk), pos)
            self._start = pos
            rel = 0
            if len(self._buf) < n:
                return None
        return memoryview(self._buf)[rel : rel + n]

    def drop(self) -> None:
        self._buf = b""

    def size(self) -> int:
        return os.fstat(self.fd).st_size


@dataclass(frozen=True, slots=True)
class Parsed:
    status: Status
    header: Header | None = None
    key: bytes = b""
    value: bytes = b""
    reason: str = ""


def read_header(win: FileWindow, pos: int, *, fresh: bool = False) -> Parsed:
    """Parse (but do not CRC-check) the header at ``pos``."""
    mv = win.get(pos, HEADER_SIZE, fresh=fresh)
    if mv is None:
        return Parsed(Status.INCOMPLETE, reason="end of file")
    magic, crc, length, key_length, offset, ts = HEADER.unpack_from(mv)
    why = check_header(magic, length, key_length)
    if why:
        return Parsed(Status.BAD, reason=why)
    return Parsed(Status.OK, Header(pos, crc, length, key_length, offset, ts))


def read_record(win: FileWindow, pos: int, *, want_payload: bool = True, limit: int | None = None) -> Parsed:
    """Parse and CRC-check the record at ``pos``; returns key and value if ``want_payload``.

    ``limit`` is the end of the trusted part of the file (a seal's end_pos): a record crossing it is
    INCOMPLETE. Non-OK results are always confirmed with a fresh read.
    """
    for fresh in (False, True):
        p = read_header(win, pos, fresh=fresh)
        if p.status is not Status.OK:
            if fresh:
                return p
            continue
        h = p.header
        assert h is not None
        if limit is not None and h.end > limit:
            return Parsed(Status.INCOMPLETE, h, reason=f"record crosses the sealed end {limit}")
        mv = win.get(pos, h.size, fresh=fresh)
        if mv is None:
            if fresh:
                return Parsed(Status.INCOMPLETE, h, reason="end of file inside the record")
            continue
        crc = zlib.crc32(mv[HEADER_SIZE:], zlib.crc32(mv[8:HEADER_SIZE]))
        if crc != h.crc:
            if fresh:
                return Parsed(Status.BAD, h, reason="CRC mismatch")
            continue
        if not want_payload:
            return Parsed(Status.OK, h)
        k0 = HEADER_SIZE
        k1 = k0 + h.key_length
        return Parsed(Status.OK, h, bytes(mv[k0:k1]), bytes(mv[k1:]))
    raise AssertionError("unreachable")


def find_valid_after(
    win: FileWindow, pos: int, end: int, *, min_offset: int = -1
) -> tuple[Header | None, int]:
    """Search ``[pos, end)`` for the first CRC-valid record with offset >= ``min_offset``.

    Returns (header or None, position the search reached). Candidates that are not valid (a magic
    inside a payload, a torn record) are skipped.
    """
    end = min(end, win.size())
    p = pos
    while p + HEADER_SIZE <= end:
        want = min(end - p, READ_CHUNK)
        mv = win.get(p, want, fresh=True)
        if mv is None:
            break
        i = bytes(mv).find(MAGIC)
        if i < 0:
            p += max(1, want - (len(MAGIC) - 1))
            continue
        cand = p + i
        r = read_record(win, cand, want_payload=False, limit=end)
        if r.status is Status.OK and r.header is not None and r.header.offset >= min_offset:
            return r.header, cand
        p = cand + 1
    return None, p


# --- whole-segment scan (recovery) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanResult:
    path: Path
    base: int
    count: int
    first_offset: int | None
    last_offset: int | None
    end_pos: int  # end of the last valid record (where a clean file would end)
    file_size: int
    bad_pos: int | None  # first byte that is not a valid record, if any before the file end
    bad_reason: str
    valid_after: Header | None  # a valid record found after bad_pos: corruption, not a torn tail

    @property
    def next_offset(self) -> int:
        return self.base if self.last_offset is None else self.last_offset + 1


def scan_segment(path: Path, base: int, *, verify_crc: bool = True, limit: int | None = None) -> ScanResult:
    """Walk the records of one segment file from byte 0 up to ``limit`` (default: the file end).

    With ``verify_crc=False`` only headers are checked (cheap: one read per chunk, payloads
    skipped). Offsets must be >= base and strictly increasing.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        win = FileWindow(fd)
        size = win.size()
        end = size if limit is None else min(limit, size)
        pos = 0
        count = 0
        first: int | None = None
        last: int | None = None
        bad_pos: int | None = None
        bad_reason = ""
        while pos < end:
            if verify_crc:
                r = read_record(win, pos, want_payload=False, limit=end)
            else:
                r = read_header(win, pos)
                if r.status is Status.OK and r.header is not None and r.header.end > end:
                    r = Parsed(Status.INCOMPLETE, r.header, reason="end of file inside the record")
            h = r.header
            if r.status is Status.OK and h is not None:
                prev = base - 1 if last is None else last
                if h.offset <= prev:
                    r = Parsed(Status.BAD, h, reason=f"offset {h.offset} not after {prev}")
            if r.status is not Status.OK or h is None:
                bad_pos, bad_reason = pos, r.reason
                break
            count += 1
            if first is None:
                first = h.offset
            last = h.offset
            pos = h.end
        valid_after = None
        if bad_pos is not None:
            min_off = base if last is None else last + 1
            valid_after, _ = find_valid_after(win, bad_pos + 1, end, min_offset=min_off)
        return ScanResult(path, base, count, first, last, pos, size, bad_pos, bad_reason, valid_after)
    finally:
        os.close(fd)


# --- seals ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seal:
    end_pos: int
    next_offset: int
    reserved_next: int
    sealed_ms: int


def encode_seal(seal: Seal) -> bytes:
    tail = struct.pack("<QQQq", seal.end_pos, seal.next_offset, seal.reserved_next, seal.sealed_ms)
    return SEAL_MAGIC + zlib.crc32(tail).to_bytes(4, "little") + tail


def decode_seal(data: bytes) -> Seal | None:
    if len(data) != SEAL.size:
        return None
    magic, crc, end_pos, next_offset, reserved_next, sealed_ms = SEAL.unpack(data)
    if magic != SEAL_MAGIC or crc != zlib.crc32(data[8:]) or reserved_next < next_offset:
        return None
    return Seal(end_pos, next_offset, reserved_next, sealed_ms)


class BadSeal(Exception):
    pass


def read_seal(pdir: Path, base: int) -> Seal | None:
    """The segment's seal, None if it has none; raises BadSeal if the file is damaged."""
    try:
        data = seal_path(pdir, base).read_bytes()
    except FileNotFoundError:
        return None
    seal = decode_seal(data)
    if seal is None:
        raise BadSeal(f"{seal_path(pdir, base)}: damaged seal ({len(data)} bytes)")
    return seal


def write_seal(pdir: Path, base: int, seal: Seal, *, fsync: bool = True) -> None:
    """Durably write a seal: tmp file, fsync, rename, fsync the directory."""
    write_atomic(seal_path(pdir, base), encode_seal(seal), fsync=fsync)


# --- durable watermark ---------------------------------------------------------------------------


def encode_watermark(value: int) -> bytes:
    tail = struct.pack("<Q", value)
    return WATERMARK_MAGIC + zlib.crc32(tail).to_bytes(4, "little") + tail


def decode_watermark(data: bytes) -> int | None:
    if len(data) != WATERMARK.size:
        return None
    magic, crc, value = WATERMARK.unpack(data)
    if magic != WATERMARK_MAGIC or crc != zlib.crc32(data[8:]):
        return None
    return int(value)


def read_watermark_fd(fd: int) -> int | None:
    return decode_watermark(os.pread(fd, WATERMARK.size, 0))


def read_watermark(pdir: Path) -> int | None:
    """The partition's durable watermark (None if missing or unreadable right now)."""
    try:
        fd = os.open(pdir / WATERMARK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        for _ in range(3):  # a read racing the writer's pwrite may be torn; the CRC tells
            v = read_watermark_fd(fd)
            if v is not None:
                return v
        return None
    finally:
        os.close(fd)
