"""Reading the journal: snapshots of its segments and a reader that follows the writer."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from lossproof.fallback.journal.format import (
    NO_PREV,
    READ_CHUNK,
    Boundary,
    Item,
    JournalCorrupt,
    JournalError,
    Position,
    Record,
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


