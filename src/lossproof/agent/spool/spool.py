"""The agent's durable spool: every report is on disk, fsync'd, before it is sent.

A report gets the next seq and is appended to the active segment file; the append returns only
after the fsync of the data and of the seq counter (many reports made at once share those fsyncs).
From then on the report is *pending* until a response's ``acked`` names it, then it stays on disk in
the *replay window* so it can be sent again if the pipeline loses it after the OK. Files are deleted
whole, oldest first, once every report in them is resolved (acknowledged or dropped) and the window
(time since the file's last acknowledgement, and total bytes) has passed them.

``max_spool_bytes`` bounds pending data: past it the oldest pending reports are dropped, and the drop
is recorded (with a reason) before anything could delete their bytes, so the server is told exactly
which seqs the agent gave up on. Nothing leaves the spool silently.

Thread-safe: one lock around everything (appends, reads, acks). The fsyncs happen under it; that
only delays the other threads by the duration of a disk flush.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lossproof.agent import ranges as rg
from lossproof.agent.ranges import SeqRange, Tagged
from lossproof.agent.spool import state as state_mod
from lossproof.agent.spool.counter import SeqCounter
from lossproof.agent.spool.format import (
    SEGMENT_DIR,
    Codec,
    check_record,
    list_segments,
    scan_segment,
    segment_path,
)
from lossproof.durable import fdatasync_path, fsync_dir, make_dirs
from lossproof.obs.logging import get
from lossproof.segments.fs import FS, REAL
from lossproof.segments.lock import try_lock

log = get(__name__)

# Spool files kept open for reading besides the active one.
MAX_OPEN_FOR_READ = 8

SPOOL_FULL = "spool_full"
WINDOW_EXPIRED = "replay_window_expired"
# A seq the counter says was handed out has no intact record: the disk lost or damaged it.
DAMAGED = "spool_damaged"
# Points dropped in the agent's memory before they could be spooled (Spool.record_lost).
UNSPOOLED = "unspooled"
# StatsD packets the kernel dropped because the agent did not read them in time (Spool.record_lost).
STATSD_DROPPED = "statsd_dropped"


class SpoolError(Exception):
    """The spool cannot do what was asked (disk error, locked by another agent, bad state)."""


class SpoolFull(SpoolError):
    """An append asked for room (``require_room``) and the pending reports would exceed
    ``max_spool_bytes``: nothing was appended."""


@dataclass(frozen=True, slots=True)
class SpoolLimits:
    max_spool_bytes: int = 256 * 2**20
    window_seconds: float = 6 * 3600.0
    window_bytes: int = 2**30
    segment_bytes: int = 8 * 2**20


@dataclass(frozen=True, slots=True)
class SpoolStats:
    pending_reports: int
    pending_bytes: int
    oldest_pending_ms: int  # 0 when nothing is pending
    first_pending_seq: int  # 0 when nothing is pending
    last_seq: int  # highest seq ever handed out
    window_reports: int  # on disk, no longer pending (acknowledged, or dropped and not yet deleted)
    window_bytes: int
    disk_bytes: int
    segments: int


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening the spool found."""

    last_seq: int
    pending: int
    truncated_bytes: int  # torn or damaged bytes cut off segment tails
    lost: list[Tagged] = field(default_factory=list)  # seqs with no intact record, now dropped
    damaged_bytes: int = 0  # damaged bytes inside segments, skipped (the records after them kept)


