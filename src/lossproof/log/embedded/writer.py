"""The embedded log writer: segment files, group-commit fsync in a dedicated thread.

How an append becomes durable
    (The thread, the futures, the health state and the probe are :mod:`lossproof.segments.commit`;
    the writes and syncs go through the :mod:`lossproof.segments.fs` file system it is handed.)
    ``append`` queues the record and awaits a future. One writer thread takes *everything* queued
    (a group), assigns consecutive offsets, writes the group with ``os.writev`` and makes it durable
    with one ``fdatasync`` (both release the GIL), then writes the durable watermark and makes it
    durable (``fdatasync`` too) and resolves the group's futures on the event loop
    (``call_soon_threadsafe``). While one group is being fsync'd the next one accumulates, so
    concurrent appends share fsyncs.

Failure
    If a write or fsync fails, every append of that group raises :class:`LogUnavailable`, ``healthy()``
    turns false, and the file is never written again: the writer seals it at the last fsync'd byte
    (recording that the offsets handed to the failed group are void, not lost) and continues in a
    new segment whose base is past every offset ever handed out. A probe retries the roll in the
    background (with backoff), so the writer becomes healthy again once the disk accepts a write and
    an fsync, even without traffic.

Recovery (``start``)
    Non-last segments get a header walk (``full_verify=True``: a CRC check too); any damage there is
    :class:`LogCorrupt`. The last segment is CRC-checked: a bad tail with no valid record after it is
    a torn write and is truncated (logged, counted); a bad record with a valid one after it is
    :class:`LogCorrupt`. The next offset is max(recovered end, durable watermark, reserved offsets
    of a seal), so an offset a reader may have seen is never reused; if the watermark is ahead of
    what was recovered, the missing offsets are logged as lost and readers report them as a
    :class:`LogGap`. If the last segment is sealed (the writer died between sealing and creating the
    next one) a damaged or short tail is cut and re-sealed the same way (the seal keeps its
    ``next_offset``, so the loss shows as a gap), and writing continues in a new segment.
    Payload bit flips inside sealed segments are not looked for at start-up unless ``full_verify``;
    readers find them (CRC) and report them as gaps naming the file and byte.

Threads and processes
    ``append`` must be called from the event loop ``start`` ran on. Readers live in other processes
    (or threads) and see only what the durable watermark covers.

Partitions
    A log directory has ``partitions`` partitions (``p0`` .. ``p{N-1}``); each has at most one writer
    process, which holds the partition's writer lock (flock) for as long as it is open. ``start``
    takes the first partition whose lock is free and writes only there, so N ingest processes can
    share one log directory; a writer that finds every partition taken fails with :class:`LogError`.
    Every record of one writer goes to its one partition, so records of one key keep their order
    as long as they come through one writer process. Across processes there is no order (see
    docs/log.md for why the pipeline does not need it). Partitions beyond ``partitions`` that exist
    on disk (the setting was lowered) are not written, but readers still read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from lossproof import heartbeat
from lossproof.durable import fsync_dir, make_dirs
from lossproof.log.base import LogCorrupt, LogError, LogUnavailable, LogWriter, Position, Receipt
from lossproof.log.embedded import segment as seg
from lossproof.log.embedded.metrics import WriterMetrics
from lossproof.log.embedded.offsets import (
    consumers_dir,
    max_committed,
    min_committed,
    release_lock,
    try_lock,
)
from lossproof.obs.logging import get
from lossproof.segments import framing
from lossproof.segments.commit import CommitFailed, CommitHooks, CommitLimits, GroupCommitter
from lossproof.segments.fs import FS, REAL, InjectedFault
from lossproof.segments.state import InPlaceCell

log = get("lossproof.log.embedded")

MAX_BATCH_RECORDS = 8192


@dataclass(slots=True)
class _Append:
    key: bytes
    value: bytes
    t0: float
    ts_ms: int

    @property
    def size(self) -> int:
        return len(self.value) + len(self.key) + seg.HEADER_SIZE


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, "error").lower()


class EmbeddedLogWriter(LogWriter):
    """Append-only segment files in ``directory/p{i}`` with group-commit fsync, for the first
    partition ``i < partitions`` no other writer holds. One writer per partition."""

    def __init__(
        self,
        directory: Path,
        *,
        partitions: int = 1,
        segment_bytes: int = 64 * 2**20,
        retention_seconds: float = 0.0,
        fs: FS = REAL,
        registry: CollectorRegistry | None = None,
        retention_check_seconds: float = 5.0,
        max_batch_bytes: int = 32 * 2**20,
        full_verify: bool = False,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, not {partitions}")
        self.directory = Path(directory)
        self.partitions = partitions
        self.partition = 0  # the partition this writer holds (known after start)
        self._pdir = seg.partition_dir(self.directory, 0)
        self._segment_bytes = max(1, segment_bytes)
        self._retention_seconds = retention_seconds
        self._retention_check = retention_check_seconds
        self._max_batch_bytes = max_batch_bytes
        self._full_verify = full_verify
        self._fs = fs  # every write and sync of the write path (tests hand in a FaultyFS)
        self.registry = registry if registry is not None else CollectorRegistry()
        self._m = WriterMetrics(self.registry)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._lock_fd: int | None = None
        self._was_started = False
        limits = CommitLimits(MAX_BATCH_RECORDS, max_batch_bytes, probe_backoff=(0.1, 5.0))
        self._gc: GroupCommitter[_Append, Position] = GroupCommitter(
            "lossproof-log-writer",
            self._commit,
            LogUnavailable,
            limits,
            CommitHooks(
                self._probe,
                self._probe_failed,
                self._on_bug,
                self._on_health,
                self._housekeeping,
                lambda: self._retention_at + self._retention_check,
                self._on_close,
            ),
            closed_message="log writer is closed",
        )

        # Owned by the writer thread after start().
        self._fd: int | None = None
        self._wm: InPlaceCell | None = None
        self._base = 0
        self._seg_size = 0
        self._next_offset = 0  # next offset to hand out
        self._durable_next = 0  # every offset below it is fsync'd
        self._durable_pos = 0  # bytes of the active segment that are fsync'd
        self._sealed_bytes = 0
        self._needs_roll = False
        self._retention_at = 0.0

    # --- public API ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop is not None:
            raise LogError("writer already started")
        make_dirs(self.directory)
        self._lock_fd, self.partition = self._lock_partition()
        self._pdir = seg.partition_dir(self.directory, self.partition)
        self._m.partition.set(self.partition)
        try:
            await asyncio.to_thread(self._recover)
        except BaseException:
            release_lock(self._lock_fd)
            self._lock_fd = None
            self._close_files()
            raise
        self._loop = asyncio.get_running_loop()
        self._retention_at = time.monotonic()
        self._gc.start(self._loop)

    async def append(self, key: bytes, value: bytes, seqs: Sequence[tuple[int, int]] = ()) -> Receipt:
        if self._loop is None:
            raise LogError("EmbeddedLogWriter.append before start()")
        key, value = bytes(key), bytes(value)
        if len(key) + len(value) > seg.MAX_PAYLOAD:
            raise ValueError(f"record of {len(key) + len(value)} bytes exceeds {seg.MAX_PAYLOAD}")
        pos: Position = await self._gc.submit(_Append(key, value, time.perf_counter(), seg.now_ms()))
        return self._receipt(pos.partition, pos.offset, seqs)

    def healthy(self) -> tuple[bool, str]:
        return self._gc.healthy()

    def stalled_seconds(self) -> float:
        return self._gc.stalled_seconds()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._gc.close()
        self._close_files()
        if self._lock_fd is not None:
            release_lock(self._lock_fd)
            self._lock_fd = None
        self._gc.set_unhealthy("closed")

    async def __aenter__(self) -> EmbeddedLogWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _lock_partition(self) -> tuple[int, int]:
        """flock the writer lock of the first free partition; returns (fd, partition)."""
        holders: list[str] = []
        for p in range(self.partitions):
            lock = seg.writer_lock_path(self.directory, p)
            if not lock.parent.exists():
                lock.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(lock.parent.parent)
            fd, holder = try_lock(lock)
            if fd is not None:
                return fd, p
            holders.append(holder)
        if self.partitions == 1:
            msg = (
                f"another process is writing the log at {self.directory} (pid {holders[0]}); "
                "to run several ingest processes on one log, raise log.partitions"
            )
        else:
            msg = (
                f"all {self.partitions} partitions of the log at {self.directory} have a writer "
                f"(pids {', '.join(holders)}): raise log.partitions to run more ingest processes"
            )
        raise LogError(msg)

    @property
    def end_offset(self) -> int:
        """The next durable offset (what readers may read up to)."""
        return self._durable_next

    # --- health ----------------------------------------------------------------------------------

    def _on_health(self, reason: str | None) -> None:
        if reason is None:
            if self._was_started:
                log.info(
                    "log.recovered", directory=str(self.directory), partition=self.partition
                )
            self._was_started = True
            self._m.healthy.set(1)
        else:
            self._m.healthy.set(0)

    def _on_bug(self, e: Exception) -> None:
        log.error("log.writer_error", directory=str(self.directory), partition=self.partition)
        self._needs_roll = True

    def _on_close(self) -> None:
        if self._needs_roll:
            # Closing right after a failure: seal the failed segment now, so the next start never
            # trusts what the failed write left behind.
            self._seal_active()

    def _probe(self) -> None:
        if self._needs_roll:
            self._roll()

    def _probe_failed(self, e: Exception) -> str:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return f"log roll after failure failed: {why}"

    # --- writer thread ---------------------------------------------------------------------------

    def _commit(self, batch: list[_Append]) -> list[Position]:
        if self._needs_roll or self._seg_size >= self._segment_bytes:
            try:
                self._roll()
            except OSError as e:
                raise CommitFailed(self._io_failed("roll", e, batch)) from e
        assert self._fd is not None
        first = self._next_offset
        bufs: list[bytes] = []
        for i, r in enumerate(batch):
            bufs.append(seg.encode_header(first + i, r.ts_ms, r.key, r.value))
            bufs.append(r.key)
            bufs.append(r.value)
        self._next_offset = first + len(batch)  # handed out from here on, even if the write fails
        stage = "write"
        try:
            written = self._fs.writev(self._fd, bufs)
            self._seg_size += written
            stage = "fsync"
            t = time.perf_counter()
            self._fs.fdatasync(self._fd)
            self._m.fsync_seconds.observe(time.perf_counter() - t)
            # The watermark is the floor recovery trusts: below it, damage is corruption, never a
            # torn tail to cut. It must be durable before the group is acknowledged, or a power cut
            # brings back an older one and acknowledged records above it could be cut silently. It
            # is written only after the data's fdatasync, so it never claims more than is durable.
            stage = "watermark"
            self._write_watermark(self._next_offset)
        except OSError as e:
            raise CommitFailed(self._io_failed(stage, e, batch, first)) from e
        self._durable_next = self._next_offset
        self._durable_pos = self._seg_size
        now = time.perf_counter()
        for r in batch:
            self._m.append_seconds.observe(now - r.t0)
        self._m.fsync_batch_records.observe(len(batch))
        self._m.end_offset.set(self._durable_next)
        self._m.bytes.set(self._sealed_bytes + self._seg_size)
        part = self.partition
        return [Position(part, first + i) for i in range(len(batch))]

    def _io_failed(self, stage: str, e: OSError, batch: list[_Append], first: int | None = None) -> str:
        """Record a failed group (log, metrics) and leave this segment; returns the reason."""
        path = seg.segment_path(self._pdir, self._base)
        reason = f"log {stage} failed on {path}: {e.strerror or e}"
        label = f"{stage}_{_errname(e)}"
        self._needs_roll = True
        self._m.append_errors.labels(reason=label).inc(len(batch))
        log.error(
            f"log.{stage}_failed",
            path=str(path),
            error=str(e),
            errno=_errname(e),
            injected=isinstance(e, InjectedFault),
            records=len(batch),
            first_offset=first,
            durable_next=self._durable_next,
        )
        return reason

    def _write_watermark(self, durable_next: int) -> None:
        """Durably record that every offset below ``durable_next`` is fsync'd (readers read up to it)."""
        assert self._wm is not None
        self._wm.write(durable_next)

    def _roll(self) -> None:
        """Seal the active segment at its last fsync'd byte and start a new one past every offset."""
        self._seal_active()
        self._open_new_segment(self._next_offset)
        self._needs_roll = False
        self._retention_at = 0.0  # run retention after every roll

    def _seal_active(self) -> None:
        if self._fd is not None:
            seal = seg.Seal(self._durable_pos, self._durable_next, self._next_offset, seg.now_ms())
            seg.write_seal(self._pdir, self._base, seal, fs=self._fs)
            os.close(self._fd)
            self._fd = None
            self._sealed_bytes += self._seg_size
            if self._needs_roll:
                log.warning(
                    "log.segment_sealed_after_failure",
                    path=str(seg.segment_path(self._pdir, self._base)),
                    end_pos=self._durable_pos,
                    void_offsets=[self._durable_next, self._next_offset - 1],
                )

    def _open_new_segment(self, base: int) -> None:
        path = seg.segment_path(self._pdir, base)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size != 0:
                raise LogCorrupt(f"{path}: new segment file already exists and is not empty")
            # The file is empty: there is no data to sync, only its name (the scripts/mutation-gate
            # found the fdatasync that was here to be needed by nothing).
            fsync_dir(self._pdir)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._base = base
        self._seg_size = 0
        self._durable_pos = 0

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._retention_at + self._retention_check:
            self._retention_at = now
            try:
                self._apply_retention()
            except Exception as e:
                log.warning("log.retention_failed", error=str(e))

    def _apply_retention(self) -> None:
        committed = min_committed(self.directory, self.partition)
        if committed is None:
            return
        bases = seg.list_segments(self._pdir)
        deleted = 0
        freed = 0
        cutoff = time.time() - self._retention_seconds
        for i in range(len(bases) - 1):
            base, next_base = bases[i], bases[i + 1]
            if base == self._base or next_base > committed:
                break
            path = seg.segment_path(self._pdir, base)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if st.st_mtime > cutoff:
                break
            os.unlink(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(seg.seal_path(self._pdir, base))
            deleted += 1
            freed += st.st_size
            log.info(
                "log.segment_deleted",
                path=str(path), last_offset=next_base - 1, min_committed=committed,
            )
        if deleted:
            fsync_dir(self._pdir)
            self._sealed_bytes = max(0, self._sealed_bytes - freed)
            self._m.segments_deleted.inc(deleted)
            self._m.bytes.set(self._sealed_bytes + self._seg_size)

    # --- recovery --------------------------------------------------------------------------------

    def _recover(self) -> None:
        for d in (self._pdir, consumers_dir(self.directory)):
            if not d.exists():
                d.mkdir(parents=True, exist_ok=True)
                fsync_dir(d.parent)
        for name in os.listdir(self._pdir):
            if name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._pdir / name)
        self._wm = seg.watermark_cell(self._pdir)
        self._wm.open()
        if self._wm.created:
            fsync_dir(self._pdir)
        cell = self._wm.read()
        watermark = None if cell is None else cell[0]
        if watermark is None and not self._wm.created:
            log.warning("log.watermark_unreadable", path=str(self._wm.path))
        # The durable floor: the watermark file is fsync'd after each group's data and before its
        # acknowledgement, so every acknowledged offset is below it; offsets a consumer group committed
        # were read, hence durable (and cover logs written before the watermark was fsync'd). Below
        # the floor damage is corruption, and offsets are never handed out again.
        wm = max(watermark or 0, max_committed(self.directory, self.partition))

        bases = seg.list_segments(self._pdir)
        sealed_bytes = 0
        for i, base in enumerate(bases[:-1]):
            sealed_bytes += self._check_sealed(base, bases[i + 1])
            # progress: a long log (full_verify reads every byte) is a slow start, not a hung one
            heartbeat.beat()

        if not bases:
            self._next_offset = wm
            self._open_new_segment(wm)
        else:
            last = bases[-1]
            path = seg.segment_path(self._pdir, last)
            seal = seg.read_seal_or_none(self._pdir, last)
            res = seg.scan_segment(path, last, verify_crc=True, limit=seal.end_pos if seal else None)
            # A valid record after a bad one is damage inside fsync'd data only if the bad record
            # is below the durable watermark (or in a sealed segment, fsync'd whole). Past it, the
            # bytes are an unacknowledged group whose pages a power cut persisted out of order: a
            # torn tail, cut below like any other (the watermark is written only after the data's
            # fsync, so an old one errs towards "acknowledged").
            if seal is not None:
                verdict = framing.verdict(res, durable_pos=seal.end_pos)
            else:
                verdict = framing.verdict(res, durable_number=wm)
            if verdict is framing.Verdict.CORRUPT:
                assert res.valid_after is not None
                raise LogCorrupt(
                    f"{path}: bad record at byte {res.bad_pos} ({res.bad_reason}); a valid record "
                    f"(offset {res.valid_after.number}) follows at byte {res.valid_after.pos}"
                )
            if seal is not None:
                if verdict is not framing.Verdict.CLEAN:
                    # The tail of a sealed segment is gone (it was fsync'd: this is lost data). Keep
                    # the valid prefix and re-seal it so it stays consistent; the seal keeps
                    # next_offset, so readers report the missing records as a gap.
                    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        os.ftruncate(fd, res.end_pos)
                        os.fdatasync(fd)
                    finally:
                        os.close(fd)
                    seg.write_seal(
                        self._pdir,
                        last,
                        seg.Seal(res.end_pos, seal.next_offset, seal.reserved_next, seg.now_ms()),
                    )
                    lost = max(0, seal.next_offset - res.next_number)
                    self._m.recovery_lost_records.inc(lost)
                    self._m.recovery_truncated_bytes.inc(max(0, res.file_size - res.end_pos))
                    log.error(
                        "log.recovery_lost_records",
                        path=str(path),
                        first=res.next_number,
                        last=seal.next_offset - 1,
                        records=lost,
                        why=res.bad_reason or "file shorter than its seal",
                    )  # fmt: skip
                sealed_bytes += res.end_pos
                nxt = max(seal.reserved_next, res.next_number, wm)
                self._next_offset = nxt
                self._open_new_segment(nxt)
            else:
                if res.bad_pos is not None:
                    cut = res.file_size - res.bad_pos
                    os.truncate(path, res.bad_pos)
                    self._m.recovery_truncated_bytes.inc(cut)
                    log.warning(
                        "log.recovery_truncated",
                        path=str(path),
                        at_byte=res.bad_pos,
                        bytes=cut,
                        why=res.bad_reason,
                        valid_records_after=res.valid_after is not None,
                    )
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                try:
                    # whatever a killed writer left in the page cache is durable now (through the
                    # file-system seam: a dead disk hangs a start here, as a test needs)
                    self._fs.fdatasync(fd)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
                self._base = last
                self._seg_size = res.end_pos
                self._durable_pos = res.end_pos
                self._next_offset = max(res.next_number, wm)
                if wm > res.next_number:
                    lost = wm - res.next_number
                    self._m.recovery_lost_records.inc(lost)
                    log.error(
                        "log.recovery_lost_records",
                        path=str(path), first=res.next_number, last=wm - 1, records=lost,
                    )
        self._durable_next = self._next_offset
        self._sealed_bytes = sealed_bytes
        self._write_watermark(self._durable_next)
        self._m.end_offset.set(self._durable_next)
        self._m.bytes.set(self._sealed_bytes + self._seg_size)
        log.info(
            "log.opened",
            directory=str(self.directory),
            partition=self.partition,
            next_offset=self._next_offset,
            segment=self._base,
        )

    def _check_sealed(self, base: int, next_base: int) -> int:
        """Check a non-last segment; returns its size. Raises LogCorrupt on any damage."""
        path = seg.segment_path(self._pdir, base)
        seal = seg.read_seal_or_none(self._pdir, base)
        res = seg.scan_segment(path, base, verify_crc=self._full_verify, limit=seal.end_pos if seal else None)
        if seal is not None and res.file_size < seal.end_pos:
            raise LogCorrupt(f"{path}: file is {res.file_size} bytes but its seal says {seal.end_pos}")
        if res.bad_pos is not None:
            raise LogCorrupt(f"{path}: bad record at byte {res.bad_pos} ({res.bad_reason})")
        if res.last is not None and res.last >= next_base:
            raise LogCorrupt(f"{path}: offset {res.last} overlaps the next segment (base {next_base})")
        return res.file_size

    def _close_files(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._wm is not None:
            with contextlib.suppress(OSError):
                self._wm.close()
