"""The fallback receiver's journal: append-only, CRC-checked segment files of received requests.

A request is answered 200 only after its record is written *and* fdatasync'd (group commit: one
write + one fsync for every request that arrived while the previous fsync ran). Nothing here knows
about a log, a store or a worker: the journal is the fallback's only state.

Layout of ``D/journal``::

    writer.lock          flock'd (exclusive) by the one receiver writing the journal; holds its pid
    durable              durable watermark: (segment base, byte position) fsync'd so far
    {base:020d}.jnl      segment: header, then records; ``base`` is the index of its first record

All integers are little-endian.

Segment header (32 bytes, a :mod:`lossproof.segments.state` cell)::

    0   4  magic     b"LPFS"
    4   4  crc       zlib.crc32 over bytes 8..32
    8   4  version   1
    12  4  reserved  0
    16  8  base      index of the first record of this segment
    24  8  prev_end  bytes of the *previous* segment that hold durable records (NO_PREV if none)

Record: a :mod:`lossproof.segments.framing` frame with magic ``b"LPFR"`` (``aux`` 0, ``number`` the
index; byte for byte the format written before that module existed)::

    0   4  magic        b"LPFR"
    4   4  crc          zlib.crc32 over bytes 8..32 of the header, then the payload
    8   4  length       payload length
    12  4  reserved     0
    16  8  index        u64, strictly increasing inside a segment (gaps only after failed writes)
    24  8  received_ms  i64, when the receiver got the request (unix ms)
    32  .  payload      msgpack array: [tenant, agent, content_type, encoding, seqs, reports, points,
                        body] — ``body`` is the request body exactly as received (still compressed)

Durable watermark (``durable``, 24 bytes, a :mod:`lossproof.segments.state` cell rewritten in place
after every fsync, itself not fsync'd)::

    0   4  magic b"LPFW"    4  4  crc over 8..24    8  8  segment base    16  8  position

Which bytes are trusted
    A segment is created with its header written to a temporary file, fsync'd, renamed into place
    and the directory fsync'd, so every segment file starts with a valid header. The writer leaves
    a segment (rolls) when it is full, after any failed write or fsync, and on every start; the new
    segment's ``prev_end`` says how many bytes of the previous one hold durable records. Bytes after
    ``prev_end`` (a write that failed, a torn tail) are never read. So for every segment but the
    last, ``[32, prev_end)`` must hold valid records only: anything else there is corruption of
    acknowledged data, and readers refuse with :class:`JournalCorrupt` naming the file and byte.

    The last segment has no successor to vouch for it. While the receiver runs (its lock is held)
    readers read it up to the durable watermark only, i.e. only what was fsync'd. After a crash,
    its records are read up to the first one that is not valid (a torn tail: records written but
    not fsync'd when the process or machine died; they were never acknowledged). A bad record
    *before* the watermark is corruption, never a torn tail. The watermark is written after the
    fsync, so it never claims more than was durable; after a power loss it may claim less.

Positions
    A :class:`Position` is (segment base, byte offset). Replay progress is a position, so it stays
    meaningful whatever indices a restart hands out.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from lossproof.durable import fdatasync_path, fsync_dir, make_dirs
from lossproof.obs.logging import get
from lossproof.segments import state as cells
from lossproof.segments.commit import CommitFailed, CommitHooks, CommitLimits, GroupCommitter
from lossproof.segments.framing import HEADER_SIZE, FileWindow, Framing, Status, Verdict, verdict
from lossproof.segments.fs import FS, REAL, InjectedFault
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


Item = Record | Boundary


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


# --- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentView:
    base: int
    path: Path
    end: int | None  # trusted end; None: read up to the first invalid record (a dead writer's tail)
    verify_until: int  # bytes before this must be valid records
    last: bool


def snapshot(directory: Path) -> list[SegmentView]:
    """What may be read now, segment by segment (see the module docstring for the rules)."""
    # watermark before listing: a roll in between then shows as a newer segment, never a stale end
    live = writer_live(directory)
    wm = read_watermark(directory)
    bases = list_segments(directory)
    views: list[SegmentView] = []
    for i, base in enumerate(bases):
        path = segment_path(directory, base)
        if i + 1 < len(bases):
            nxt = bases[i + 1]
            prev_end = read_segment_header(segment_path(directory, nxt), nxt)
            if prev_end == NO_PREV:
                prev_end = HEADER_SIZE  # cannot happen with this writer; be safe, trust nothing
            views.append(SegmentView(base, path, prev_end, prev_end, False))
            continue
        wm_here = wm.pos if wm is not None and wm.segment == base else HEADER_SIZE
        if live and wm is not None:
            views.append(SegmentView(base, path, wm_here, wm_here, True))
        else:
            views.append(SegmentView(base, path, None, wm_here, True))
    return views


class JournalReader:
    """Reads records in journal order from a position, across segments, never past what is durable.

    ``refresh()`` takes a new :func:`snapshot`; ``read()`` returns records (and a :class:`Boundary`
    when it moves into the next segment) up to the snapshot's end.
    """

    def __init__(self, directory: Path, start: Position | None = None) -> None:
        self.directory = directory
        self.cursor = start  # None: from the first segment's first record
        self.views: list[SegmentView] = []
        self._fd: int | None = None
        self._fd_base = -1
        self._win: FileWindow | None = None
        self._last_index = -1
        self._error: JournalError | None = None

    def refresh(self) -> None:
        self.views = snapshot(self.directory)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._fd_base = -1

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _view(self, base: int) -> tuple[int, SegmentView] | None:
        for i, v in enumerate(self.views):
            if v.base == base:
                return i, v
        return None

    def _open(self, view: SegmentView) -> FileWindow:
        if self._fd_base != view.base or self._win is None:
            self.close()
            try:
                self._fd = os.open(view.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise JournalError(f"{view.path}: segment vanished while reading (pruned?)") from None
            self._fd_base = view.base
            self._win = FileWindow(self._fd, READ_CHUNK)
            check_segment_header(view.path, view.base, os.pread(self._fd, HEADER_SIZE, 0))
            self._last_index = view.base - 1
        return self._win

    def remaining_bytes(self) -> int:
        """Bytes of journal from the cursor to the snapshot's end (for progress and ETA)."""
        total = 0
        for v in self.views:
            end = v.end
            if end is None:
                try:
                    end = v.path.stat().st_size
                except FileNotFoundError:
                    continue
            start = HEADER_SIZE
            if self.cursor is not None:
                if v.base < self.cursor.segment:
                    continue
                if v.base == self.cursor.segment:
                    start = self.cursor.pos
            total += max(0, end - start)
        return total

    def read(
        self, max_bytes: int = 8 * 2**20, max_records: int = 4096
    ) -> tuple[list[Record | Boundary], bool]:
        """Up to about ``max_bytes`` of records. Returns (items, at_end of the snapshot).

        Damage raises :class:`JournalCorrupt`, but only once every record before it was returned.
        """
        if self._error is not None:
            raise self._error
        items: list[Item] = []
        try:
            return self._read(items, max_bytes, max_records)
        except JournalError as e:
            if not items:
                raise
            self._error = e
            return items, False

    def _read(self, items: list[Item], max_bytes: int, max_records: int) -> tuple[list[Item], bool]:
        size = 0
        while size < max_bytes and len(items) < max_records:
            if not self.views:
                return items, True
            if self.cursor is None:
                first = self.views[0]
                self.cursor = Position(first.base, HEADER_SIZE)
            found = self._view(self.cursor.segment)
            if found is None:
                raise JournalError(
                    f"segment {segment_path(self.directory, self.cursor.segment)} (where reading "
                    "should continue) is missing"
                )
            i, view = found
            win = self._open(view)
            pos = self.cursor.pos
            if pos == HEADER_SIZE:
                self._last_index = view.base - 1
            if view.end is not None and pos >= view.end:
                if i + 1 < len(self.views):
                    nxt = Position(self.views[i + 1].base, HEADER_SIZE)
                    items.append(Boundary(view.base, nxt))
                    self.cursor = nxt
                    continue
                return items, True
            r = _parse(win, pos, view.end, self._last_index)  # a failure is confirmed by a fresh read
            if not r.ok:
                if view.end is not None or pos < view.verify_until:
                    why = r.reason
                    if view.end is not None and r.incomplete:
                        why += f" (the segment's durable end is byte {view.end})"
                    raise JournalCorrupt(view.path, pos, why)
                # a dead writer's torn tail: nothing after this point was ever acknowledged
                return items, True
            try:
                entry = decode_entry(r.payload)
            except msgspec.DecodeError as e:
                raise JournalCorrupt(view.path, pos, f"record payload does not decode: {e}") from None
            items.append(Record(view.base, pos, r.end, r.index, r.received_ms, entry))
            self._last_index = r.index
            self.cursor = Position(view.base, r.end)
            size += r.end - pos
        return items, False


