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
from pathlib import Path

from prometheus_client import CollectorRegistry

from lossproof.durable import fsync_dir, make_dirs
from lossproof.log.base import LogError, LogLag, LogReader, PollResult
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
from lossproof.log.embedded.partition import (
    CLAIM_GRACE,
    CLAIM_INTERVAL,
    MAX_POLL_BYTES,
    MEMBER_CLEANUP,
    MEMBER_TIMEOUT,
    POLL_INTERVAL,
    PartitionReader,
    SeekHint,
)
from lossproof.obs.logging import get

log = get(__name__)


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
        self._owned: dict[int, PartitionReader] = {}
        self._free_since: dict[int, float] = {}  # partitions seen free, since when (monotonic)
        self._next_check = 0.0
        self._rr = 0  # which owned partition poll serves first (rotates)
        self._closed = False
        self._lag_cache: dict[int, tuple[int, int | None]] = {}
        self._seek_hints: dict[int, SeekHint] = {}
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
        self._owned[n] = PartitionReader(self.directory, n, self.group, fd, committed, self._m)
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
                        self._seek_hints[n] = SeekHint(base, p, hr.header.number)
                        return hr.header.ts_ms
                    p = hr.header.end
            finally:
                os.close(fd)
        return None
