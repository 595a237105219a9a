"""Writing the journal: appends group-committed (one write and one fdatasync for every request
that arrived during the previous one), rolls, and the durable watermark."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lossproof.durable import fdatasync_path, fsync_dir, make_dirs
from lossproof.fallback.journal.format import (
    MAX_PAYLOAD,
    NO_PREV,
    Entry,
    JournalUnavailable,
    Position,
    acquire_writer_lock,
    encode_entry,
    encode_record,
    encode_segment_header,
    list_segments,
    read_watermark,
    scan_tail,
    segment_path,
    watermark_cell,
)
from lossproof.obs.logging import get
from lossproof.segments.commit import CommitFailed, CommitHooks, CommitLimits, GroupCommitter
from lossproof.segments.framing import HEADER_SIZE
from lossproof.segments.fs import FS, REAL, InjectedFault

log = get(__name__)

# What the probe of an unhealthy writer writes (then cuts off again): as much as the write that
# failed, so that it is healthy again once that write would fit, within these bounds.
PROBE_BYTES = (4096, 2**20)

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
    bytes of a failed write are never read, unless its segment holds no record yet: that one is cut
    back to its header and written again, so a full disk costs at most one new (header-only) file
    however long it lasts (:meth:`_after_failed_write`). While unhealthy it probes the disk every
    second (:meth:`_probe`), without creating a file unless it must leave its segment. The
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
            CommitHooks(probe=self._probe, on_bug=self._on_bug, on_health=self._on_health),
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
        self._probe_bytes = PROBE_BYTES[0]

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
        self._probe_bytes = min(max(pos - self._seg_size, PROBE_BYTES[0]), PROBE_BYTES[1])
        try:
            self._seg_size += self._fs.writev(self._fd, bufs)
            t = time.perf_counter()
            self._fs.fdatasync(self._fd)
            took = time.perf_counter() - t
        except OSError:
            self._after_failed_write()
            raise
        self._durable_pos = self._seg_size
        self._publish_watermark()
        if self._on_commit is not None:
            self._on_commit(len(batch), took)
        return positions

    def _after_failed_write(self) -> None:
        """Make sure the bytes of a failed write (never acknowledged) are never read.

        A segment that holds no record yet is kept: cut back to its header, it is written again from
        there. Everything it held before the failed write is its header, fsync'd before the file got
        its name, so no acknowledged byte can have gone with pages a failed fsync dropped, and the
        next records (new indices, after any byte the cut missed) must be fsync'd before they count.
        Rolling instead would leave a header-only file behind per attempt for as long as the disk
        stays full. Any other segment is left (its failed bytes cut off, best effort: if that fails
        too, a restart may find them and replay them, which is harmless): the next segment's
        ``prev_end`` excludes them for good."""
        assert self._fd is not None
        if self._durable_pos == HEADER_SIZE:
            try:
                os.ftruncate(self._fd, HEADER_SIZE)
                os.lseek(self._fd, HEADER_SIZE, os.SEEK_SET)  # (writev writes at the file offset)
            except OSError:
                pass  # the failed bytes may still be there: leave the segment after all
            else:
                self._seg_size = HEADER_SIZE
                return
        self._needs_roll = True
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._durable_pos)

    def _probe(self) -> None:
        """Raises while the disk still refuses (the group-commit engine calls it every second while
        unhealthy). A writer that must leave its segment tries to roll (a failed roll leaves no
        file); one that may stay writes as many zeros as the last write (:data:`PROBE_BYTES`) after
        the segment's durable end, fsyncs them and cuts them off again, so a disk that stays full gets
        no new file at all. (Zeros left by a crash before the cut are a torn tail, never a record.)"""
        if self._needs_roll or self._fd is None:
            self._roll()
            return
        fd, end = self._fd, self._durable_pos
        try:
            self._fs.pwrite_all(fd, bytes(self._probe_bytes), end)
            self._fs.fdatasync(fd)
        finally:
            try:
                os.ftruncate(fd, end)  # on a full disk, also the part a short write did allocate
            except OSError:
                self._needs_roll = True  # the zeros stay: the next header's prev_end excludes them
                raise

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
