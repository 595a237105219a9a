"""The embedded store's WAL checkpoints, on a thread of their own beside the writer.

SQLite checkpoints the WAL (copies its pages into the database file and fsyncs it) in the
connection whose COMMIT took the WAL past ``wal_autocheckpoint`` pages, 1,000 by default. The
worker's batches of remote write (a part of ~2.6 MB each) crossed it at nearly every COMMIT, and
the checkpoint was ~9 % of the worker's time, on its one busy thread (an in-process drain of 10 M
samples: 211-221 ns a sample with it, 197-199 without). A PASSIVE checkpoint never takes the write
lock, and SQLite releases the GIL while it runs: on a thread of its own, with its own connection,
it runs on another CPU while the worker decodes its next batch. The writer's own autocheckpoint
stays, at :data:`FALLBACK_PAGES`, should this thread fall behind or fail.

Durability is the same: a COMMIT is durable once its WAL frames are fsync'd (``synchronous=FULL``),
whoever checkpoints them later; a checkpoint fsyncs the database file before SQLite may reuse the
WAL, and one cut short by a crash is redone from the WAL on the next open.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from lossproof.obs.logging import get

log = get(__name__)

# The writer's own autocheckpoint (pages of 4 KiB: 16 MiB), the fallback. A writer that commits
# again before the thread's checkpoint is done keeps SQLite from starting the WAL over (it restarts
# only once every frame is back in the file), and the WAL grows; at this size the writer's own
# checkpoint copies what is left (little: the thread did the rest), and the WAL starts over.
FALLBACK_PAGES = 4096
# At most one failure logged in this many seconds (a full disk fails every checkpoint).
_LOG_EVERY_S = 60.0


class Checkpointer:
    """PASSIVE checkpoints of the WAL of the database at ``path``, one after each :meth:`poke`
    (pokes while one runs make one more, not one each)."""

    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self.path = path
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._logged = 0.0
        self.checkpoints = 0  # done (for tests and metrics)
        # held while a checkpoint runs: this process' own TRUNCATE checkpoint (compaction in the
        # same process, as in tests) waits for it rather than fail on the checkpoint lock
        self.lock = threading.Lock()

    def poke(self) -> None:
        """The writer committed: checkpoint what the WAL holds (started on the first call)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
            self._thread.start()
        self._wake.set()

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running)."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        con: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stop:
                    return
                try:
                    if con is None:
                        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                        con.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
                        # (the file is fsync'd before the WAL may be reused: never skipped)
                        con.execute("PRAGMA synchronous = FULL")
                    with self.lock:
                        con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except Exception as e:  # (sqlite3's and the OS's): never the writer's problem
                    # the writer's autocheckpoint still runs; a connection that failed is made anew
                    if con is not None:
                        con.close()
                        con = None
                    now = time.monotonic()
                    if now - self._logged >= _LOG_EVERY_S:
                        self._logged = now
                        log.warning("store.checkpoint_failed", path=str(self.path), error=str(e))
        finally:
            if con is not None:
                con.close()