def read_all(directory: Path) -> list[Record]:
    """Every durable record (for tests and tools). Raises JournalCorrupt on damage."""
    out: list[Record] = []
    with JournalReader(directory) as reader:
        reader.refresh()
        while True:
            items, at_end = reader.read()
            out.extend(r for r in items if isinstance(r, Record))
            if at_end:
                return out


def journal_bytes(directory: Path) -> tuple[int, int]:
    """(segment count, total bytes) of the journal."""
    n = total = 0
    for base in list_segments(directory):
        with contextlib.suppress(FileNotFoundError):
            total += segment_path(directory, base).stat().st_size
            n += 1
    return n, total


# --- writing -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Append:
    payload: bytes
    received_ms: int

    @property
    def size(self) -> int:
        return len(self.payload) + HEADER_SIZE


class JournalWriter:
    """Appends records with group-commit fsync; ``append`` returns only once the record is durable.

    One writer per journal directory (an exclusive flock). ``append`` raises
    :class:`JournalUnavailable` when the write or the fsync fails (disk full included): the request
    must then be refused, never acknowledged. After a failure the writer moves to a new segment, so
    bytes of a failed write are never read; while unhealthy it probes the disk every second. The
    group commit is :mod:`lossproof.segments.commit` (one writer thread), the writes and syncs go
    through the :mod:`lossproof.segments.fs` file system it is handed.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 64 * 2**20,
        fs: FS = REAL,
        max_batch_bytes: int = 32 * 2**20,
        max_batch_records: int = 4096,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = max(HEADER_SIZE + 1, segment_bytes)
        self._fs = fs  # every write and sync of the write path (tests hand in a FaultyFS)
        self._max_batch_bytes = min(max_batch_bytes, self.segment_bytes)  # segments stay near their size
        self._on_commit = on_commit  # (records, fsync seconds), called in the writer thread

        # probes every second while unhealthy
        limits = CommitLimits(max_batch_records, self._max_batch_bytes, probe_backoff=(1.0, 1.0))
        self._gc: GroupCommitter[_Append, Position] = GroupCommitter(
            "lossproof-journal-writer",
            self._commit_group,
            JournalUnavailable,
            limits,
            CommitHooks(probe=self._roll, on_bug=self._on_bug, on_health=self._on_health),
            closed_message="journal is not open",
        )
        self._lock_fd: int | None = None
        self._wm = watermark_cell(self.directory)

        # owned by the commit thread (one batch at a time)
        self._fd: int | None = None
        self._base = 0
        self._seg_size = 0
        self._durable_pos = 0  # bytes of segment ``_base`` that are fsync'd
        self._has_prev = False  # is there a segment ``_base`` the next header must vouch for?
        self._next_index = 1
        self._needs_roll = True
        self._started_once = False

    # --- public ----------------------------------------------------------------------------------

    @property
    def active_segment(self) -> int | None:
        return self._base if self._fd is not None else None

    @property
    def unhealthy(self) -> str | None:
        return self._gc.unhealthy

    async def start(self) -> None:
        make_dirs(self.directory)
        self._lock_fd = await asyncio.to_thread(acquire_writer_lock, self.directory)
        try:
            await asyncio.to_thread(self._recover)
        except BaseException:
            self._close_files()
            raise
        reason = None
        try:
            await asyncio.to_thread(self._roll)
        except OSError as e:
            reason = f"cannot create a journal segment in {self.directory}: {e.strerror or e}"
            log.error("fallback.journal_roll_failed", error=str(e), directory=str(self.directory))
        self._gc.start(asyncio.get_running_loop(), healthy=reason is None)
        if reason is not None:
            self._gc.set_unhealthy(reason)

    async def append(self, entry: Entry, received_ms: int) -> Position:
        """Durably append one record; returns its position once fsync'd."""
        if not self._gc.started:
            raise JournalUnavailable("journal is not open")
        payload = encode_entry(entry)
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"record of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        return await self._gc.submit(_Append(payload, received_ms))

    def healthy(self) -> tuple[bool, str]:
        return self._gc.healthy()

    async def close(self) -> None:
        """Finish what is queued (each gets its answer), then release the journal."""
        if not self._gc.started:
            self._close_files()
            return
        await self._gc.close()
        self._close_files()
        self._gc.set_unhealthy("closed")

    # --- the group-commit engine's hooks (in its thread) -----------------------------------------

    def _on_health(self, reason: str | None) -> None:
        if reason is None and self._started_once:
            log.info("fallback.journal_recovered")
        self._started_once = True

    def _on_bug(self, e: Exception) -> None:
        log.error("fallback.journal_internal_error", error=repr(e))
        self._needs_roll = True

    def _commit_group(self, batch: list[_Append]) -> list[Position]:
        try:
            return self._commit(batch)
        except OSError as e:
            reason = f"journal write failed in {self.directory}: {e.strerror or e}"
            log.error(
                "fallback.journal_write_failed",
                error=str(e),
                errno=errno.errorcode.get(e.errno or 0, "?"),
                injected=isinstance(e, InjectedFault),
                requests=len(batch),
            )
            raise CommitFailed(reason) from e

    # --- commit thread ---------------------------------------------------------------------------

    def _commit(self, batch: list[_Append]) -> list[Position]:
        if self._needs_roll or self._fd is None or self._seg_size >= self.segment_bytes:
            self._roll()
        assert self._fd is not None
        bufs: list[bytes] = []
        positions: list[Position] = []
        pos = self._seg_size
        first = self._next_index
        for i, a in enumerate(batch):
            bufs.append(encode_record(first + i, a.received_ms, a.payload))
            bufs.append(a.payload)
            positions.append(Position(self._base, pos))
            pos += HEADER_SIZE + len(a.payload)
        self._next_index = first + len(batch)  # handed out even if the write fails: never reused
        try:
            self._seg_size += self._fs.writev(self._fd, bufs)
            t = time.perf_counter()
            self._fs.fdatasync(self._fd)
            took = time.perf_counter() - t
        except OSError:
            # Never acknowledged: cut them off (best effort; if that fails too, a restart may find
            # them and replay them, which is harmless), and leave this segment: the next header's
            # prev_end excludes them for good.
            self._needs_roll = True
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._durable_pos)
            raise
        self._durable_pos = self._seg_size
        self._publish_watermark()
        if self._on_commit is not None:
            self._on_commit(len(batch), took)
        return positions

    def _roll(self) -> None:
        """Start a new segment whose header vouches for the durable part of the current one."""
        base = max(self._next_index, self._base + 1)
        path = segment_path(self.directory, base)
        tmp = path.with_name(path.name + ".tmp")
        prev_end = self._durable_pos if self._has_prev else NO_PREV
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            self._fs.writev(fd, [encode_segment_header(base, prev_end)])
            self._fs.fsync(fd)
            os.replace(tmp, path)
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._fd is not None:
            os.close(self._fd)
        os.lseek(fd, 0, os.SEEK_END)
        self._fd = fd
        self._base = base
        self._next_index = base
        self._seg_size = self._durable_pos = HEADER_SIZE
        self._has_prev = True
        self._needs_roll = False
        self._publish_watermark()
        log.info("fallback.journal_segment", path=str(path), prev_end=prev_end)

    def _publish_watermark(self) -> None:
        try:
            self._wm.write(self._base, self._durable_pos)
        except OSError as e:  # readers of a live journal lag until the next success; data is durable
            log.warning("fallback.watermark_write_failed", error=str(e))

    def _recover(self) -> None:
        bases = list_segments(self.directory)
        for name in os.listdir(self.directory):
            if name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / name)
        if not bases:
            self._base, self._next_index, self._has_prev, self._durable_pos = 0, 1, False, 0
            return
        last = bases[-1]
        wm = read_watermark(self.directory)
        verify_until = wm.pos if wm is not None and wm.segment == last else HEADER_SIZE
        scan = scan_tail(segment_path(self.directory, last), last, verify_until)
        if scan.bad_pos is not None:
            log.warning(
                "fallback.journal_torn_tail",
                path=str(scan.path),
                at=scan.bad_pos,
                reason=scan.bad_reason,
                discarded_bytes=scan.size - scan.valid_end,
                # after a power loss pages of an unacknowledged batch may survive out of order
                valid_records_after=scan.valid_after is not None,
            )
        # The tail may be bytes a killed receiver wrote but never fsynced (never acknowledged): they
        # sit in the page cache and read back valid. The next segment's header will vouch for them
        # (prev_end), so they must be durable before it exists, or a power loss after this restart
        # leaves a hole in the middle of the journal that stops every replay.
        fdatasync_path(segment_path(self.directory, last))
        self._base = last
        self._durable_pos = scan.valid_end
        self._has_prev = True
        self._next_index = (scan.last_index + 1) if scan.last_index is not None else last
        self._needs_roll = True
        log.info(
            "fallback.journal_recovered_on_start",
            segments=len(bases),
            last_segment=str(scan.path),
            records_in_last=scan.count,
            next_index=self._next_index,
        )

    def _close_files(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            self._wm.close()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
