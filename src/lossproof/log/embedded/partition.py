"""One partition as the embedded log reader owns it: its open segment (a cursor), the records
it reads, the gaps it reports, its committed offset and its timestamp look-ups."""

from __future__ import annotations

import bisect
import collections
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from lossproof.log.base import LogGap, LogRecord, PollResult
from lossproof.log.embedded import segment as seg
from lossproof.log.embedded.metrics import ReaderMetrics
from lossproof.log.embedded.offsets import (
    release_lock,
)
from lossproof.obs.logging import get

log = get(__name__)

POLL_INTERVAL = 0.002
CLAIM_GRACE = 2.0
CLAIM_INTERVAL = 0.2
MEMBER_TIMEOUT = 6.0  # a reader whose heartbeat is older does not count for sharing partitions
MEMBER_CLEANUP = 60.0  # member lock files of dead readers are deleted once this old
MAX_POLL_BYTES = 64 * 2**20
_MAX_TRACKED = 1 << 16


@dataclass(slots=True)
class Cursor:
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


@dataclass(frozen=True, slots=True)
class SeekHint:
    """Where a record was found by a timestamp lookup, so the next lookup resumes from there."""

    base: int
    pos: int
    offset: int


class PartitionReader:
    """Reading state of one partition the reader owns (holding ``lock_fd``)."""

    def __init__(
        self,
        directory: Path,
        partition: int,
        group: str,
        lock_fd: int,
        committed: int | None,
        metrics: ReaderMetrics,
    ) -> None:
        self.partition = partition
        self.pdir = seg.partition_dir(directory, partition)
        self.group = group
        self.lock_fd: int | None = lock_fd
        self.committed = committed
        self.m = metrics
        self.pos: int | None = None  # next offset to look at (None before the first poll)
        self.cur: Cursor | None = None
        self.wm_fd: int | None = None
        self.wm = 0
        # (offset, timestamp_ms) of records returned but not yet committed, oldest first, for lag()
        self.uncommitted: collections.deque[tuple[int, int]] = collections.deque()
        self.returned: int | None = None  # the offset after the last record or gap poll returned

    @property
    def outstanding(self) -> bool:
        """Whether poll returned records or gaps of this partition that are not committed yet."""
        if self.returned is None:
            return False
        return self.committed is None or self.committed < self.returned

    def set_committed(self, c: int) -> None:
        self.committed = c
        while self.uncommitted and self.uncommitted[0][0] < c:
            self.uncommitted.popleft()
        if self.pos is None or self.pos < c:
            self.pos = c
            self.close_cursor()

    def close(self) -> None:
        self.close_cursor()
        if self.wm_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.wm_fd)
            self.wm_fd = None
        if self.lock_fd is not None:
            release_lock(self.lock_fd)
            self.lock_fd = None

    def watermark(self) -> int:
        if self.wm_fd is None:
            try:
                self.wm_fd = os.open(self.pdir / seg.WATERMARK_FILE, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return self.wm
        for _ in range(3):  # a read racing the writer's pwrite may be torn; the CRC tells
            v = seg.read_watermark_fd(self.wm_fd)
            if v is not None:
                self.wm = max(self.wm, v)
                break
        return self.wm

    def start_position(self) -> int | None:
        if self.committed is not None:
            return self.committed
        bases = seg.list_segments(self.pdir)
        return bases[0] if bases else None

    # --- reading ---------------------------------------------------------------------------------

    def fill(self, res: PollResult, want: int, byte_budget: int) -> int:
        """Add up to ``want`` records (and any gaps met) to ``res``; returns the payload bytes added."""
        w = self.watermark()
        if self.pos is None:
            self.pos = self.start_position()
        if self.pos is None or self.pos >= w:
            return 0
        nbytes = 0
        added = 0
        stalls = 0
        last_key: tuple[int, int, int] | None = None
        while added < want and nbytes < byte_budget:
            assert self.pos is not None
            if self.pos >= w:
                return nbytes
            key = (self.pos, self.cur.base if self.cur else -1, self.cur.pos if self.cur else -1)
            stalls = stalls + 1 if key == last_key else 0
            if stalls > 3:  # defensive: never spin on the same spot (e.g. a file vanishing under us)
                return nbytes
            last_key = key
            if self.cur is None:
                if not self._open_cursor(res, w):
                    return nbytes
                continue
            cur = self.cur
            if cur.seal is not None and cur.pos >= cur.seal.end_pos:
                if not self._end_of_segment(res, w):
                    return nbytes
                continue
            r = seg.read_record(cur.win, cur.pos, limit=cur.seal.end_pos if cur.seal else None)
            h = r.header
            if r.status is seg.Status.OK and h is not None:
                if h.number < self.pos:  # before our position (already returned or committed)
                    cur.pos = h.end
                    continue
                if cur.seal is None and h.number >= cur.seal_checked_w:
                    # New since we last looked: the writer may have sealed this segment before this
                    # record (after a failed fsync), which makes the record untrusted. A seal is
                    # always written before the watermark passes the sealed segment.
                    cur.seal = self._read_seal(cur.base)
                    cur.seal_checked_w = w
                    if cur.seal is not None:
                        continue
                if h.number >= w:  # not durable yet
                    if h.number > self.pos:
                        # ... but the durable offsets before it should be here and are not.
                        reason = cur.pending_reason or (
                            f"offsets {self.pos}..{w - 1} missing in {cur.path} before byte {cur.pos}"
                        )
                        self._gap(res, self.pos, w - 1, reason)
                        self.pos = w
                    return nbytes
                if h.number > self.pos:
                    reason = cur.pending_reason or (
                        f"offsets {self.pos}..{h.number - 1} missing in {cur.path} before byte {cur.pos}"
                    )
                    self._gap(res, self.pos, h.number - 1, reason)
                cur.pending_reason = None
                res.records.append(LogRecord(self.partition, h.number, *seg.key_value(r), h.ts_ms))
                self.returned = h.number + 1
                added += 1
                if len(self.uncommitted) < _MAX_TRACKED:
                    self.uncommitted.append((h.number, h.ts_ms))
                nbytes += h.length
                self.pos = h.number + 1
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
                return nbytes
        return nbytes

    def _open_cursor(self, res: PollResult, w: int) -> bool:
        """Open the segment holding ``self.pos`` and position on it. False: nothing to read now."""
        assert self.pos is not None
        bases = seg.list_segments(self.pdir)
        if not bases:
            self._gap(res, self.pos, w - 1, f"no segment files in {self.pdir} (durable end {w})")
            self.pos = w
            return False
        idx = bisect.bisect_right(bases, self.pos) - 1
        if idx < 0:
            first = bases[0]
            self._gap(
                res,
                self.pos,
                min(first, w) - 1,
                f"offsets below {first} are gone: the earliest segment is "
                f"{seg.segment_path(self.pdir, first)}",
            )
            self.pos = min(first, w)
            if self.pos < first:
                return False
            idx = 0
        base = bases[idx]
        path = seg.segment_path(self.pdir, base)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # deleted between listing and opening: list again next round
            return True
        cur = Cursor(base, path, fd, seg.FileWindow(fd), seal=self._read_seal(base), seal_checked_w=w)
        # Walk headers (no CRC) to the first record at or after our position.
        p = 0
        end = cur.seal.end_pos if cur.seal else None
        while end is None or p < end:
            hr = seg.read_header(cur.win, p)
            if hr.status is not seg.Status.OK or hr.header is None or hr.header.number >= self.pos:
                break
            if end is not None and hr.header.end > end:
                break
            p = hr.header.end
        cur.pos = p
        self.cur = cur
        return True

    def _read_seal(self, base: int) -> seg.Seal | None:
        return seg.read_seal_or_none(self.pdir, base)

    def _end_of_segment(self, res: PollResult, w: int, reason: str | None = None) -> bool:
        """No more records at the cursor although offsets below ``w`` remain. Returns progress."""
        cur = self.cur
        assert cur is not None and self.pos is not None
        if cur.seal is None:
            cur.seal = self._read_seal(cur.base)
        bases = seg.list_segments(self.pdir)
        later = [b for b in bases if b > cur.base]
        nxt = later[0] if later else None
        if cur.seal is None and nxt is None:
            # The last segment, still being written, ends although [pos, w) is durable: lost data.
            self._gap(
                res,
                self.pos,
                w - 1,
                reason or f"{cur.path} ends at byte {cur.pos} but offsets up to {w - 1} are durable",
            )
            self.pos = w
            return True
        seg_next = cur.seal.next_offset if cur.seal else nxt
        reserved = cur.seal.reserved_next if cur.seal else nxt
        assert seg_next is not None and reserved is not None
        if reason is None and cur.seal is not None and cur.pos < cur.seal.end_pos:
            reason = f"{cur.path} is cut at byte {cur.pos} but its seal says {cur.seal.end_pos} bytes"
        if self.pos < seg_next:
            last = min(seg_next, w) - 1
            self._gap(
                res, self.pos, last, reason or f"records missing at the end of {cur.path} (byte {cur.pos})"
            )
            self.pos = last + 1
            if self.pos >= w:
                return True
        if self.pos < reserved:  # void offsets of a failed append: never acknowledged, not a gap
            self.pos = min(reserved, w)
            if self.pos >= w:
                return True
        if nxt is None:
            # Sealed, the next segment not visible: only normal while the writer is rolling, and then
            # nothing past the seal is durable yet. Otherwise the next segment is gone.
            self._gap(res, self.pos, w - 1, f"segment after {cur.path} is missing (durable end {w})")
            self.pos = w
            return True
        if self.pos < nxt:
            last = min(nxt, w) - 1
            self._gap(
                res,
                self.pos,
                last,
                f"offsets {self.pos}..{nxt - 1} missing between {cur.path} and "
                f"{seg.segment_path(self.pdir, nxt)}",
            )
            self.pos = last + 1
        self.close_cursor()
        return True

    def _bad_record(self, res: PollResult, w: int, why: str) -> bool:
        """The bytes at the cursor are not a valid record: report the unreadable range as a gap."""
        cur = self.cur
        assert cur is not None and self.pos is not None
        if cur.seal is None:
            cur.seal = self._read_seal(cur.base)
        if cur.seal is not None and cur.pos >= cur.seal.end_pos:
            return self._end_of_segment(res, w)  # the untrusted tail of a segment sealed after a failure
        reason = f"unreadable record in {cur.path} at byte {cur.pos}: {why}"
        end = cur.seal.end_pos if cur.seal else cur.win.size()
        found, _ = seg.find_valid_after(cur.win, cur.pos + 1, end, min_offset=self.pos)
        if found is not None:
            if found.number >= w:
                self._gap(res, self.pos, w - 1, reason)
                self.pos = w
            cur.pos = found.pos
            cur.pending_reason = reason
            return True
        finished = cur.seal is not None or any(b > cur.base for b in seg.list_segments(self.pdir))
        if finished:
            cur.pos = end
            return self._end_of_segment(res, w, reason)
        # The last segment, nothing valid after the damage yet: the durable rest is unreadable.
        # Stay at the damaged byte; records appended later are found by the search next time.
        self._gap(res, self.pos, w - 1, reason)
        self.pos = w
        return True

    def _gap(self, res: PollResult, first: int, last: int, reason: str) -> None:
        if last < first:
            return
        res.gaps.append(LogGap(self.partition, first, last, reason, seg.now_ms()))
        self.returned = max(self.returned or 0, last + 1)
        self.m.gaps.inc()
        self.m.gap_offsets.inc(last - first + 1)
        log.warning(
            "log.gap",
            group=self.group, partition=self.partition, first=first, last=last, reason=reason,
        )

    def close_cursor(self) -> None:
        if self.cur is not None:
            self.cur.close()
            self.cur = None


