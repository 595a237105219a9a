"""The embedded log reader: one consumer group, reading segment files another process writes.

What a reader may see
    Only records with offset below the *durable watermark* (``p0/durable``, published by the writer
    after each successful fsync), so it never sees a record that a power loss could take back.
    The reader shares nothing with the writer but files.

Missing data
    Whatever should be readable but is not becomes a :class:`LogGap` naming the file and byte
    position, and reading continues after it: offsets below the earliest segment, a missing
    segment, a record that fails its CRC (the reader searches for the next valid record by its
    magic), offsets that jump inside a segment, a segment cut short. Offsets a segment's seal marks
    as void (handed to appends that failed and were never acknowledged) are skipped silently.
    ``poll`` never raises for damaged data and never loops on it.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from lossproof.log.base import LogError, LogGap, LogLag, LogReader, LogRecord, PollResult
from lossproof.log.embedded import segment as seg
from lossproof.log.embedded.metrics import ReaderMetrics
from lossproof.log.embedded.offsets import (
    acquire_lock,
    check_group,
    consumers_dir,
    read_committed,
    release_lock,
    write_committed,
)

log = logging.getLogger("lossproof.log.embedded")

POLL_INTERVAL = 0.002
MAX_POLL_BYTES = 64 * 2**20
_MAX_TRACKED = 1 << 16


@dataclass(slots=True)
class _Cursor:
    base: int
    path: Path
    fd: int
    win: seg.FileWindow
    pos: int = 0  # byte position of the next record to look at
    seal: seg.Seal | None = None
    pending_reason: str | None = None  # why the next offset jump is a gap (set after a bad record)
    seal_checked_w: int = 0  # the watermark when we last looked for a seal (while it had none)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class EmbeddedLogReader(LogReader):
    """Reads partition 0 of the embedded log at ``directory`` for consumer ``group``."""

    def __init__(
        self,
        directory: Path,
        group: str = "workers",
        *,
        registry: CollectorRegistry | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.directory = Path(directory)
        self.group = check_group(group)
        self._pdir = seg.partition_dir(self.directory, 0)
        self._poll_interval = poll_interval
        self.registry = registry if registry is not None else CollectorRegistry()
        self._m = ReaderMetrics(self.registry, group)
        cdir = consumers_dir(self.directory)
        cdir.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = acquire_lock(
            cdir / f"{group}.lock", f"another reader of consumer group {group!r} is open at {self.directory}"
        )
        self._committed_map: dict[int, int] = read_committed(self.directory, group) or {}
        self._pos: int | None = None
        self._cur: _Cursor | None = None
        self._wm_fd: int | None = None
        self._wm = 0
        self._closed = False
        # (offset, timestamp_ms) of records returned but not yet committed, oldest first, for lag()
        self._uncommitted: collections.deque[tuple[int, int]] = collections.deque()
        self._lag_cache: tuple[int, int | None] | None = None

    # --- public API ------------------------------------------------------------------------------

    @property
    def committed(self) -> int | None:
        return self._committed_map.get(0)

    @property
    def position(self) -> int | None:
        """The next offset ``poll`` will look at (None before the first poll)."""
        return self._pos

    def poll(self, max_records: int, timeout: float) -> PollResult:
        if self._closed:
            raise LogError("reader is closed")
        res = PollResult()
        if max_records <= 0:
            return res
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            w = self._watermark()
            if self._pos is None:
                self._pos = self._start_position()
            if self._pos is not None and self._pos < w:
                self._fill(res, max_records, w)
            if res.records or res.gaps:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(self._poll_interval, remaining))
        if res.records:
            self._m.records.inc(len(res.records))
            self._m.bytes.inc(sum(len(r.key) + len(r.value) for r in res.records))
        return res

    def commit(self, offsets: Mapping[int, int]) -> None:
        if self._closed:
            raise LogError("reader is closed")
        new = dict(self._committed_map)
        for p, o in offsets.items():
            if int(o) < 0:
                raise ValueError(f"negative offset {o} for partition {p}")
            new[int(p)] = int(o)
        write_committed(self.directory, self.group, new)
        self._committed_map = new
        c = new.get(0)
        if c is None:
            return
        while self._uncommitted and self._uncommitted[0][0] < c:
            self._uncommitted.popleft()
        if self._pos is None or self._pos < c:
            self._pos = c
            self._close_cursor()

    def lag(self) -> LogLag:
        w = self._watermark()
        committed = self.committed
        if committed is None:
            bases = seg.list_segments(self._pdir)
            committed = bases[0] if bases else w
        records = max(0, w - committed)
        if records == 0:
            return LogLag(0, 0.0)
        ts: int | None = None
        if self._uncommitted and self._uncommitted[0][0] >= committed:
            ts = self._uncommitted[0][1]
        else:
            if self._lag_cache is None or self._lag_cache[0] != committed:
                self._lag_cache = (committed, self._timestamp_at(committed, w))
            ts = self._lag_cache[1]
        seconds = 0.0 if ts is None else max(0.0, (seg.now_ms() - ts) / 1000.0)
        return LogLag(records, seconds)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_cursor()
        if self._wm_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._wm_fd)
            self._wm_fd = None
        if self._lock_fd is not None:
            release_lock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> EmbeddedLogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- watermark and start position ------------------------------------------------------------

    def _watermark(self) -> int:
        if self._wm_fd is None:
            try:
                self._wm_fd = os.open(self._pdir / seg.WATERMARK_FILE, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return self._wm
        for _ in range(3):  # a read racing the writer's pwrite may be torn; the CRC tells
            v = seg.read_watermark_fd(self._wm_fd)
            if v is not None:
                self._wm = max(self._wm, v)
                break
        return self._wm

    def _start_position(self) -> int | None:
        c = self.committed
        if c is not None:
            return c
        bases = seg.list_segments(self._pdir)
        return bases[0] if bases else None

    # --- reading ---------------------------------------------------------------------------------

    def _fill(self, res: PollResult, max_records: int, w: int) -> None:
        nbytes = 0
        stalls = 0
        last_key: tuple[int, int, int] | None = None
        while len(res.records) < max_records and nbytes < MAX_POLL_BYTES:
            assert self._pos is not None
            if self._pos >= w:
                return
            key = (self._pos, self._cur.base if self._cur else -1, self._cur.pos if self._cur else -1)
            stalls = stalls + 1 if key == last_key else 0
            if stalls > 3:  # defensive: never spin on the same spot (e.g. a file vanishing under us)
                return
            last_key = key
            if self._cur is None:
                if not self._open_cursor(res, w):
                    return
                continue
            cur = self._cur
            if cur.seal is not None and cur.pos >= cur.seal.end_pos:
                if not self._end_of_segment(res, w):
                    return
                continue
            r = seg.read_record(cur.win, cur.pos, limit=cur.seal.end_pos if cur.seal else None)
            h = r.header
            if r.status is seg.Status.OK and h is not None:
                if h.offset < self._pos:  # before our position (already returned or committed)
                    cur.pos = h.end
                    continue
                if cur.seal is None and h.offset >= cur.seal_checked_w:
                    # New since we last looked: the writer may have sealed this segment before this
                    # record (after a failed fsync), which makes the record untrusted. A seal is
                    # always written before the watermark passes the sealed segment.
                    cur.seal = self._read_seal(cur.base)
                    cur.seal_checked_w = w
                    if cur.seal is not None:
                        continue
                if h.offset >= w:  # not durable yet
                    if h.offset > self._pos:
                        # ... but the durable offsets before it should be here and are not.
                        reason = cur.pending_reason or (
                            f"offsets {self._pos}..{w - 1} missing in {cur.path} before byte {cur.pos}"
                        )
                        self._gap(res, self._pos, w - 1, reason)
                        self._pos = w
                    return
                if h.offset > self._pos:
                    reason = cur.pending_reason or (
                        f"offsets {self._pos}..{h.offset - 1} missing in {cur.path} before byte {cur.pos}"
                    )
                    self._gap(res, self._pos, h.offset - 1, reason)
                cur.pending_reason = None
                res.records.append(LogRecord(0, h.offset, r.key, r.value, h.timestamp_ms))
                if len(self._uncommitted) < _MAX_TRACKED:
                    self._uncommitted.append((h.offset, h.timestamp_ms))
                nbytes += h.length
                self._pos = h.offset + 1
                cur.pos = h.end
                continue
            # No header at all: the segment's data ends here. A header whose record runs past the
            # end of the file (or of the seal) while offsets below ``w`` remain cannot be a record
            # still being written: treat it as damage and look for valid records after it.
            progressed = (
                self._end_of_segment(res, w)
                if r.status is seg.Status.INCOMPLETE and h is None
                else self._bad_record(res, w, r.reason)
            )
            if not progressed:
                return

    def _open_cursor(self, res: PollResult, w: int) -> bool:
        """Open the segment holding ``self._pos`` and position on it. False: nothing to read now."""
        assert self._pos is not None
        bases = seg.list_segments(self._pdir)
        if not bases:
            self._gap(res, self._pos, w - 1, f"no segment files in {self._pdir} (durable end {w})")
            self._pos = w
            return False
        idx = bisect.bisect_right(bases, self._pos) - 1
        if idx < 0:
            first = bases[0]
            self._gap(
                res,
                self._pos,
                min(first, w) - 1,
                f"offsets below {first} are gone: the earliest segment is "
                f"{seg.segment_path(self._pdir, first)}",
            )
            self._pos = min(first, w)
            if self._pos < first:
                return False
            idx = 0
        base = bases[idx]
        path = seg.segment_path(self._pdir, base)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # deleted between listing and opening: list again next round
            return True
        cur = _Cursor(base, path, fd, seg.FileWindow(fd), seal=self._read_seal(base), seal_checked_w=w)
        # Walk headers (no CRC) to the first record at or after our position.
        p = 0
        end = cur.seal.end_pos if cur.seal else None
        while end is None or p < end:
            hr = seg.read_header(cur.win, p)
            if hr.status is not seg.Status.OK or hr.header is None or hr.header.offset >= self._pos:
                break
            if end is not None and hr.header.end > end:
                break
            p = hr.header.end
        cur.pos = p
        self._cur = cur
        return True

    def _read_seal(self, base: int) -> seg.Seal | None:
        try:
            return seg.read_seal(self._pdir, base)
        except seg.BadSeal as e:
            log.warning("log.seal_damaged", extra={"error": str(e)})
            return None

    def _end_of_segment(self, res: PollResult, w: int, reason: str | None = None) -> bool:
        """No more records at the cursor although offsets below ``w`` remain. Returns progress."""
        cur = self._cur
        assert cur is not None and self._pos is not None
        if cur.seal is None:
            cur.seal = self._read_seal(cur.base)
        bases = seg.list_segments(self._pdir)
        later = [b for b in bases if b > cur.base]
        nxt = later[0] if later else None
        if cur.seal is None and nxt is None:
            # The last segment, still being written, ends although [pos, w) is durable: lost data.
            self._gap(
                res,
                self._pos,
                w - 1,
                reason or f"{cur.path} ends at byte {cur.pos} but offsets up to {w - 1} are durable",
            )
            self._pos = w
            return True
        seg_next = cur.seal.next_offset if cur.seal else nxt
        reserved = cur.seal.reserved_next if cur.seal else nxt
        assert seg_next is not None and reserved is not None
        if reason is None and cur.seal is not None and cur.pos < cur.seal.end_pos:
            reason = f"{cur.path} is cut at byte {cur.pos} but its seal says {cur.seal.end_pos} bytes"
        if self._pos < seg_next:
            last = min(seg_next, w) - 1
            self._gap(
                res, self._pos, last, reason or f"records missing at the end of {cur.path} (byte {cur.pos})"
            )
            self._pos = last + 1
            if self._pos >= w:
                return True
        if self._pos < reserved:  # void offsets of a failed append: never acknowledged, not a gap
            self._pos = min(reserved, w)
            if self._pos >= w:
                return True
        if nxt is None:
            # Sealed, the next segment not visible: only normal while the writer is rolling, and then
            # nothing past the seal is durable yet. Otherwise the next segment is gone.
            self._gap(res, self._pos, w - 1, f"segment after {cur.path} is missing (durable end {w})")
            self._pos = w
            return True
        if self._pos < nxt:
            last = min(nxt, w) - 1
            self._gap(
                res,
                self._pos,
                last,
                f"offsets {self._pos}..{nxt - 1} missing between {cur.path} and "
                f"{seg.segment_path(self._pdir, nxt)}",
            )
            self._pos = last + 1
        self._close_cursor()
        return True

    def _bad_record(self, res: PollResult, w: int, why: str) -> bool:
        """The bytes at the cursor are not a valid record: report the unreadable range as a gap."""
        cur = self._cur
        assert cur is not None and self._pos is not None
        if cur.seal is None:
            cur.seal = self._read_seal(cur.base)
        if cur.seal is not None and cur.pos >= cur.seal.end_pos:
            return self._end_of_segment(res, w)  # the untrusted tail of a segment sealed after a failure
        reason = f"unreadable record in {cur.path} at byte {cur.pos}: {why}"
        end = cur.seal.end_pos if cur.seal else cur.win.size()
        found, _ = seg.find_valid_after(cur.win, cur.pos + 1, end, min_offset=self._pos)
        if found is not None:
            if found.offset >= w:
                self._gap(res, self._pos, w - 1, reason)
                self._pos = w
            cur.pos = found.pos
            cur.pending_reason = reason
            return True
        finished = cur.seal is not None or any(b > cur.base for b in seg.list_segments(self._pdir))
        if finished:
            cur.pos = end
            return self._end_of_segment(res, w, reason)
        # The last segment, nothing valid after the damage yet: the durable rest is unreadable.
        # Stay at the damaged byte; records appended later are found by the search next time.
        self._gap(res, self._pos, w - 1, reason)
        self._pos = w
        return True

    def _gap(self, res: PollResult, first: int, last: int, reason: str) -> None:
        if last < first:
            return
        res.gaps.append(LogGap(0, first, last, reason, seg.now_ms()))
        self._m.gaps.inc()
        self._m.gap_offsets.inc(last - first + 1)
        log.warning(
            "log.gap",
            extra={"group": self.group, "partition": 0, "first": first, "last": last, "reason": reason},
        )

    def _close_cursor(self) -> None:
        if self._cur is not None:
            self._cur.close()
            self._cur = None

    def _timestamp_at(self, offset: int, w: int) -> int | None:
        """Append time of the first record at or after ``offset`` (below ``w``), None if none."""
        bases = seg.list_segments(self._pdir)
        idx = max(0, bisect.bisect_right(bases, offset) - 1)
        for base in bases[idx:]:
            try:
                fd = os.open(seg.segment_path(self._pdir, base), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                win = seg.FileWindow(fd)
                p = 0
                while True:
                    hr = seg.read_header(win, p)
                    if hr.status is not seg.Status.OK or hr.header is None:
                        break
                    if hr.header.offset >= w:
                        return None
                    if hr.header.offset >= offset:
                        return hr.header.timestamp_ms
                    p = hr.header.end
            finally:
                os.close(fd)
        return None