class _Segment:
    """One segment file and the index of its records (seq = first_seq + index). A seq whose record
    was lost to damage inside the file (a *hole*) has an entry of size 0 at the next record."""

    __slots__ = ("acked", "created", "end", "fd", "first_seq", "holes", "id", "path", "pending", "positions")

    def __init__(self, seg_id: int, path: Path, fd: int, first_seq: int) -> None:
        self.id = seg_id
        self.path = path
        self.fd = fd  # -1 while closed: only the active file and a few recently read ones stay open
        self.first_seq = first_seq
        self.positions = array("Q")
        self.created = array("q")
        self.end = 0  # bytes holding valid records; the next append goes here
        self.pending = 0  # records not yet acknowledged or dropped
        self.acked = 0  # records acknowledged (they need the replay window)
        self.holes: list[SeqRange] = []  # seqs among first_seq..last_seq with no record

    @property
    def n(self) -> int:
        return len(self.positions)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.positions) - 1

    def index(self, seq: int) -> int | None:
        """Where ``seq``'s record is in this file; None if it holds none (a hole is none)."""
        i = seq - self.first_seq
        if not 0 <= i < len(self.positions):
            return None
        return None if self.holes and rg.contains(self.holes, seq) else i

    def size_of(self, i: int) -> int:
        nxt = self.positions[i + 1] if i + 1 < len(self.positions) else self.end
        return nxt - self.positions[i]

    def trim_from(self, seq: int) -> None:
        """Forget records with seqs >= ``seq`` (a later segment holds the durable copy)."""
        keep = max(0, seq - self.first_seq)
        if keep < len(self.positions):
            self.end = self.positions[keep]
            del self.positions[keep:]
            del self.created[keep:]
            self.holes = rg.clip(self.holes, 0, seq - 1)

    def on_disk(self) -> list[SeqRange]:
        """The seqs this file holds a record of."""
        return rg.subtract([(self.first_seq, self.last_seq)], self.holes) if self.n else []


