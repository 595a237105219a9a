"""Record framing shared by every durable segment file: the agent spool (``LPAR``), the embedded
log (``LPR1``) and the fallback journal (``LPFR``).

Frame (all integers little-endian, 32-byte header then payload)::

    0   4  magic    four bytes naming the file kind (the caller's :class:`Framing`)
    4   4  crc      zlib.crc32 (IEEE CRC-32) over header bytes 8..32, then the payload
    8   4  length   payload bytes
    12  4  aux      a u32 the format gives a meaning to (spool: encoding; log: key length; journal: 0)
    16  8  number   u64, strictly increasing inside a segment (spool seq, log offset, journal index)
    24  8  ts_ms    i64, unix ms (when the record was made / appended / received)
    32  .  payload

The three formats always had exactly this layout (each under its own field names), so files written
before this module existed are read byte for byte, and new files are identical to what the old code
wrote.

A frame is *valid* when its magic matches, ``length <= max_payload``, the format's check of ``aux``
passes, the whole frame is present (and inside the trusted ``limit``, if one is given) and its CRC
matches.

Torn tail versus corruption (:func:`verdict`)
    A scan walks a segment from its first record to the first position that does not hold a valid
    record whose number follows the previous one. What that bad spot means depends on whether the
    bytes there were ever vouched for as durable (by a seal, a durable watermark, a successor
    segment's header): bytes past every such mark were never acknowledged, so any damage there is a
    *torn tail* (a write the crash or power cut interrupted; pages of an unacknowledged group may even
    survive out of order) and is cut off. Damage inside vouched bytes is loss of acknowledged data:
    *corrupt* when a valid record follows it (the segment cannot simply be cut there), *lost* when
    nothing valid follows (the vouched tail is gone).
"""

from __future__ import annotations

import enum
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

FRAME = struct.Struct("<4sIIIQq")
HEADER_SIZE = FRAME.size  # 32
_TAIL = struct.Struct("<IIQq")  # the CRC'd part of the header: length, aux, number, ts_ms
MAX_PAYLOAD = 256 * 2**20
READ_CHUNK = 1 << 20


def crc_of(tail: bytes | memoryview, *parts: bytes | memoryview) -> int:
    crc = zlib.crc32(tail)
    for p in parts:
        crc = zlib.crc32(p, crc)
    return crc


@dataclass(frozen=True, slots=True)
class Header:
    pos: int  # byte position of the record in its file
    crc: int
    length: int
    aux: int
    number: int
    ts_ms: int

    @property
    def size(self) -> int:
        return HEADER_SIZE + self.length

    @property
    def end(self) -> int:
        return self.pos + HEADER_SIZE + self.length


class Status(enum.Enum):
    OK = "ok"
    INCOMPLETE = "incomplete"  # the file (or the trusted part of it) ends inside this record
    BAD = "bad"  # bytes here are not a valid record


@dataclass(frozen=True, slots=True)
class Parsed:
    status: Status
    header: Header | None = None
    payload: bytes | memoryview = b""
    reason: str = ""


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


@dataclass(slots=True)
class Scan:
    """A walk over one segment's records from ``start`` (see :meth:`Framing.scan`)."""

    start: int
    after: int  # numbers had to be greater than this (the segment's base - 1)
    count: int
    first: int | None
    last: int | None
    end_pos: int  # end of the last valid record (where a clean file would end)
    file_size: int
    bad_pos: int | None  # first byte that is not a valid record, if any before the scanned end
    bad_reason: str
    valid_after: Header | None  # a valid record found after bad_pos
    records: list[Header] = field(default_factory=list)  # with ``collect=True``

    @property
    def next_number(self) -> int:
        return self.after + 1 if self.last is None else self.last + 1


class Verdict(enum.Enum):
    CLEAN = "clean"  # every byte scanned is a valid record
    TORN = "torn"  # bad bytes past everything vouched for: an unacknowledged write, cut it off
    LOST = "lost"  # vouched-for bytes are missing or bad, nothing valid after them
    CORRUPT = "corrupt"  # vouched-for bytes are bad and a valid record follows


