"""The embedded log reader: one consumer group, reading segment files other processes write.

What a reader may see
    Only records with offset below a partition's *durable watermark* (``p{i}/durable``, published
    by the partition's writer after each successful fsync), so it never sees a record that a power
    loss could take back. The reader shares nothing with writers but files.

Missing data
    Whatever should be readable but is not becomes a :class:`LogGap` naming the file and byte
    position, and reading continues after it: offsets below the earliest segment, a missing
    segment, a record that fails its CRC (the reader searches for the next valid record by its
    magic), offsets that jump inside a segment, a segment cut short. Offsets a segment's seal marks
    as void (handed to appends that failed and were never acknowledged) are skipped silently.
    ``poll`` never raises for damaged data and never loops on it.

Partitions and several readers of one group
    Each partition of the log is read by at most one reader of a group at a time: the *owner*,
    which holds the partition's per-group flock (see ``offsets.reader_lock_path``) until it gives
    the partition back, closes or dies (the kernel drops the flocks of a killed process). Every open
    reader is also a *member* of the group: it holds a member lock whose mtime it refreshes while it
    polls (a heartbeat), so readers see each other, standbys included.

    A reader claims one free partition when it opens. Then, every ``claim_interval`` while it
    polls, it looks at the group and does at most one of:

    * give back one partition, if it owns more than ``1 +`` the load of some live member (heartbeat
      younger than ``member_timeout``), and only a partition with nothing outstanding: every record
      or gap ``poll`` returned from it is committed, so the next owner (which starts at the
      committed offset) re-reads nothing and skips nothing, and a later ``commit`` never names it;
    * claim one partition it has seen free for ``claim_grace`` seconds, if no other member or
      owner owns fewer partitions than it does (the least loaded take first), or if the partition
      stayed free for ``member_timeout + claim_grace`` (whoever should have taken it is not
      polling). With ``claim_grace == 0`` it claims every free partition at once.

    So one reader ends up owning every partition, readers of a group converge to an even split
    (loads differ by at most one) however they were started, a reader added later gets its share
    within a few seconds, and when a reader dies the others take over its partitions, from their
    last commit, ``claim_grace`` (+ ``claim_interval``) after they see them free (hot standby). A
    reader that owns nothing is a standby: ``poll`` returns nothing until it gets a partition.
    A reader that stops polling keeps its partitions (nothing takes a flock away from a live
    process): a stuck worker stalls its partitions; kill it and the others take over.

    Committed offsets of all partitions live in one file per group, updated under a lock (see
    ``offsets.update_committed``); a reader commits only partitions it owns, and reads a
    partition's committed offset afresh from the file when it claims it.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from lossproof.durable import fsync_dir, make_dirs
from lossproof.log.base import LogError, LogGap, LogLag, LogReader, LogRecord, PollResult
from lossproof.log.embedded import segment as seg
from lossproof.log.embedded.metrics import ReaderMetrics
from lossproof.log.embedded.offsets import (
    check_group,
    consumers_dir,
    member_lock_files,
    member_lock_path,
    probe_lock,
    read_committed,
    reader_lock_path,
    release_lock,
    try_lock,
    update_committed,
)
from lossproof.obs.logging import get

log = get("lossproof.log.embedded")

POLL_INTERVAL = 0.002
CLAIM_GRACE = 2.0
CLAIM_INTERVAL = 0.2
MEMBER_TIMEOUT = 6.0  # a reader whose heartbeat is older does not count for sharing partitions
MEMBER_CLEANUP = 60.0  # member lock files of dead readers are deleted once this old
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


@dataclass(frozen=True, slots=True)
class _SeekHint:
    """Where a record was found by a timestamp lookup, so the next lookup resumes from there."""

    base: int
    pos: int
    offset: int


class _Partition:
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
        self.cur: _Cursor | None = None
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
        cur = _Cursor(base, path, fd, seg.FileWindow(fd), seal=self._read_seal(base), seal_checked_w=w)
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


class EmbeddedLogReader(LogReader):
    """Reads the embedded log at ``directory`` for consumer ``group``: the partitions it owns.

    ``partitions`` is the number of partitions the log is configured with; partition directories
    found beyond it (the setting was lowered) are read too. See the module docstring for how
    several readers of one group share the partitions.
    """

    def __init__(
        self,
        directory: Path,
        group: str = "workers",
        *,
        partitions: int = 1,
        registry: CollectorRegistry | None = None,
        poll_interval: float = POLL_INTERVAL,
        claim_grace: float = CLAIM_GRACE,
        claim_interval: float = CLAIM_INTERVAL,
        member_timeout: float = MEMBER_TIMEOUT,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, not {partitions}")
        self.directory = Path(directory)
        self.group = check_group(group)
        self.partitions = partitions
        self._poll_interval = poll_interval
        self._grace = max(0.0, claim_grace)
        self._claim_interval = claim_interval
        self._member_timeout = max(member_timeout, 2 * claim_interval)
        self.registry = registry if registry is not None else CollectorRegistry()
        self._m = ReaderMetrics(self.registry, group)
        make_dirs(consumers_dir(self.directory))
        self._token = secrets.token_hex(6)  # tells our locks from other readers' (even in-process)
        self._owned: dict[int, _Partition] = {}
        self._free_since: dict[int, float] = {}  # partitions seen free, since when (monotonic)
        self._next_check = 0.0
        self._rr = 0  # which owned partition poll serves first (rotates)
        self._closed = False
        self._lag_cache: dict[int, tuple[int, int | None]] = {}
        self._seek_hints: dict[int, _SeekHint] = {}
        self._member_fd: int | None = None
        try:
            self._join()
            self._claim_at_start()
        except BaseException:
            self.close()
            raise

    # --- public API ------------------------------------------------------------------------------

    @property
    def owned(self) -> list[int]:
        """The partitions this reader owns now (reads and may commit)."""
        return sorted(self._owned)

    @property
    def committed(self) -> int | None:
        """Partition 0's committed offset, if this reader owns it (single-partition convenience)."""
        p = self._owned.get(0)
        return None if p is None else p.committed

    @property
    def position(self) -> int | None:
        """The next offset ``poll`` will look at in partition 0 (None before the first poll)."""
        p = self._owned.get(0)
        return None if p is None else p.pos

    def committed_offsets(self) -> dict[int, int]:
        """Committed offsets of the partitions this reader owns (those that have one)."""
        return {n: p.committed for n, p in sorted(self._owned.items()) if p.committed is not None}

    def poll(self, max_records: int, timeout: float) -> PollResult:
        if self._closed:
            raise LogError("reader is closed")
        res = PollResult()
        if max_records <= 0:
            return res
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self._maybe_claim(time.monotonic())
            self._fill(res, max_records)
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
        new: dict[int, int] = {}
        for p, o in offsets.items():
            if int(o) < 0:
                raise ValueError(f"negative offset {o} for partition {p}")
            if int(p) not in self._owned:
                raise LogError(
                    f"partition {p} of the log at {self.directory} is not owned by this reader of "
                    f"group {self.group!r} (it owns {self.owned or 'none'})"
                )
            new[int(p)] = int(o)
        if not new:
            return
        update_committed(self.directory, self.group, new)
        for p, o in new.items():
            self._owned[p].set_committed(o)

    def lag(self) -> LogLag:
        """Of the whole group over every partition, not only those this reader owns."""
        stored = read_committed(self.directory, self.group) or {}
        total = 0
        oldest: int | None = None
        for n in self._known_partitions():
            part = self._owned.get(n)
            pdir = seg.partition_dir(self.directory, n)
            if part is not None:
                w = part.watermark()
                committed = part.committed
            else:
                w = seg.read_watermark(pdir) or 0
                committed = stored.get(n)
            if committed is None:
                bases = seg.list_segments(pdir)
                committed = bases[0] if bases else w
            if w <= committed:
                continue
            total += w - committed
            ts: int | None
            if part is not None and part.uncommitted and part.uncommitted[0][0] >= committed:
                ts = part.uncommitted[0][1]
            else:
                cached = self._lag_cache.get(n)
                if cached is None or cached[0] != committed:
                    cached = (committed, self._timestamp_at(n, committed, w))
                    self._lag_cache[n] = cached
                ts = cached[1]
            if ts is not None and (oldest is None or ts < oldest):
                oldest = ts
        if total == 0:
            return LogLag(0, 0.0)
        seconds = 0.0 if oldest is None else max(0.0, (seg.now_ms() - oldest) / 1000.0)
        return LogLag(total, seconds)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for part in self._owned.values():
            part.close()
        if self._owned:
            log.info("log.partitions_released", group=self.group, partitions=self.owned)
        self._owned.clear()
        self._m.partitions.set(0)
        if self._member_fd is not None:
            with contextlib.suppress(OSError):
                member_lock_path(self.directory, self.group, self._token).unlink()
            release_lock(self._member_fd)
            self._member_fd = None

    def __enter__(self) -> EmbeddedLogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- partition ownership ---------------------------------------------------------------------

    def _known_partitions(self) -> range:
        on_disk = seg.list_partitions(self.directory)
        return range(max(self.partitions, on_disk[-1] + 1 if on_disk else 0))

    def _claim(self, n: int) -> bool:
        fd, _holder = try_lock(
            reader_lock_path(self.directory, self.group, n), f"{os.getpid()} {self._token}\n"
        )
        if fd is None:
            return False
        try:
            # Read afresh: the previous owner may have committed right before it closed or died.
            committed = (read_committed(self.directory, self.group) or {}).get(n)
        except BaseException:
            release_lock(fd)
            raise
        self._owned[n] = _Partition(self.directory, n, self.group, fd, committed, self._m)
        self._free_since.pop(n, None)
        self._m.partitions.set(len(self._owned))
        log.info(
            "log.partition_claimed",
            group=self.group, partition=n, committed=committed, owned=self.owned,
        )
        return True

    def _claim_at_start(self) -> None:
        """Claim the first free partition (all free ones when the grace is 0)."""
        now = time.monotonic()
        for n in self._known_partitions():
            if (not self._owned or self._grace == 0) and self._claim(n):
                continue
            if probe_lock(reader_lock_path(self.directory, self.group, n)) is None:
                self._free_since.setdefault(n, now)
        if not self._owned:
            log.info("log.reader_standby", group=self.group, directory=str(self.directory))
        self._next_check = now + self._claim_interval

    def _join(self) -> None:
        """Become a member of the group: hold a member lock (see the module docstring)."""
        for _ in range(5):
            path = member_lock_path(self.directory, self.group, self._token)
            fd, _holder = try_lock(path, f"{os.getpid()} {self._token}\n")
            if fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not removed by a cleanup
                        self._member_fd = fd
                        # Until its first commit the group is known by this file alone, and a
                        # known group holds back retention: its name must survive a power loss.
                        fsync_dir(path.parent)
                        return
                release_lock(fd)
            self._token = secrets.token_hex(6)
        raise LogError(f"cannot register a reader of group {self.group!r} at {self.directory}")

    def _members(self, wall: float) -> dict[str, bool]:
        """Other members of the group: token -> whether its heartbeat is fresh. Removes the files
        of readers that died long ago."""
        out: dict[str, bool] = {}
        for path in member_lock_files(self.directory, self.group):
            token = path.name[len(self.group) + 2 : -len(".lock")]
            if token == self._token:
                continue
            try:
                age = wall - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if probe_lock(path) is not None:
                out[token] = age < self._member_timeout
            elif age > MEMBER_CLEANUP:
                fd, _ = try_lock(path)  # a reader that just created it holds it within microseconds
                if fd is not None:
                    with contextlib.suppress(OSError):
                        if wall - os.fstat(fd).st_mtime > MEMBER_CLEANUP:
                            path.unlink()
                    release_lock(fd)
        return out

    def _maybe_claim(self, now: float) -> None:
        """Give back or claim (at most) one partition, as the module docstring describes."""
        if now < self._next_check:
            return
        self._next_check = now + self._claim_interval
        wall = time.time()
        if self._member_fd is not None:
            with contextlib.suppress(OSError):
                os.utime(self._member_fd)  # heartbeat
        members = self._members(wall)
        owners: collections.Counter[str] = collections.Counter()
        free: list[int] = []
        for n in self._known_partitions():
            if n in self._owned:
                continue
            holder = probe_lock(reader_lock_path(self.directory, self.group, n))
            if holder is None:
                free.append(n)
                self._free_since.setdefault(n, now)
            else:
                self._free_since.pop(n, None)
                owners[holder.split()[-1] if holder else "?"] += 1
        mine = len(self._owned)
        live = {t: owners.get(t, 0) for t, fresh in members.items() if fresh}
        if live and mine > min(live.values()) + 1 and self._release_one():
            return
        ripe = [n for n in free if now - self._free_since[n] >= self._grace]
        if not ripe:
            return
        loads = {**owners, **live}  # owners without a fresh heartbeat still own what they own
        if loads and mine > min(loads.values()):  # a less loaded reader takes it, unless it does not
            ripe = [n for n in ripe if now - self._free_since[n] >= self._member_timeout + self._grace]
        for n in ripe:
            if self._claim(n) and self._grace > 0:
                break  # one at a time, so the others get their turn

    def _release_one(self) -> bool:
        """Give back the highest owned partition with nothing outstanding; False if there is none."""
        for n in sorted(self._owned, reverse=True):
            part = self._owned[n]
            if part.outstanding:
                continue
            part.close()
            del self._owned[n]
            self._lag_cache.pop(n, None)
            self._m.partitions.set(len(self._owned))
            log.info(
                "log.partition_released",
                group=self.group, partition=n, committed=part.committed, owned=self.owned,
            )
            return True
        return False

    # --- reading ---------------------------------------------------------------------------------

    def _fill(self, res: PollResult, max_records: int) -> None:
        """Read from every owned partition: an even share each first, then whatever room is left."""
        if not self._owned:
            return
        order = sorted(self._owned)
        k = self._rr % len(order)
        self._rr += 1
        parts = [self._owned[n] for n in order[k:] + order[:k]]
        budget = MAX_POLL_BYTES
        share = max(1, -(-max_records // len(parts)))
        for rnd in (0, 1):
            for part in parts:
                room = max_records - len(res.records)
                if room <= 0 or budget <= 0:
                    return
                budget -= part.fill(res, min(room, share) if rnd == 0 else room, budget)

    def _timestamp_at(self, n: int, offset: int, w: int) -> int | None:
        """Append time of the first record of partition ``n`` at or after ``offset`` (below ``w``)."""
        pdir = seg.partition_dir(self.directory, n)
        hint = self._seek_hints.get(n)
        bases = seg.list_segments(pdir)
        idx = max(0, bisect.bisect_right(bases, offset) - 1)
        for base in bases[idx:]:
            try:
                fd = os.open(seg.segment_path(pdir, base), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                win = seg.FileWindow(fd)
                p = 0
                if hint is not None and hint.base == base and hint.offset <= offset:
                    hr = seg.read_header(win, hint.pos)
                    if (
                        hr.status is seg.Status.OK
                        and hr.header is not None
                        and hr.header.number == hint.offset
                    ):
                        p = hint.pos  # resume the walk where the last lookup found its record
                while True:
                    hr = seg.read_header(win, p)
                    if hr.status is not seg.Status.OK or hr.header is None:
                        break
                    if hr.header.number >= w:
                        return None
                    if hr.header.number >= offset:
                        self._seek_hints[n] = _SeekHint(base, p, hr.header.number)
                        return hr.header.ts_ms
                    p = hr.header.end
            finally:
                os.close(fd)
        return None
