"""The journal's files: segment headers, records, the durable watermark, the writer's lock, and
the parsing of a segment (which bytes are trusted: see the package docstring)."""

from __future__ import annotations

import fcntl
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from lossproof.obs.logging import get
from lossproof.segments import state as cells
from lossproof.segments.framing import HEADER_SIZE, FileWindow, Framing, Status, Verdict, verdict
from lossproof.segments.lock import try_lock
from lossproof.segments.names import SegmentNames

log = get(__name__)

SEGMENT_MAGIC = b"LPFS"
RECORD_MAGIC = b"LPFR"
WATERMARK_MAGIC = b"LPFW"
VERSION = 1
_SEGMENT_HEADER_BODY = struct.Struct("<IIQQ")  # version, reserved, base, prev_end
_WATERMARK_BODY = struct.Struct("<QQ")  # segment base, position
NO_PREV = 2**64 - 1
MAX_PAYLOAD = 256 * 2**20
READ_CHUNK = 4 * 2**20
FRAMING = Framing(RECORD_MAGIC, max_payload=MAX_PAYLOAD)

__all__ = ["HEADER_SIZE"]

JOURNAL_DIR = "journal"
LOCK_FILE = "writer.lock"
WATERMARK_FILE = "durable"
SEGMENT_SUFFIX = ".jnl"


class JournalError(Exception):
    """A journal problem, with a one-line message."""


class JournalCorrupt(JournalError):
    """Acknowledged data is damaged: names the file and the byte where it starts."""

    def __init__(self, path: Path, pos: int, reason: str) -> None:
        super().__init__(f"journal corrupt: {path} at byte {pos}: {reason}")
        self.path = path
        self.pos = pos
        self.reason = reason


