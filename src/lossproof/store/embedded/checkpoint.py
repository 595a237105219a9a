"""The embedded store's WAL checkpoints, on a thread of their own beside the writer.

SQLite checkpoints the WAL (copies its pages into the database file and fsyncs it) in the
connection whose COMMIT took the WAL past ``wal_autocheckpoint`` pages, 1,000 by default. The
worker's batches of remote write (a part of ~2.6 MB each) crossed it at nearly every COMMIT, and
the checkpoint was ~9 % of the worker's time, on its one busy thread (an in-process drain of 10 M
samples: 211-221 ns a sample with it, 197-199 without). A PASSIVE checkpoint never takes the write
lock, and SQLite releases the GIL while it runs: on a thread of its own, with its own connection,
it runs on another CPU while the worker decodes its next batch.

The writer asks for one (:meth:`Checkpointer.wrote`) once it has written about as much as SQLite's
default autocheckpoint would wait for, not after every COMMIT: a checkpoint costs two fsyncs, and
small batches would pay them each. SQLite starts the WAL over only at a write that finds every
frame already copied back, so a writer that commits again while the thread copies keeps it growing;
and SQLite's own autocheckpoint gives up at once while the thread holds the checkpoint lock. So the
writer sees to the bound itself: once the thread has found the WAL at :data:`LIMIT_FRAMES` or more,
the writer's next write first waits for the thread's checkpoint and checkpoints what is left
(:meth:`Checkpointer.bound`), and the WAL starts over at its COMMIT.

Durability is the same: a COMMIT is durable once its WAL frames are fsync'd (``synchronous=FULL``),
whoever checkpoints them later; a checkpoint fsyncs the database file before SQLite may reuse the
WAL, and one cut short by a crash is redone from the WAL on the next open.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path

from lossproof.obs.logging import get

log = get(__name__)

# Bytes written (about) between two checkpoints: SQLite's default autocheckpoint, 1,000 pages.
POKE_BYTES = 4 << 20
# WAL frames from which the writer checkpoints what is left itself (4 KiB pages: 16 MiB).
LIMIT_FRAMES = 4096
# At most one failure logged in this many seconds (a full disk fails every checkpoint).
_LOG_EVERY_S = 60.0


class Checkpointer:
    """PASSIVE checkpoints of the WAL of the database at ``path``, on a thread started at the first
    :meth:`wrote` that asks for one (asks while one runs make one more, not one each). Stopped by
    :meth:`close`, or when its owner is garbage-collected (``owner``)."""

    def __init__(self, path: Path, busy_timeout_ms: int, owner: object) -> None:
        # resolved now (a later chdir must not move it), opened read-write only: a file deleted
        # meanwhile is an error, not a new empty database checkpointed in its place
        self._uri = f"{Path(path).resolve().as_uri()}?mode=rw"
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._state = _State()
        self._unsaved = 0  # bytes written since the last ask (the writer's thread only)
        # a store never closed: its collection only tells the thread to end (joining it there
        # would stall, or hang, whatever thread the collection happens on)
        self._finalizer = weakref.finalize(owner, self._state.signal_stop)

    @property
    def lock(self) -> threading.Lock:
        """Held while a checkpoint runs (this process' TRUNCATE checkpoint waits for it)."""
        return self._state.lock

    @property
    def checkpoints(self) -> int:
        """Checkpoints the thread completed (every frame then in the WAL copied back)."""
        return self._state.checkpoints

    def wrote(self, nbytes: int) -> None:
        """The writer committed about ``nbytes`` to the WAL: a checkpoint once enough is written.
        Never raises: without the thread, SQLite's own autocheckpoint (at the same bound, set by
        the store) checkpoints in the writer, as it did before."""
        self._unsaved += nbytes
        if self._unsaved < POKE_BYTES:
            return
        self._unsaved = 0
        try:
            self._state.ask(self._uri, self._busy_timeout_ms)
        except Exception as e:  # (a thread refused: EAGAIN, a pids limit)
            self._state.failed(e)

    def bound(self, con: sqlite3.Connection) -> None:
        """Before a write on the writer's connection ``con`` (outside a transaction): when the WAL
        was found at :data:`LIMIT_FRAMES` or more, wait for the thread's checkpoint and copy what
        is left on ``con``, so that the write starts the WAL over."""
        if self._state.frames < LIMIT_FRAMES:
            return
        try:
            with self.lock:
                busy, frames, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if not busy:  # (busy: another process' checkpoint ran; the next write tries again)
                    self._state.frames = frames if frames != done else 0
        except sqlite3.Error as e:  # the write itself says whether the file is usable
            self._state.failed(e)

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running)."""
        self._finalizer.detach()
        self._state.stop()


_STATES: weakref.WeakSet[_State] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # the thread is not in the child, and a lock it held would stay held: the child's handles
    # (it should not use them: a forked SQLite connection is not safe) never checkpoint or wait
    for state in list(_STATES):
        state.lock = threading.Lock()
        state.thread = None
        state.stopping = True


os.register_at_fork(after_in_child=_after_fork_in_child)


class _State:
    """What the thread shares with the writer (not the :class:`Checkpointer` itself, which the
    thread would then keep alive)."""

    def __init__(self) -> None:
        _STATES.add(self)
        self.lock = threading.Lock()  # held while a checkpoint runs (this process' TRUNCATE waits)
        self.wake = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.checkpoints = 0
        self.frames = 0  # WAL frames at the last checkpoint (the writer's bound)
        self._logged = 0.0

    def ask(self, uri: str, busy_timeout_ms: int) -> None:
        if self.stopping:
            return
        if self.thread is None or not self.thread.is_alive():
            thread = threading.Thread(
                target=self._run, args=(uri, busy_timeout_ms), name="sqlite-checkpoint", daemon=True
            )
            thread.start()
            self.thread = thread
        self.wake.set()

    def signal_stop(self) -> None:
        self.stopping = True
        self.wake.set()

    def stop(self) -> None:
        self.signal_stop()
        thread, self.thread = self.thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def failed(self, e: BaseException) -> None:
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY_S:
            self._logged = now
            log.warning("store.checkpoint_failed", error=f"{type(e).__name__}: {e}")

    def _run(self, uri: str, busy_timeout_ms: int) -> None:
        con: sqlite3.Connection | None = None
        try:
            while True:
                self.wake.wait()
                self.wake.clear()
                if self.stopping:
                    return
                try:
                    if con is None:
                        con = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                        con.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
                        # (the file is fsync'd before the WAL may be reused: never skipped)
                        con.execute("PRAGMA synchronous = FULL")
                    with self.lock:
                        busy, frames, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        if not busy:  # (busy: another process' checkpoint ran; frames is -1)
                            self.frames = frames
                            self.checkpoints += frames == done
                except Exception as e:  # (sqlite3's and the OS's): never the writer's problem
                    # the writer's bound still holds; a connection that failed is made anew
                    if con is not None:
                        con.close()
                        con = None
                    self.failed(e)
        finally:
            if con is not None:
                con.close()
