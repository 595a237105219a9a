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
not committed is still in the log, and storing it again is idempotent. A child that has not beaten
yet (still starting: opening or upgrading its store) is not judged, like a Kubernetes liveness probe
that waits for the startup probe.
"""

from __future__ import annotations

import contextlib
import os
import time

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
    brokers about every partition, each with its own timeout). Only from the work loop's thread."""
    if _installed is not None:
        _installed()


class Watch:
    """``up``'s side for one child: whether its beats stopped for longer than ``timeout`` seconds,
    on ``up``'s monotonic clock."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._read: int | None = None
        self.beating = False  # this child has beaten since it started
        self._last = 0.0

    def renew(self) -> int:
        """Before the child (re)starts: a new pipe; returns the write end, for the child to inherit
        (close it in ``up`` once the child has it)."""
        self.close()
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        self.beating = False
        return write

    def stuck(self) -> float | None:
        """Seconds since the last beat when that is over ``timeout``; None while beating or starting."""
        if self._read is None:
            return None
        now = time.monotonic()
        try:
            if os.read(self._read, 4096):
                self.beating, self._last = True, now
                return None
        except BlockingIOError:
            pass
        silent = now - self._last
        return silent if self.beating and self.timeout > 0 and silent > self.timeout else None

    def excuse(self) -> None:
        """Count silence from now on: ``up`` itself was not running to hear the beats."""
        self._last = time.monotonic()

    def close(self) -> None:
        if self._read is not None:
            os.close(self._read)
            self._read = None