def new_incarnation_id() -> str:
    """128 random bits, hex: no two spools (or hosts) pick the same one."""
    return secrets.token_hex(16)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Spool:
    """Open (and recover) the spool in ``directory``. One process at a time: the directory is locked."""

    def __init__(
        self,
        directory: Path,
        limits: SpoolLimits | None = None,
        clock: Callable[[], int] = _now_ms,
        on_drop: Callable[[int, str], None] | None = None,
        fs: FS = REAL,
    ) -> None:
        self.dir = directory
        self._fs = fs  # the appends' writes and syncs (tests may hand in a FaultyFS)
        self.limits = limits or SpoolLimits()
        self.clock = clock
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._codec = Codec()
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._pending: dict[int, int] = {}  # seq -> bytes on disk, in seq order
        self._pending_bytes = 0
        self._open_for_read: list[_Segment] = []  # least recently used first
        self._closed = False
        self._lock_fd = self._take_lock()
        try:
            (directory / SEGMENT_DIR).mkdir(parents=True, exist_ok=True)
            self._counter = SeqCounter(directory)
            # the names of the new files must survive a power loss like their data (the directories
            # themselves: make_dirs in _take_lock)
            fsync_dir(directory)
            self.recovery = self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- opening ------------------------------------------------------------------------------------

    def _take_lock(self) -> int:
        # every directory it creates, not only the last, is synced into its parent: a spool whose
        # parent directory was new too must not vanish in a power cut with everything it held
        make_dirs(self.dir)
        fd, holder = try_lock(self.dir / "lock", str(os.getpid()))
        if fd is None:
            # Two agents on one spool would hand out the same seqs: refuse.
            raise SpoolError(f"spool {self.dir} is in use by another agent (pid {holder})")
        return fd

    def _recover(self) -> Recovery:
        try:
            st = state_mod.load(self.dir)
        except state_mod.StateError as e:
            raise SpoolError(str(e)) from None
        fresh = st is None and self._counter.value == 0 and not list_segments(self.dir)
        if st is None and not fresh:
            # Without it, which reports were acknowledged, and the incarnation their seqs belong to,
            # are unknown: resending them under a made-up incarnation would count stored reports
            # twice and leave the real one's unacknowledged seqs missing for good.
            raise SpoolError(
                f"{self.dir / state_mod.NAME} is missing, but the spool holds reports (seq counter at"
                f" {self._counter.value}, {len(list_segments(self.dir))} segment files): restore the"
                " file, or move the spool directory aside to start a new incarnation"
            )
        self._st = st or state_mod.SpoolState()
        if fresh:
            # Made with the spool and saved (fsync'd) below before any seq is handed out.
            self._st.incarnation = new_incarnation_id()
        floor = self._st.floor
        truncated = damaged = 0
        for seg_id in list_segments(self.dir):
            path = segment_path(self.dir, seg_id)
            # past damage, a record above the counter is no report of this spool (stale bytes of
            # another one that a file system showed after a crash): only the last append, in the
            # newest file, can be above it, and damage ends that file's run of records anyway
            scan = scan_segment(path, max_seq=self._counter.value)
            for at, size in scan.damaged:
                # damage inside the file: its records are lost (recorded below, with the reason),
                # those after it are intact and kept; the bytes stay, to be skipped again
                damaged += size
                log.warning("spool.damaged", segment=str(path), at=at, skipped=size)
            if scan.valid_end < scan.file_size:
                # A torn tail (crash mid-append), or damage with nothing valid after it.
                truncated += scan.file_size - scan.valid_end
                log.warning(
                    "spool.truncated",
                    segment=str(path),
                    at=scan.valid_end,
                    cut=scan.file_size - scan.valid_end,
                )
                with open(path, "r+b") as f:
                    f.truncate(scan.valid_end)
                    os.fsync(f.fileno())
            recs = [r for r in scan.records if r.seq >= floor]
            if not recs or recs[-1].seq < floor:
                # Nothing unresolved (a file whose deletion a crash interrupted, or an empty one).
                path.unlink()
                continue
            # Records a killed agent wrote but never synced read back valid from the page cache;
            # they are adopted (and the seq counter moves past them), so make them durable now.
            fdatasync_path(path)
            seg = _Segment(seg_id, path, -1, recs[0].seq)
            prev_end = recs[0].pos
            for r in recs:
                missing = r.seq - seg.first_seq - seg.n
                if missing:
                    # entries of the damaged bytes, none a record: the record before keeps its size
                    seg.holes.append((r.seq - missing, r.seq - 1))
                    seg.positions.extend([prev_end] * missing)
                    seg.created.extend([r.created_ms] * missing)
                seg.positions.append(r.pos)
                seg.created.append(r.created_ms)
                prev_end = r.pos + r.size
            seg.end = scan.valid_end
            # An append that failed was retried in a newer file with the same seqs: that copy wins.
            for prev in self._segments:
                if prev.n and prev.last_seq >= seg.first_seq:
                    prev.trim_from(seg.first_seq)
            self._segments.append(seg)
        fsync_dir(self.dir / SEGMENT_DIR)

        on_disk = rg.normalize(r for s in self._segments for r in s.on_disk())
        top_record = on_disk[-1][1] if on_disk else 0
        st_top = max(
            [b for _, b in self._st.acked] + [b for _, b, _ in self._st.dropped] + [floor - 1], default=0
        )
        self.last_seq = max(self._counter.value, top_record, st_top)
        acked = rg.normalize(self._st.acked)
        dropped = rg.normalize((a, b) for a, b, _ in self._st.dropped)
        resolved = rg.normalize([*acked, *dropped])
        # Every seq from the floor up to the last one handed out is on disk, acknowledged or dropped;
        # any other was handed out and its report is gone: say so rather than lose it silently.
        lost_ranges = rg.subtract(rg.subtract([(floor, self.last_seq)], on_disk), resolved)
        lost: list[Tagged] = [(a, b, DAMAGED) for a, b in lost_ranges]
        # acknowledged reports whose records damage took: resolved already, but a later replay
        # request for one must be answered with why it is gone
        damaged_acked = rg.intersect(rg.normalize(h for s in self._segments for h in s.holes), acked)
        if damaged_acked:
            self._st.dropped = rg.add_tagged(self._st.dropped, [(a, b, DAMAGED) for a, b in damaged_acked])
        if lost:
            log.warning("spool.lost_on_recovery", ranges=[[a, b] for a, b, _ in lost], reason=DAMAGED)
            if self._on_drop is not None:
                self._on_drop(rg.count(lost_ranges), DAMAGED)
            self._st.dropped = rg.add_tagged(self._st.dropped, lost)
            self._st.unreported = rg.add_tagged(self._st.unreported, lost)
            dropped = rg.normalize([*dropped, *lost_ranges])
            resolved = rg.normalize([*resolved, *lost_ranges])

        now = self.clock()
        for seg in self._segments:
            if not seg.n:
                continue
            mine = [(seg.first_seq, seg.last_seq)]
            seg.acked = rg.count(rg.intersect(mine, acked))
            for a, b in rg.subtract(mine, resolved):
                for seq in range(a, b + 1):
                    size = seg.size_of(seq - seg.first_seq)
                    self._pending[seq] = size
                    self._pending_bytes += size
                    seg.pending += 1
            if seg.pending == 0:
                self._st.acked_at.setdefault(seg.id, now)
        # dict order is insertion order: keep pending in seq order across segments
        self._pending = dict(sorted(self._pending.items()))
        live = {s.id for s in self._segments}
        self._st.acked_at = {k: v for k, v in self._st.acked_at.items() if k in live}
        self._st.acked = rg.clip(acked, floor, 2**63)
        try:
            self._save()
        except SpoolError as e:
            if fresh:
                raise  # the incarnation must be durable before any seq of it is handed out
            # On a full disk the agent must still start, to send what it holds: what changed (seqs
            # found lost, files found resolved) is found again at the next start, and made durable
            # by the next save that works.
            log.error("spool.state_save_failed", error=str(e))
        self._counter.advance(self.last_seq)
        self._next_id = max([s.id for s in self._segments] + list_segments(self.dir) + [0]) + 1
        return Recovery(self.last_seq, len(self._pending), truncated, lost, damaged)

    # -- writing ------------------------------------------------------------------------------------

    def _new_segment(self) -> _Segment:
        seg_id = self._next_id
        self._next_id += 1
        path = segment_path(self.dir, seg_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fsync_dir(self.dir / SEGMENT_DIR)  # the file's name must survive a crash as its data will
        seg = _Segment(seg_id, path, fd, self.last_seq + 1)
        self._segments.append(seg)
        return seg

    def append(self, builders: Sequence[Callable[[int], bytes]], require_room: bool = False) -> list[int]:
        """Durably append one report per builder; ``builder(seq)`` returns the report's bytes.

        Returns the seqs, consecutive, once the reports and the seq counter are fsync'd (one fsync
        each for the whole group). On a disk error raises :class:`SpoolError` and hands out no seq:
        the caller still has its data and may try again. By default a full spool makes room by
        dropping its oldest pending reports (recorded as lost); with ``require_room`` it raises
        :class:`SpoolFull` instead, for a caller whose sender can keep the data and retry."""
        if not builders:
            return []
        with self._lock:
            self._check_open()
            if require_room and self._pending_bytes >= self.limits.max_spool_bytes:
                raise SpoolFull(self._full_message())
            try:
                seg = self._active
                if seg is None or seg.end >= self.limits.segment_bytes:
                    if seg is not None:
                        self._close_fd(seg)  # full: from now on it is only read
                    seg = self._active = self._new_segment()
                now = self.clock()
                first = self.last_seq + 1
                recs = [self._codec.encode(first + i, now, b(first + i)) for i, b in enumerate(builders)]
                room = self.limits.max_spool_bytes - self._pending_bytes
                # an empty spool takes a request larger than the limit: it could never go in otherwise
                if require_room and self._pending and sum(map(len, recs)) > room:
                    raise SpoolFull(self._full_message())
                self._fs.pwrite_all(seg.fd, b"".join(recs), seg.end)
                self._fs.fsync(seg.fd)
            except OSError as e:
                if self._active is not None:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._active.fd, self._active.end)
                # After a failed write or fsync the file's state is unknown: never append to it again.
                if self._active is not None:
                    self._close_fd(self._active)
                self._active = None
                raise SpoolError(f"cannot write the spool in {self.dir}: {e}") from None
            last = first + len(recs) - 1
            try:
                self._counter.advance(last)
            except OSError as e:
                # The reports are durable; the counter only guards against losing them later.
                log.error("spool.counter_write_failed", error=str(e), seq=last)
            if seg.n == 0:
                seg.first_seq = first
            pos = seg.end
            for i, rec in enumerate(recs):
                seg.positions.append(pos)
                seg.created.append(now)
                pos += len(rec)
                self._pending[first + i] = len(rec)
                self._pending_bytes += len(rec)
                seg.pending += 1
            seg.end = pos
            self.last_seq = last
            self._enforce_limit(now)
            return list(range(first, last + 1))

    def _full_message(self) -> str:
        return (
            f"spool {self.dir} is full: {self._pending_bytes} bytes pending, max_spool_bytes "
            f"{self.limits.max_spool_bytes}"
        )

    def _enforce_limit(self, now: int) -> None:
        over: list[int] = []
        while self._pending_bytes > self.limits.max_spool_bytes and len(self._pending) > 1:
            seq = next(iter(self._pending))
            self._unpend(seq, now)
            over.append(seq)
        if over:
            try:
                self._record_drop(rg.from_seqs(over), SPOOL_FULL)
            except SpoolError as e:
                # The reports are appended and their seqs handed out: do not fail the append. The
                # drop stays in memory (and the dropped records on disk until a save succeeds,
                # because deleting files needs a save first), so nothing is lost unaccounted.
                log.error("spool.state_write_failed", error=str(e))

    def _unpend(self, seq: int, now: int, acked: bool = False) -> None:
        size = self._pending.pop(seq)
        self._pending_bytes -= size
        seg = self._locate(seq)
        if seg is not None:
            seg.pending -= 1
            if acked:
                seg.acked += 1
            if seg.pending == 0:
                self._st.acked_at[seg.id] = now

    def _record_drop(self, dropped: list[SeqRange], reason: str) -> None:
        # a reason may carry a path that is not UTF-8 (surrogate-escaped by Python): the state and
        # the requests are msgpack, which refuses such text, and would then refuse every save
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
        tagged = [(a, b, reason) for a, b in dropped]
        for a, b in dropped:
            log.warning("spool.dropped", first=a, last=b, reason=reason)
        if self._on_drop is not None:
            self._on_drop(rg.count(dropped), reason)
        self._st.dropped = rg.add_tagged(self._st.dropped, tagged)
        self._st.unreported = rg.add_tagged(self._st.unreported, tagged)
        self._save()

    @property
    def incarnation(self) -> tuple[str, int]:
        """The incarnation id and the first seq of its seq space."""
        with self._lock:
            return self._st.incarnation, self._st.first_seq

    def new_incarnation(self, replacing: str) -> tuple[str, int]:
        """Start a new incarnation (the server found one of this agent's seqs stored with other
        content: another agent uses the id, or this spool was copied). The reports held keep their
        seqs; the new seq space starts at the lowest pending one. Durable before it returns. Does
        nothing if ``replacing`` is no longer the current incarnation (another request already
        started a new one)."""
        with self._lock:
            self._check_open()
            if self._st.incarnation != replacing:
                return self._st.incarnation, self._st.first_seq
            old = (self._st.incarnation, self._st.first_seq)
            self._st.incarnation = new_incarnation_id()
            self._st.first_seq = next(iter(self._pending), self.last_seq + 1)
            try:
                self._save()
            except SpoolError:
                self._st.incarnation, self._st.first_seq = old
                raise
            log.warning(
                "spool.new_incarnation",
                old=replacing,
                incarnation=self._st.incarnation,
                first_seq=self._st.first_seq,
            )
            return self._st.incarnation, self._st.first_seq

    def _save(self) -> None:
        try:
            state_mod.save(self.dir, self._st)
        except OSError as e:
            raise SpoolError(f"cannot write the spool state in {self.dir}: {e}") from None

    # -- reading ------------------------------------------------------------------------------------

    def _locate(self, seq: int) -> _Segment | None:
        i = bisect_right(self._segments, seq, key=lambda s: s.first_seq) - 1
        while i >= 0:
            seg = self._segments[i]
            if seg.index(seq) is not None:
                return seg
            if seg.n:
                return None
            i -= 1  # an empty (just rolled or trimmed) file: look further back
        return None

    def _read_one(self, seq: int) -> bytes | None:
        seg = self._locate(seq)
        if seg is None:
            return None
        i = seg.index(seq)
        assert i is not None
        size = seg.size_of(i)
        try:
            data = os.pread(self._fd(seg), size, seg.positions[i])
        except OSError as e:
            log.error("spool.read_failed", seq=seq, error=str(e))
            return None
        rec = check_record(data, 0)
        if rec is None or rec.seq != seq:
            return None
        return self._codec.decode_payload(data)

    def _fd(self, seg: _Segment) -> int:
        """A descriptor to read ``seg``. A long window at a small segment size means many files, so
        only a few stay open (descriptors are a limited resource; reopening costs microseconds)."""
        if seg.fd >= 0:
            if seg in self._open_for_read:
                self._open_for_read.remove(seg)
                self._open_for_read.append(seg)
            return seg.fd
        seg.fd = os.open(seg.path, os.O_RDONLY)
        self._open_for_read.append(seg)
        while len(self._open_for_read) > MAX_OPEN_FOR_READ:
            old = self._open_for_read.pop(0)
            os.close(old.fd)
            old.fd = -1
        return seg.fd

    def read(self, seqs: Iterable[int]) -> list[tuple[int, bytes]]:
        """The report bytes of those ``seqs`` still on disk. A pending report whose record no longer
        reads back intact is dropped (reason ``spool_damaged``) instead of being retried forever."""
        out: list[tuple[int, bytes]] = []
        damaged: list[int] = []
        with self._lock:
            self._check_open()
            for seq in dict.fromkeys(seqs):
                data = self._read_one(seq)
                if data is not None:
                    out.append((seq, data))
                elif seq in self._pending:
                    damaged.append(seq)
            if damaged:
                now = self.clock()
                for seq in damaged:
                    self._unpend(seq, now)
                self._record_drop(rg.from_seqs(damaged), DAMAGED)
        return out

    def pending_seqs(self, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
        """Up to ``limit`` pending seqs, oldest first, skipping ``exclude`` (those in flight)."""
        out: list[int] = []
        with self._lock:
            for seq in self._pending:
                if seq not in exclude:
                    out.append(seq)
                    if len(out) >= limit:
                        break
        return out

    def is_pending(self, seq: int) -> bool:
        with self._lock:
            return seq in self._pending

    # -- responses ----------------------------------------------------------------------------------

    def ack(self, seqs: Iterable[int]) -> int:
        """Acknowledged durable by the server: no longer pending (still on disk for the window).
        Returns how many were pending."""
        with self._lock:
            self._check_open()
            now = self.clock()
            newly = [s for s in dict.fromkeys(seqs) if s in self._pending]
            for seq in newly:
                self._unpend(seq, now, acked=True)
            if not newly:
                return 0
            got = rg.from_seqs(newly)
            self._st.acked = rg.normalize([*self._st.acked, *got])
            self._save()
            return len(newly)

    def drop(self, seqs: Iterable[int], reason: str) -> int:
        """Give up on ``seqs`` (e.g. the server refused them): they are reported as dropped. Also for
        seqs no longer pending (a replay the server refused). Returns how many were pending."""
        with self._lock:
            self._check_open()
            now = self.clock()
            gone = [s for s in dict.fromkeys(seqs) if 1 <= s <= self.last_seq]
            was_pending = [s for s in gone if s in self._pending]
            for seq in was_pending:
                self._unpend(seq, now)
            if gone:
                self._record_drop(rg.from_seqs(gone), reason)
            return len(was_pending)

    def record_lost(self, reason: str) -> int:
        """Give data the agent lost before it could be spooled (points dropped from memory while the
        spool could not be written, StatsD packets the kernel dropped) a seq of its own, with no
        record, dropped with ``reason`` (how much, and why): the server then counts it lost, as any
        dropped report, where without a seq it could never know of it. Returns the seq.

        Raises :class:`SpoolError`, recording nothing, if the seq counter cannot be written (it is
        written in place, so a full disk does not stop it). If only the state cannot be saved, the
        drop is still carried to the server from memory, and the next save makes it durable; an
        agent restarted before then finds the seq without a record and reports it lost as damaged."""
        with self._lock:
            self._check_open()
            seq = self.last_seq + 1
            try:
                self._counter.advance(seq)
            except OSError as e:
                raise SpoolError(f"cannot write the spool's seq counter in {self.dir}: {e}") from None
            self.last_seq = seq
            # A file's records have consecutive seqs (a gap in one reads as damage): the next append
            # starts a new file, after this seq that has no record.
            if self._active is not None and self._active.n:
                self._close_fd(self._active)
                self._active = None
            try:
                self._record_drop([(seq, seq)], reason)
            except SpoolError as e:
                log.error("spool.state_save_failed", error=str(e), lost_seq=seq)
            return seq

    def unreported_drops(self) -> list[Tagged]:
        """Dropped ranges to carry in requests until a 200 answers one that carried them."""
        with self._lock:
            return list(self._st.unreported)

    def dropped(self) -> list[Tagged]:
        """Every range given up on, with its reason (the most recent ones, see ``MAX_DROPPED_RANGES``)."""
        with self._lock:
            return list(self._st.dropped)

    def drops_reported(self, carried: list[Tagged]) -> None:
        """A 200 answered a request that carried ``carried``: the server has recorded them."""
        with self._lock:
            self._check_open()
            before = self._st.unreported
            after = rg.subtract_tagged(before, rg.normalize((a, b) for a, b, _ in carried))
            if after != before:
                self._st.unreported = after
                self._save()

    def plan_replay(self, wanted: list[SeqRange]) -> list[int]:
        """The server is missing ``wanted`` (it lost them after acknowledging, or never got them).

        Returns the seqs to send again (on disk, not pending: pending ones are being sent anyway).
        Seqs no longer on disk are reported as dropped: with the reason they were dropped for, or
        ``replay_window_expired`` if they were acknowledged and have left the window."""
        resend: list[int] = []
        gone: list[SeqRange] = []
        with self._lock:
            self._check_open()
            floor = self._st.floor
            given_up = rg.normalize((a, b) for a, b, _ in self._st.dropped)
            for a, b in rg.normalize(wanted):
                a, b = max(a, 1), min(b, self.last_seq)
                if a > b:
                    continue
                if a < floor:
                    gone.append((a, min(b, floor - 1)))
                for seq in range(max(a, floor), b + 1):
                    if seq in self._pending:
                        continue
                    # a dropped report is not sent again even if its bytes are still on disk: the
                    # server was (or will be) told it is lost, and why
                    if self._locate(seq) is not None and not rg.contains(given_up, seq):
                        resend.append(seq)
                    else:
                        gone.append((seq, seq))
            gone = rg.normalize(gone)
            if gone:
                known = rg.intersect_tagged(self._st.dropped, gone)
                fresh = rg.subtract(gone, rg.normalize((a, b) for a, b, _ in known))
                tagged = known + [(a, b, WINDOW_EXPIRED) for a, b in fresh]
                dropped = rg.add_tagged(self._st.dropped, tagged)
                unreported = rg.add_tagged(self._st.unreported, tagged)
                if dropped != self._st.dropped or unreported != self._st.unreported:
                    for a, b, why in tagged:
                        log.warning("spool.replay_unavailable", first=a, last=b, reason=why)
                    if fresh and self._on_drop is not None:
                        self._on_drop(rg.count(fresh), WINDOW_EXPIRED)
                    self._st.dropped, self._st.unreported = dropped, unreported
                    self._save()
        return resend

    # -- upkeep -------------------------------------------------------------------------------------

    def maintain(self) -> int:
        """Delete whole files that left the replay window (time or bytes). Returns files deleted."""
        with self._lock:
            self._check_open()
            now = self.clock()
            window_ms = self.limits.window_seconds * 1000
            done = [s for s in self._segments if s is not self._active and s.pending == 0]
            resolved_bytes = sum(s.end for s in done)
            doomed: list[_Segment] = []
            for seg in self._segments:
                if seg is self._active or seg.pending:
                    break  # only ever a prefix: everything below the floor is resolved
                expired = seg.acked == 0 or now - self._st.acked_at.get(seg.id, now) >= window_ms
                if not expired and resolved_bytes <= self.limits.window_bytes:
                    break
                doomed.append(seg)
                resolved_bytes -= seg.end
            if not doomed:
                return 0
            rest = self._segments[len(doomed) :]
            # The floor must be durable before the files go: below it, no record is expected on disk.
            self._st.floor = max(self._st.floor, rest[0].first_seq if rest else self.last_seq + 1)
            self._st.acked = rg.clip(self._st.acked, self._st.floor, 2**63)
            for seg in doomed:
                self._st.acked_at.pop(seg.id, None)
            self._save()
            for seg in doomed:
                self._close_fd(seg)
                with contextlib.suppress(FileNotFoundError):
                    seg.path.unlink()
            fsync_dir(self.dir / SEGMENT_DIR)
            self._segments = rest
            return len(doomed)

    def stats(self) -> SpoolStats:
        with self._lock:
            first = next(iter(self._pending), 0)
            oldest = 0
            if first:
                seg = self._locate(first)
                i = seg.index(first) if seg else None
                oldest = seg.created[i] if seg is not None and i is not None else 0
            disk = sum(s.end for s in self._segments)
            window_reports = sum(s.n - s.pending for s in self._segments)
            return SpoolStats(
                pending_reports=len(self._pending),
                pending_bytes=self._pending_bytes,
                oldest_pending_ms=oldest,
                first_pending_seq=first,
                last_seq=self.last_seq,
                window_reports=window_reports,
                window_bytes=disk - self._pending_bytes,
                disk_bytes=disk,
                segments=len(self._segments),
            )

    def _close_fd(self, seg: _Segment) -> None:
        if seg in self._open_for_read:
            self._open_for_read.remove(seg)
        if seg.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(seg.fd)
            seg.fd = -1

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError("spool is closed")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for seg in self._segments:
                self._close_fd(seg)
            self._counter.close()
            os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