def verdict(scan: Scan, *, durable_pos: int | None = None, durable_number: int | None = None) -> Verdict:
    """The torn-tail-versus-corruption rule, written once (see the module docstring).

    ``durable_pos``: bytes below it were vouched for (a seal's end, a journal's watermark or its
    successor's ``prev_end``). ``durable_number``: every number below it was acknowledged (the log's
    durable watermark); it only decides whether *bad* bytes are vouched for. A scan without bad bytes
    that ends short of ``durable_number`` (records missing from a clean file) is CLEAN here: the
    caller compares ``scan.next_number`` with its watermark and reports the missing numbers as lost
    (the embedded log writer's recovery does)."""
    if scan.bad_pos is None:
        if durable_pos is not None and scan.end_pos < durable_pos:
            return Verdict.LOST
        return Verdict.CLEAN
    vouched = (durable_pos is not None and scan.bad_pos < durable_pos) or (
        durable_number is not None and scan.next_number < durable_number
    )
    if not vouched:
        return Verdict.TORN
    return Verdict.CORRUPT if scan.valid_after is not None else Verdict.LOST


class Framing:
    """One file kind's frames: its magic and the rule for its ``aux`` field."""

    def __init__(
        self,
        magic: bytes,
        *,
        max_payload: int = MAX_PAYLOAD,
        check_aux: Callable[[int, int], str | None] | None = None,
    ) -> None:
        if len(magic) != 4:
            raise ValueError("a frame magic is 4 bytes")
        self.magic = magic
        self.max_payload = max_payload
        self._check_aux = check_aux

    # --- writing ---------------------------------------------------------------------------------

    def header(self, number: int, ts_ms: int, aux: int, *parts: bytes) -> bytes:
        """The 32-byte header of a record whose payload is ``parts`` joined."""
        tail = _TAIL.pack(sum(len(p) for p in parts), aux, number, ts_ms)
        return self.magic + crc_of(tail, *parts).to_bytes(4, "little") + tail

    def encode(self, number: int, ts_ms: int, aux: int, *parts: bytes) -> bytes:
        return self.header(number, ts_ms, aux, *parts) + b"".join(parts)

    # --- reading ---------------------------------------------------------------------------------

    def check_header(self, magic: bytes, length: int, aux: int) -> str | None:
        """Why a header is implausible, or None."""
        if magic != self.magic:
            return "bad magic"
        if length > self.max_payload:
            return f"record length {length} too large"
        if self._check_aux is not None:
            return self._check_aux(aux, length)
        return None

    def check(self, data: bytes | memoryview, pos: int = 0) -> Header | None:
        """The record at ``pos`` of an in-memory buffer if it is whole and its CRC matches."""
        if len(data) - pos < HEADER_SIZE:
            return None
        magic, crc, length, aux, number, ts = FRAME.unpack_from(data, pos)
        if self.check_header(magic, length, aux):
            return None
        end = pos + HEADER_SIZE + length
        if end > len(data):
            return None
        mv = memoryview(data)
        if crc_of(mv[pos + 8 : pos + HEADER_SIZE], mv[pos + HEADER_SIZE : end]) != crc:
            return None
        return Header(pos, crc, length, aux, number, ts)

    def read_header(self, win: FileWindow, pos: int, *, fresh: bool = False) -> Parsed:
        """Parse (but do not CRC-check) the header at ``pos``."""
        mv = win.get(pos, HEADER_SIZE, fresh=fresh)
        if mv is None:
            return Parsed(Status.INCOMPLETE, reason="end of file")
        magic, crc, length, aux, number, ts = FRAME.unpack_from(mv)
        why = self.check_header(magic, length, aux)
        if why:
            return Parsed(Status.BAD, reason=why)
        return Parsed(Status.OK, Header(pos, crc, length, aux, number, ts))

    def read_record(
        self, win: FileWindow, pos: int, *, want_payload: bool = True, limit: int | None = None
    ) -> Parsed:
        """Parse and CRC-check the record at ``pos``; the payload (a memoryview) if ``want_payload``.

        ``limit`` is the end of the trusted part of the file: a record crossing it is INCOMPLETE.
        Non-OK results are always confirmed with a fresh read.
        """
        for fresh in (False, True):
            p = self.read_header(win, pos, fresh=fresh)
            if p.status is not Status.OK:
                if fresh:
                    return p
                continue
            h = p.header
            assert h is not None
            if limit is not None and h.end > limit:
                return Parsed(Status.INCOMPLETE, h, reason=f"record crosses the trusted end {limit}")
            mv = win.get(pos, h.size, fresh=fresh)
            if mv is None:
                if fresh:
                    return Parsed(Status.INCOMPLETE, h, reason="end of file inside the record")
                continue
            if crc_of(mv[8:HEADER_SIZE], mv[HEADER_SIZE:]) != h.crc:
                if fresh:
                    return Parsed(Status.BAD, h, reason="CRC mismatch")
                continue
            if not want_payload:
                return Parsed(Status.OK, h)
            return Parsed(Status.OK, h, mv[HEADER_SIZE:])
        raise AssertionError("unreachable")

    def find_valid_after(
        self, win: FileWindow, pos: int, end: int, *, min_number: int = -1
    ) -> tuple[Header | None, int]:
        """Search ``[pos, end)`` for the first CRC-valid record with number >= ``min_number``.

        Returns (header or None, position the search reached). Candidates that are not valid (a
        magic inside a payload, a torn record) are skipped.
        """
        end = min(end, win.size())
        p = pos
        while p + HEADER_SIZE <= end:
            want = min(end - p, READ_CHUNK)
            mv = win.get(p, want, fresh=True)
            if mv is None:
                break
            i = bytes(mv).find(self.magic)
            if i < 0:
                p += max(1, want - (len(self.magic) - 1))
                continue
            cand = p + i
            r = self.read_record(win, cand, want_payload=False, limit=end)
            if r.status is Status.OK and r.header is not None and r.header.number >= min_number:
                return r.header, cand
            p = cand + 1
        return None, p

    def scan(
        self,
        win: FileWindow,
        *,
        start: int = 0,
        after: int = -1,
        limit: int | None = None,
        consecutive: bool = False,
        verify_crc: bool = True,
        collect: bool = False,
    ) -> Scan:
        """Walk the records from ``start`` up to ``limit`` (default: the file end).

        Numbers must be greater than ``after`` and increase strictly (by exactly one with
        ``consecutive``; the first one is then free). With ``verify_crc=False`` only headers are
        checked (cheap: one read per chunk, payloads skipped). A record that breaks the numbering is
        bad like a damaged one."""
        size = win.size()
        end = size if limit is None else min(limit, size)
        pos = start
        count = 0
        first: int | None = None
        last: int | None = None
        bad_pos: int | None = None
        bad_reason = ""
        records: list[Header] = []
        while pos < end:
            if verify_crc:
                r = self.read_record(win, pos, want_payload=False, limit=end)
            else:
                r = self.read_header(win, pos)
                if r.status is Status.OK and r.header is not None and r.header.end > end:
                    r = Parsed(Status.INCOMPLETE, r.header, reason="end of file inside the record")
            h = r.header
            if r.status is Status.OK and h is not None:
                prev = after if last is None else last
                if h.number <= prev:
                    r = Parsed(Status.BAD, h, reason=f"number {h.number} not after {prev}")
                elif consecutive and last is not None and h.number != last + 1:
                    r = Parsed(Status.BAD, h, reason=f"number {h.number} does not follow {last}")
            if r.status is not Status.OK or h is None:
                bad_pos, bad_reason = pos, r.reason
                break
            count += 1
            if first is None:
                first = h.number
            last = h.number
            if collect:
                records.append(h)
            pos = h.end
        valid_after = None
        if bad_pos is not None:
            min_number = after + 1 if last is None else last + 1
            valid_after, _ = self.find_valid_after(win, bad_pos + 1, end, min_number=min_number)
        return Scan(start, after, count, first, last, pos, size, bad_pos, bad_reason, valid_after, records)

    def scan_path(self, path: os.PathLike[str] | str, **kw: object) -> Scan:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return self.scan(FileWindow(fd), **kw)  # type: ignore[arg-type]
        finally:
            os.close(fd)
