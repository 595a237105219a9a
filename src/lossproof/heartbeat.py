"""Liveness between ``lossproof up`` and its children: a pipe each child writes to while it works.

A child that is alive but stuck (a deadlock, a ``Thread.start()`` that never returns after a
MemoryError in the new thread, an event loop blocked by a call that never ends) neither exits nor
answers, so restarting children only when they exit would leave it stuck for good: ingest would keep
acknowledging into a log that nobody drains, or stop answering while its port stays bound. ``up``
hands each child the write end of a pipe (its descriptor in :data:`ENV`, as systemd hands a service
``WATCHDOG_USEC`` and a notify socket); the child writes a byte, at most once a second, from the loop
that does its work (the worker's batch loop, ingest's event loop), never from a thread of its own,
which would keep beating while the work is stuck. A pipe, not a file, so that a full or read-only
disk does not silence a child that works. ``up`` kills a child whose pipe stayed empty for
``server.liveness_timeout_seconds`` with SIGKILL and restarts it as if it had crashed: what it had
not committed is still in the log, and storing it again is idempotent.

A loop that turns is not always a child that works: ingest's event loop stays responsive while its
log's group-commit thread hangs in an fsync on a dead disk, and every append waits. So ingest beats
only while its log answers: appends waiting longer than the liveness timeout with no answer
(``LogWriter.stalled_seconds``; an idle log never) silence it, and ``up`` restarts it after one more
timeout of silence.

Starting
    A child that has not beaten yet is still starting (recovering its log, opening or upgrading its
    store) and is judged by ``server.startup_timeout_seconds`` instead, as a Kubernetes startup
    probe or systemd's ``TimeoutStartSec``: a child that has not beaten that long after it started
    (blocked opening its store, on a lock, on a hung mount) is killed and restarted as a stuck one.
    A start-up step that can legitimately take long (an embedded store's upgrade, a log recovery
    reading every segment) beats as it makes progress, :func:`beat` from the thread doing it, rather
    than the deadline being made long enough for the worst case: its first beat makes the child
    started, and the liveness timeout then bounds each step. Either timeout at 0 is off.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

ENV = "LOSSPROOF_HEARTBEAT_FD"
EVERY_SECONDS = 1.0


class Heartbeat:
    """Called from a child's work loop, as often as it likes: beats once a second."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self._last = -EVERY_SECONDS
        if fd is not None:
            os.set_blocking(fd, False)  # a beat never waits: a full pipe already says "alive"

    @classmethod
    def from_env(cls) -> Heartbeat:
        """The pipe ``up`` handed over, or a heartbeat that does nothing (the child runs on its own);
        :func:`beat` beats it too."""
        global _installed
        value = os.environ.pop(ENV, "")  # popped: the child's own children are not judged by it
        try:
            _installed = cls(int(value)) if value else cls(None)
        except (ValueError, OSError):
            _installed = cls(None)
        return _installed

    def __call__(self) -> None:
        if self.fd is None:
            return
        now = time.monotonic()
        if now - self._last < EVERY_SECONDS:
            return
        self._last = now
        # full (``up`` is busy) or closed (``up`` is gone, and this child with it)
        with contextlib.suppress(OSError):
            os.write(self.fd, b".")


_installed: Heartbeat | None = None


def beat() -> None:
    """Beat this process's heartbeat (:meth:`Heartbeat.from_env`'s), if it has one: for a step deep
    inside one turn of the work loop that can take long on its own (a Kafka rebalance asks the
    brokers about every partition, each with its own timeout), or for each step of progress of a long
    start-up (see the module docstring). Only from the thread doing that work, never from one that
    beats on its own."""
    if _installed is not None:
        _installed()


@dataclass(frozen=True, slots=True)
class Silence:
    """Why ``up`` should kill a child: ``seconds`` without a beat, ``starting`` when it never beat
    since it started (past the start-up deadline), else since its last beat (past the timeout)."""

    seconds: float
    starting: bool


class Watch:
    """``up``'s side for one child: whether its beats stopped for longer than ``timeout`` seconds,
    or never came within ``startup_timeout`` seconds of its start, on ``up``'s monotonic clock
    (0: that check is off)."""

    def __init__(self, timeout: float, startup_timeout: float = 0.0) -> None:
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self._read: int | None = None
        self.beating = False  # this child has beaten since it started
        self._last = 0.0
        self._started = 0.0

    def renew(self) -> int:
        """Before the child (re)starts: a new pipe; returns the write end, for the child to inherit
        (close it in ``up`` once the child has it)."""
        self.close()
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        self.beating = False
        self._started = time.monotonic()
        return write

    def stuck(self) -> Silence | None:
        """The silence when it is over ``timeout`` (or, never having beaten, over ``startup_timeout``);
        None while beating or within the deadline."""
        if self._read is None:
            return None
        now = time.monotonic()
        try:
            if os.read(self._read, 4096):
                self.beating, self._last = True, now
                return None
        except BlockingIOError:
            pass
        if self.beating:
            silent = now - self._last
            return Silence(silent, False) if 0 < self.timeout < silent else None
        starting = now - self._started
        return Silence(starting, True) if 0 < self.startup_timeout < starting else None

    def excuse(self) -> None:
        """Count silence (and a start-up) from now on: ``up`` itself was not running to hear the beats."""
        self._last = self._started = time.monotonic()

    def close(self) -> None:
        if self._read is not None:
            os.close(self._read)
            self._read = None
