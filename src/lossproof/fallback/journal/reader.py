"""Reading the journal: snapshots of its segments and a reader that follows the writer.

Damage in acknowledged bytes stops a reader (:class:`JournalCorrupt`, once everything before it was
returned), unless it was made with ``skip_damaged`` (``lossproof replay --skip-damaged``): it then
returns a :class:`Skipped` for the damaged bytes and goes on at the next intact record, found as
the embedded log's reader finds it (:meth:`Framing.find_valid_after`: a CRC-valid record numbered
after the last good one; a valid frame with a lower number is a copy inside some payload, not the
next record).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from lossproof.fallback.journal.format import (
    FRAMING,
    NO_PREV,
    READ_CHUNK,
    Boundary,
    Item,
    JournalCorrupt,
    JournalError,
    Position,
    Record,
    Skipped,
    _parse,
    check_segment_header,
    decode_entry,
    list_segments,
    read_segment_header,
    read_watermark,
    segment_path,
    writer_live,
)
from lossproof.obs.logging import get
from lossproof.segments.framing import HEADER_SIZE, FileWindow

log = get(__name__)

# --- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentView:
    base: int
    path: Path
    end: int | None  # trusted end; None: read up to the first invalid record (a dead writer's tail)
    verify_until: int  # bytes before this must be valid records
    last: bool
    # why ``end`` is only the file's size (the next segment's header, which holds the durable end,
    # is damaged; only when damage is tolerated): told with any damage found in this segment
    end_unknown: str = ""


def snapshot(directory: Path, *, tolerate_damage: bool = False) -> list[SegmentView]:
    """What may be read now, segment by segment (see the module docstring for the rules).

    A segment header that is damaged raises :class:`JournalCorrupt`, or with ``tolerate_damage``
    makes its predecessor trusted up to its file's end (all of which must then be valid records, as
    a segment's bytes up to its durable end must: damage is found there, never a torn tail)."""
    # watermark before listing: a roll in between then shows as a newer segment, never a stale end
    live = writer_live(directory)
    wm = read_watermark(directory)
    bases = list_segments(directory)
    views: list[SegmentView] = []
    for i, base in enumerate(bases):
        path = segment_path(directory, base)
        if i + 1 < len(bases):
            nxt = bases[i + 1]
            try:
                prev_end = read_segment_header(segment_path(directory, nxt), nxt)
            except JournalCorrupt as e:
                if not tolerate_damage:
                    raise
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    raise JournalError(f"{path}: segment vanished while reading (pruned?)") from None
                why = f"its durable end is unknown, as the header of {e.path} is damaged"
                views.append(SegmentView(base, path, size, size, False, why))
                continue
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
    when it moves into the next segment) up to the snapshot's end. With ``skip_damaged`` damage is
    returned as a :class:`Skipped` in its place, and reading goes on after it (module docstring).
    """

    def __init__(self, directory: Path, start: Position | None = None, *, skip_damaged: bool = False) -> None:
        self.directory = directory
        self.cursor = start  # None: from the first segment's first record
        self.skip_damaged = skip_damaged
        self._bad_header: str | None = None  # the open segment's header damage, not yet returned
        self.views: list[SegmentView] = []
        self._fd: int | None = None
        self._fd_base = -1
        self._win: FileWindow | None = None
        self._last_index = -1
        self._error: JournalError | None = None

    def refresh(self) -> None:
        self.views = snapshot(self.directory, tolerate_damage=self.skip_damaged)

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

    def _open(self, view: SegmentView, pos: int) -> FileWindow:
        if self._fd_base != view.base or self._win is None:
            self.close()
            try:
                self._fd = os.open(view.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise JournalError(f"{view.path}: segment vanished while reading (pruned?)") from None
            self._fd_base = view.base
            self._win = FileWindow(self._fd, READ_CHUNK)
            self._bad_header = None
            try:
                check_segment_header(view.path, view.base, os.pread(self._fd, HEADER_SIZE, 0))
            except JournalCorrupt as e:
                if not self.skip_damaged:
                    raise
                # its records are still self-describing: read them from the first record position,
                # numbered from the base the file's name gives
                self._bad_header = e.reason
            self._last_index = view.base - 1
            if self.skip_damaged and pos > HEADER_SIZE:
                # resuming inside the segment: learn the last index before the resume point, since
                # the search past damage counts only a record numbered after it (a lower bound if
                # an earlier run skipped damage there: indices increase through the segment)
                sc = FRAMING.scan(self._win, start=HEADER_SIZE, after=view.base - 1, limit=pos)
                if sc.last is not None:
                    self._last_index = sc.last
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

    def read(self, max_bytes: int = 8 * 2**20, max_records: int = 4096) -> tuple[list[Item], bool]:
        """Up to about ``max_bytes`` of records. Returns (items, at_end of the snapshot).

        Damage raises :class:`JournalCorrupt`, but only once every record before it was returned
        (with ``skip_damaged``: a :class:`Skipped` in its place).
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
            win = self._open(view, self.cursor.pos)
            pos = self.cursor.pos
            if pos == HEADER_SIZE:
                self._last_index = view.base - 1
            if self._bad_header is not None:
                why, self._bad_header = self._bad_header, None
                if pos == HEADER_SIZE:  # entering the segment (a resume inside it told of it before)
                    items.append(Skipped(view.base, view.path, 0, HEADER_SIZE, why, view.base - 1, None))
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
                    if view.end is not None and r.incomplete and not view.end_unknown:
                        why += f" (the segment's durable end is byte {view.end})"
                    if not self.skip_damaged:
                        raise JournalCorrupt(view.path, pos, why)
                    items.append(self._skip_to_next_record(win, view, pos, why))
                    continue
                # a dead writer's torn tail: nothing after this point was ever acknowledged
                return items, True
            try:
                entry = decode_entry(r.payload)
            except msgspec.DecodeError as e:
                why = f"record payload does not decode: {e}"
                if not self.skip_damaged:
                    raise JournalCorrupt(view.path, pos, why) from None
                # the frame is intact (its CRC matches), so it ends where it says and its index is
                # real: only this record is skipped
                items.append(Skipped(view.base, view.path, pos, r.end, why, self._last_index, None))
                self._last_index = r.index
                self.cursor = Position(view.base, r.end)
                continue
            items.append(Record(view.base, pos, r.end, r.index, r.received_ms, entry))
            self._last_index = r.index
            self.cursor = Position(view.base, r.end)
            size += r.end - pos
        return items, False

    def _skip_to_next_record(self, win: FileWindow, view: SegmentView, pos: int, why: str) -> Skipped:
        """The damaged bytes from ``pos`` to the next intact record numbered after the last good one
        (or to the segment's trusted end: nothing intact follows); the cursor moves past them."""
        if view.end is not None:
            search_end = vouched_end = view.end
        else:
            # a dead writer's last segment, damaged before its watermark: intact records may follow
            # the watermark (it is not fsync'd, so it may claim less than was durable); if none
            # does, the damage runs to the watermark (even past the file's end: those bytes are
            # gone) and what follows it is a torn tail, never acknowledged
            search_end, vouched_end = win.size(), view.verify_until
        found, _ = FRAMING.find_valid_after(win, pos + 1, search_end, min_number=self._last_index + 1)
        to = found.pos if found is not None else vouched_end
        if view.end_unknown:
            why += f" ({view.end_unknown})"
        skipped = Skipped(
            view.base, view.path, pos, to, why, self._last_index, found.number if found is not None else None
        )
        self.cursor = Position(view.base, to)
        return skipped


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


