"""The worker's background compaction: packs the store's small chunks (see ``Store.compact``).

It runs in a process of its own (``lossproof compactor``, started and watched by the worker:
:class:`CompactorProcess`) on a store handle of its own, one bounded transaction at a time, so the
worker's writes wait for one compaction transaction at most. It keeps going while a call says there
is more to do, then sleeps ``interval``. A failure is logged and retried later: compaction never
decides whether a batch is stored, only how it is laid out.

Why a process: as a thread of the worker it shared the worker's GIL, and it is about half of the
worker's CPU (a msgpack backlog: 20 of 43 s). The worker stored 749 k points/s with it and 1.23 M
without it; on another core it no longer takes the worker's turns (that backlog: 38.5 s, now 31 s).
It runs at nice 10: when CPU is short, acknowledging and storing come first. Each call's result
comes back to the worker as one JSON line on the child's stdout, so the worker's ``/metrics`` keeps
the compaction series. The child dies with the worker (PR_SET_PDEATHSIG): a compaction killed at any
instant leaves the old chunks or the new ones, never both or neither (its write is one transaction).

While the worker is behind (a backlog in the log), the compactor steps aside: at most one step every
``BEHIND_STEP_EVERY`` seconds, the worker telling it on the child's stdin (``behind`` /
``caught-up`` lines). Its steps hold the store's write lock, and a worker draining a backlog spent
~17 % of its time waiting for it; storing comes first, and compaction catches up once the backlog is
gone (the points are stored and queryable either way: compaction only changes their layout). The
one step every few seconds keeps compaction going through a long overload.

When it has nothing to compact and the worker is not behind, it scrubs: every stored chunk and part
checked again and the damaged ones set aside (:mod:`lossproof.worker.scrub`).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

import msgspec
from prometheus_client import CollectorRegistry, Counter

from lossproof.children import die_with_parent
from lossproof.obs.logging import get
from lossproof.store.base import Store, StoreUnavailable
from lossproof.worker.memory import release_memory
from lossproof.worker.quarantine_metric import quarantined_counter
from lossproof.worker.scrub import Scrub

if TYPE_CHECKING:
    from lossproof.config import Config

log = get(__name__)


# A compaction step decodes, sorts and encodes up to ~500,000 points in this thread (tens of MiB of
# numpy arrays). glibc keeps what this thread freed in its own arena, where the worker's main thread
# does not reuse it, so it came on top of the main thread's biggest batch: the worker's peak RSS
# with big remote-write bodies went from 319 MiB without compaction to 358-398 MiB with it. Giving
# it back after each step (release_memory) brought that to ~290 MiB
# (tests/worker/test_worker_memory.py); the call costs far less than the step.


class CompactorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.chunks = Counter(
            "lossproof_store_compacted_chunks",
            "Chunks read (in) and written (out) by compaction.",
            ["direction"],
            registry=registry,
        )
        self.bytes = Counter(
            "lossproof_store_compacted_bytes",
            "Chunk bytes read (in) and written (out) by compaction.",
            ["direction"],
            registry=registry,
        )
        self.points = Counter("lossproof_store_compacted_points", "Points packed.", registry=registry)
        self.seconds = Counter(
            "lossproof_store_compaction_seconds", "Time spent compacting.", registry=registry
        )
        self.errors = Counter(
            "lossproof_store_compaction_errors", "Compaction calls that failed.", registry=registry
        )
        self.quarantined = quarantined_counter(registry)
        self.scrubbed = Counter(
            "lossproof_store_scrubbed_rows",
            "Stored rows the compactor's scrub checked again (checksum and structure).",
            ["table"],
            registry=registry,
        )
        self.scrub_passes = Counter(
            "lossproof_store_scrub_passes", "Scrub passes over every stored row finished.", registry=registry
        )
        self.scrub_seconds = Counter(
            "lossproof_store_scrub_seconds", "Time spent scrubbing.", registry=registry
        )
        self.scrub_errors = Counter(
            "lossproof_store_scrub_errors",
            "Scrub rounds that failed (tried again from where the pass was, after a backoff).",
            registry=registry,
        )
        self.scrub_left = Counter(
            "lossproof_store_scrub_damaged_left",
            "Damaged rows the scrub found but left where they are: over its limit of rows set aside a pass"
            " (a failing disk, or a bug). Their metrics' queries fail: run `lossproof store check`.",
            registry=registry,
        )


_NICE = 10
# While the worker is behind: at most one compaction step this often (see the module's doc).
BEHIND_STEP_EVERY = 10.0
_BEHIND = b"behind\n"
_CAUGHT_UP = b"caught-up\n"


def _line(behind: bool) -> bytes:
    return _BEHIND if behind else _CAUGHT_UP


class Step(msgspec.Struct, frozen=True):
    """One compaction call, as the compactor process reports it to the worker (a JSON line)."""

    seconds: float
    error: bool = False
    series: int = 0
    chunks_in: int = 0
    chunks_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    points: int = 0
    quarantined: int = 0  # damaged chunks or parts set aside
    # a scrub round instead (worker/scrub.py): its time is in scrub_seconds, not seconds
    scrub_seconds: float = 0.0
    scrubbed_chunks: int = 0
    scrubbed_parts: int = 0
    scrub_quarantined: int = 0
    scrub_left: int = 0
    scrub_passes: int = 0
    scrub_error: bool = False


def record(m: CompactorMetrics, step: Step) -> None:
    m.seconds.inc(step.seconds)
    if step.error:
        m.errors.inc()
    if step.series:
        m.chunks.labels("in").inc(step.chunks_in)
        m.chunks.labels("out").inc(step.chunks_out)
        m.bytes.labels("in").inc(step.bytes_in)
        m.bytes.labels("out").inc(step.bytes_out)
        m.points.inc(step.points)
    if step.quarantined:
        m.quarantined.labels("compaction").inc(step.quarantined)
    if step.scrub_seconds:
        m.scrub_seconds.inc(step.scrub_seconds)
        m.scrubbed.labels("chunks").inc(step.scrubbed_chunks)
        m.scrubbed.labels("parts").inc(step.scrubbed_parts)
        m.scrub_passes.inc(step.scrub_passes)
    if step.scrub_quarantined:
        m.quarantined.labels("scrub").inc(step.scrub_quarantined)
    if step.scrub_left:
        m.scrub_left.inc(step.scrub_left)
    if step.scrub_error:
        m.scrub_errors.inc()


class Compactor:
    """The compaction loop, on a store handle of its own; each call's :class:`Step` goes to
    ``report``. :meth:`run` runs it in the calling thread (the compactor process), :meth:`start`
    in a thread."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        report: Callable[[Step], None],
        interval: float,
        stop: threading.Event,
        behind: threading.Event | None = None,
        behind_step_every: float = BEHIND_STEP_EVERY,
        scrub: Scrub | None = None,
    ) -> None:
        self._open = open_store
        self.report = report
        self.interval = interval
        self.stop = stop
        self.behind = behind or threading.Event()
        self.behind_step_every = behind_step_every
        self.scrub = scrub
        self._last_step = -math.inf
        self._thread = threading.Thread(target=self.run, name="compactor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def run(self) -> None:
        store: Store | None = None
        while not self.stop.is_set():
            more = failed = False
            self._step_aside()
            if self.stop.is_set():
                break
            started = time.monotonic()
            try:
                if store is None:
                    store = self._open()
                more = self.once(store)
            except StoreUnavailable as e:
                failed = True
                self.report(Step(time.monotonic() - started, error=True))
                log.warning("compaction.unavailable", error=str(e))
            except BaseException as e:  # logged; the next round tries again
                failed = True
                # BaseException: a panic in the native extension (pyo3's PanicException) is one, and
                # a dead compactor would leave parts to pile up for good
                self.report(Step(time.monotonic() - started, error=True))
                log.error("compaction.failed", error=f"{type(e).__name__}: {e}")
            self._last_step = time.monotonic()  # (from its end: a long step is not followed at once)
            if not more and not failed and store is not None:
                self._scrub(store)
            if not more:
                self.stop.wait(self.interval)
        if store is not None:
            store.close()

    def _scrub(self, store: Store) -> None:
        """A round of the scrub, if one is due and the worker is not behind; a failure is logged and
        the round tried again after a backoff, from where the pass was."""
        now = time.monotonic()
        if self.scrub is None or self.behind.is_set() or not self.scrub.due(now):
            return
        error = False
        try:
            got = self.scrub.run(store, now)
        except BaseException as e:  # (as a compaction step's: a native panic is one)
            got, error = self.scrub.take(), True  # (rows moved before it failed are counted)
            self.scrub.failed(now)
            log.error("store.scrub_failed", error=f"{type(e).__name__}: {e}")
        release_memory()  # (a batch decodes up to tens of MB: see the note above)
        self.report(
            Step(
                0.0,
                scrub_error=error,
                scrub_seconds=time.monotonic() - now,
                scrubbed_chunks=got.checked["chunks"],
                scrubbed_parts=got.checked["parts"],
                scrub_quarantined=got.moved,
                scrub_left=got.left,
                scrub_passes=got.passes,
            )
        )

    def _step_aside(self) -> None:
        """Wait while the worker is behind, until ``behind_step_every`` has passed since the last
        step (or it has caught up, or the process stops)."""
        while self.behind.is_set() and not self.stop.is_set():
            left = self._last_step + self.behind_step_every - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, 0.05))

    def once(self, store: Store) -> bool:
        """One compaction call; whether it left work for another one."""
        started = time.monotonic()
        res = store.compact(int(time.time() * 1000))
        if res.series or res.more:
            release_memory()
        self.report(
            Step(
                time.monotonic() - started,
                series=res.series,
                chunks_in=res.chunks_in,
                chunks_out=res.chunks_out,
                bytes_in=res.bytes_in,
                bytes_out=res.bytes_out,
                points=res.points,
                quarantined=res.quarantined,
            )
        )
        return res.more