class JournalUnavailable(JournalError):
    """The journal cannot durably accept a record right now (write/fsync failed, disk full)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JournalLocked(JournalError):
    pass


class Entry(msgspec.Struct, array_like=True):
    """One received request, as stored. ``body`` is exactly what arrived on the wire."""

    tenant: str
    agent: str
    content_type: str
    encoding: str  # "" for identity
    seqs: list[tuple[int, int]]
    reports: int
    points: int
    body: bytes


_entry_enc = msgspec.msgpack.Encoder()
_entry_dec = msgspec.msgpack.Decoder(Entry)


def encode_entry(entry: Entry) -> bytes:
    return _entry_enc.encode(entry)


def decode_entry(data: bytes | memoryview) -> Entry:
    return _entry_dec.decode(data)


@dataclass(frozen=True, order=True, slots=True)
class Position:
    segment: int
    pos: int


@dataclass(frozen=True, slots=True)
class Record:
    segment: int
    pos: int
    end: int
    index: int
    received_ms: int
    entry: Entry

    @property
    def position(self) -> Position:
        return Position(self.segment, self.pos)

    @property
    def next_position(self) -> Position:
        return Position(self.segment, self.end)

    @property
    def size(self) -> int:
        return self.end - self.pos


@dataclass(frozen=True, slots=True)
class Boundary:
    """The reader left a segment whole and entered the next one."""

    left: int
    next_position: Position


@dataclass(frozen=True, slots=True)
class Skipped:
    """Damaged bytes ``[pos, end)`` of a segment that a reader with ``skip_damaged`` passed over: a
    damaged segment header (``pos`` 0), or the bytes from a record that is not valid (or does not
    decode) up to the next intact record numbered after the last good one (or the segment's end)."""

    segment: int
    path: Path
    pos: int
    end: int
    reason: str
    after_index: int  # the last intact record's index before these bytes (the segment's base - 1: none)
    next_index: int | None  # the intact record they end at; None: they run to the segment's end

    @property
    def next_position(self) -> Position:
        return Position(self.segment, self.end)

    @property
    def size(self) -> int:
        return self.end - self.pos


Item = Record | Boundary | Skipped


# --- files ---------------------------------------------------------------------------------------


def journal_dir(data_dir: Path) -> Path:
    return data_dir / JOURNAL_DIR


_SEGMENTS = SegmentNames(20, SEGMENT_SUFFIX)


def segment_path(directory: Path, base: int) -> Path:
    return _SEGMENTS.path(directory, base)


def list_segments(directory: Path) -> list[int]:
    return _SEGMENTS.list(directory)


def encode_segment_header(base: int, prev_end: int) -> bytes:
    return cells.cell(SEGMENT_MAGIC, _SEGMENT_HEADER_BODY.pack(VERSION, 0, base, prev_end))


def read_segment_header(path: Path, base: int) -> int:
    """The segment's ``prev_end``; raises JournalCorrupt if its header is not valid."""
    try:
        with open(path, "rb") as f:
            data = f.read(HEADER_SIZE)
    except FileNotFoundError:
        raise JournalError(f"{path}: segment vanished while reading (pruned?)") from None
    return check_segment_header(path, base, data)


def check_segment_header(path: Path, base: int, data: bytes) -> int:
    if len(data) < HEADER_SIZE:
        raise JournalCorrupt(path, 0, f"segment header is {len(data)} bytes, not {HEADER_SIZE}")
    if data[:4] != SEGMENT_MAGIC:
        raise JournalCorrupt(path, 0, "not a journal segment (bad magic)")
    body = cells.open_cell(SEGMENT_MAGIC, data[:HEADER_SIZE], _SEGMENT_HEADER_BODY.size)
    if body is None:
        raise JournalCorrupt(path, 0, "segment header CRC mismatch")
    version, _res, hbase, prev_end = _SEGMENT_HEADER_BODY.unpack(body)
    if version != VERSION:
        raise JournalCorrupt(path, 0, f"unknown segment version {version}")
    if hbase != base:
        raise JournalCorrupt(path, 0, f"header says base {hbase}, file name says {base}")
    return int(prev_end)


def encode_record(index: int, received_ms: int, payload: bytes) -> bytes:
    """The 32-byte header of a record (the payload follows it)."""
    return FRAMING.header(index, received_ms, 0, payload)


def watermark_cell(directory: Path) -> cells.InPlaceCell:
    """The journal's durable watermark: rewritten in place after every fsync, itself not fsync'd."""
    return cells.InPlaceCell(directory / WATERMARK_FILE, WATERMARK_MAGIC, _WATERMARK_BODY, fsync=False)


def encode_watermark(base: int, pos: int) -> bytes:
    return cells.cell(WATERMARK_MAGIC, _WATERMARK_BODY.pack(base, pos))


def read_watermark(directory: Path) -> Position | None:
    v = watermark_cell(directory).read(tries=1)
    return None if v is None else Position(v[0], v[1])


def writer_live(directory: Path) -> bool:
    """True while a receiver holds the journal's writer lock."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our shared lock, if we got it
    return False


def acquire_writer_lock(directory: Path, wait: float = 3.0) -> int:
    deadline = time.monotonic() + wait
    while True:
        fd, other = try_lock(directory / LOCK_FILE)
        if fd is not None:
            return fd
        # a reader probing liveness holds a shared lock for microseconds: retry a little
        if time.monotonic() >= deadline:
            raise JournalLocked(
                f"another fallback receiver (pid {other}) is writing the journal at {directory}"
            )
        time.sleep(0.02)


# --- parsing -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Parsed:
    ok: bool
    index: int = 0
    received_ms: int = 0
    end: int = 0
    payload: bytes | memoryview = b""
    reason: str = ""
    incomplete: bool = False


def _parse(win: FileWindow, pos: int, limit: int | None, prev_index: int) -> _Parsed:
    """The record at ``pos``, CRC-checked. ``limit``: the trusted end (records may not cross it)."""
    if limit is not None and pos + HEADER_SIZE > limit:
        return _Parsed(False, reason="end of data inside a record header", incomplete=True)
    r = FRAMING.read_record(win, pos, limit=limit)
    h = r.header
    if r.status is not Status.OK or h is None:
        reason = r.reason
        if limit is not None and h is not None and h.end > limit:
            reason = f"record crosses the durable end {limit}"
        return _Parsed(False, reason=reason, incomplete=r.status is Status.INCOMPLETE)
    if h.number <= prev_index:
        return _Parsed(False, reason=f"index {h.number} not after {prev_index}")
    return _Parsed(True, h.number, h.ts_ms, h.end, r.payload)


@dataclass(frozen=True, slots=True)
class TailScan:
    """The last segment, walked from its header to the first position that is not a valid record."""

    path: Path
    base: int
    count: int
    last_index: int | None
    valid_end: int
    size: int
    bad_pos: int | None
    bad_reason: str
    valid_after: int | None  # a valid record after bad_pos


def scan_tail(path: Path, base: int, verify_until: int) -> TailScan:
    """Scan a last segment; raises JournalCorrupt if it is bad before ``verify_until`` (the bytes
    the durable watermark vouches for: :func:`lossproof.segments.framing.verdict`)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        check_segment_header(path, base, os.pread(fd, HEADER_SIZE, 0))
        sc = FRAMING.scan(FileWindow(fd, READ_CHUNK), start=HEADER_SIZE, after=base - 1)
    finally:
        os.close(fd)
    if verdict(sc, durable_pos=verify_until) in (Verdict.LOST, Verdict.CORRUPT):
        where = sc.bad_pos if sc.bad_pos is not None else sc.file_size
        why = sc.bad_reason if sc.bad_pos is not None else "file ends"
        raise JournalCorrupt(
            path, where, f"{why}, before the durable watermark at byte {verify_until} (acknowledged data)"
        )
    after = sc.valid_after.pos if sc.valid_after is not None else None
    return TailScan(path, base, sc.count, sc.last, sc.end_pos, sc.file_size, sc.bad_pos, sc.bad_reason, after)