class WorkerLines:
    """The lines the worker writes on the compactor's stdin, read from the descriptor itself, not
    ``sys.stdin``: a thread blocked in a buffered reader holds its lock, and the interpreter aborts
    at exit on a lock a daemon thread holds (SIGABRT at every stop)."""

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self._buf = b""

    def readline(self) -> bytes:
        """The next line with its ``\n``; at the end, what is left (b"" once nothing is)."""
        while b"\n" not in self._buf:
            try:
                got = os.read(self.fd, 65536)
            except OSError:
                got = b""
            if not got:
                line, self._buf = self._buf, b""
                return line
            self._buf += got
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def follow_worker(lines: Iterable[bytes], behind: threading.Event) -> None:
    """Set ``behind`` while the worker says it is (its ``behind`` / ``caught-up`` lines on
    ``lines``), until they end (the worker closed them or is gone: compaction goes on as usual)."""
    for line in lines:
        if line == _BEHIND:
            behind.set()
        elif line == _CAUGHT_UP:
            behind.clear()
    behind.clear()


def run_process(cfg: Config, parent_pid: int, worker_lines: Iterable[bytes] | None = None) -> None:
    """``lossproof compactor``: the loop above until SIGTERM, each step a JSON line on stdout. It
    ends with its parent, the worker (``parent_pid``), or at once if that is already gone. The
    worker says on ``worker_lines`` when it is behind (:func:`follow_worker`)."""
    from lossproof.store.factory import open_store

    die_with_parent()
    if os.getppid() != parent_pid:  # the worker died before the line above took effect
        return
    interval = cfg.store.compact_interval_seconds
    if interval <= 0:  # compaction is off (the worker does not start it then)
        return
    # Below ingest and the worker when CPU is short: storing and acknowledging come first, and
    # compaction catches up when they are idle (it only changes how points are laid out). At the
    # same priority it took a core from ingest during a catch-up: 30 M points were stored in 64 s
    # instead of 47 s (as a thread of the worker it could not, sharing the worker's GIL).
    os.nice(_NICE)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C reaches the whole process group: the worker stops this process itself (SIGTERM), and
    # one that ended on its own first would be counted as a crash and started again
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout.buffer
    encode = msgspec.json.Encoder().encode

    def report(step: Step) -> None:
        try:
            out.write(encode(step) + b"\n")
            out.flush()
        except (BrokenPipeError, ValueError):  # the worker is gone: so are we
            stop.set()

    behind = threading.Event()
    if worker_lines is not None:
        threading.Thread(target=follow_worker, args=(worker_lines, behind), daemon=True).start()
    log.info("compactor.started", interval=interval, scrub_interval=cfg.store.scrub_interval_seconds)
    scrub = Scrub(cfg.store.scrub_interval_seconds) if cfg.store.scrub_interval_seconds > 0 else None
    Compactor(lambda: open_store(cfg, compactor=True), report, interval, stop, behind, scrub=scrub).run()
    log.info("compactor.stopped")


class CompactorProcess:
    """The worker's side: starts ``lossproof compactor`` with the worker's own store settings (on its
    stdin, so it compacts the store the worker writes, whatever the file says now), turns its JSON
    lines into the compaction metrics, and starts it again if it ends or cannot start, with a
    backoff from ``interval`` up to a minute."""

    def __init__(self, cfg: Config, registry: CollectorRegistry, stop: threading.Event) -> None:
        self.argv = [
            sys.executable, "-m", "lossproof", "compactor",
            "--data-dir", str(cfg.data_dir), "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        self.settings = cfg.store.model_dump_json().encode()
        self.metrics = CompactorMetrics(registry)
        self.interval = max(cfg.store.compact_interval_seconds, 0.5)
        self.worker_stop = stop
        self._stop = threading.Event()  # join() was called
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._behind = False  # what the worker said last (told again to a restarted child)
        self._told: bool | None = None  # what the child was told last (None: nothing, or not whole)
        self._thread = threading.Thread(target=self._watch, name="compactor-watch", daemon=True)

    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None else None

    def start(self) -> None:
        self._thread.start()

    def _stopping(self) -> bool:
        return self._stop.is_set() or self.worker_stop.is_set()

    def _watch(self) -> None:
        backoff = self.interval
        while not self._stopping():
            started = time.monotonic()
            try:
                self._run_once()
                why = "exited"
            except Exception as e:  # could not start it (fork: EAGAIN, ENOMEM; EMFILE): try again
                why = f"{type(e).__name__}: {e}"
            if self._stopping():
                break
            # never expected (a failed step is reported and retried in the child): a crash of the
            # process itself, e.g. killed by the kernel for memory, or a start that failed
            if time.monotonic() - started > 60:
                backoff = self.interval
            self.metrics.errors.inc()
            log.error("compaction.process_failed", why=why, restart_in=round(backoff, 1))
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 60.0)

    def _run_once(self) -> None:
        with self._lock:
            if self._stopping():
                return
            proc = self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            # the settings first, before behind() can write to the new child (same lock)
            told = self._tell(proc, self.settings + b"\n" + _line(self._behind))
            self._told = self._behind if told else None
        assert proc.stdin is not None and proc.stdout is not None
        decode = msgspec.json.Decoder(Step).decode
        for line in proc.stdout:
            try:
                record(self.metrics, decode(line))
            except msgspec.DecodeError:
                log.warning("compaction.bad_report", line=line[:200].decode("utf-8", "replace"))
        proc.stdout.close()
        with self._lock:
            proc.stdin.close()
        code = proc.wait()
        if code != 0:
            raise RuntimeError(f"lossproof compactor exited with code {code}")
        if not self._stopping():
            raise RuntimeError("lossproof compactor exited")

    def behind(self, behind: bool) -> None:
        """The worker is behind (a backlog in the log) or has caught up: the child steps aside while
        it is (see the module's doc)."""
        with self._lock:
            self._behind = behind
            proc, told = self._proc, self._told
            if proc is not None and told is not None and behind != told and self._tell(proc, _line(behind)):
                self._told = behind

    @staticmethod
    def _tell(proc: subprocess.Popen[bytes], line: bytes) -> bool:
        """``line`` to the child's stdin without ever blocking the worker (a child that stopped
        reading, e.g. stopped by a debugger, would otherwise stall the worker once the pipe is
        full); whether it was written whole. One that is not is told again on the next change."""
        try:
            assert proc.stdin is not None
            fd = proc.stdin.fileno()
            os.set_blocking(fd, False)
            return os.write(fd, line) == len(line)
        except (BlockingIOError, BrokenPipeError, ValueError, OSError):
            return False  # full, or it ended (or is ending): its exit code says why

    def join(self, timeout: float) -> None:
        """Stop the process: SIGTERM, then SIGKILL once ``timeout`` has passed (a step cut short is
        rolled back: nothing is lost)."""
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("compaction.process_kill")
                proc.kill()
                proc.wait()
        self._thread.join(timeout)
