"""The file-system seam of the durable write paths.

The segment writers (embedded log, fallback journal, agent spool) do their writes and syncs through an
:class:`FS` they are handed (default: :data:`REAL`, plain ``os`` calls). Tests and the chaos harness
hand in a :class:`FaultyFS` instead, which fails or delays those operations as a fault source says;
the production code has no fault branches of its own.

Faults (``FaultSource.get(name)``, e.g. :class:`lossproof.faults.Faults` reading the fault file, or
a dict in a test), with ``PREFIX`` the writer's (``log``, ``fallback`` or ``spool``):

* ``PREFIX.write``: ``{"mode": "enospc"}`` or ``{"mode": "fail"}`` (EIO) — every write fails;
* ``PREFIX.fsync``: ``{"mode": "fail"}`` (EIO) or ``{"mode": "delay", "seconds": s}`` — every
  fsync/fdatasync fails or takes ``s`` seconds longer (an atomic small-file replace only fails);
  ``{"mode": "hang"}`` — every fsync/fdatasync blocks for as long as the fault is there (a dead disk
  or a hung mount, which may come back), then runs.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any, Protocol

from lossproof.durable import write_atomic, writev_all


class FS:
    """Plain file-system calls (production)."""

    def writev(self, fd: int, bufs: list[bytes]) -> int:
        """Write every buffer (short writes resumed); returns the bytes written."""
        return writev_all(fd, bufs)

    def pwrite_all(self, fd: int, data: bytes, pos: int) -> None:
        """Write all of ``data`` at ``pos`` (short writes resumed)."""
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, pos)
            view = view[n:]
            pos += n

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def write_atomic(self, path: Path, data: bytes, *, fsync: bool = True, tmp: Path | None = None) -> None:
        """Replace ``path`` with ``data`` all at once (see :func:`lossproof.durable.write_atomic`)."""
        write_atomic(path, data, fsync=fsync, tmp=tmp)


REAL = FS()


class FaultSource(Protocol):
    def get(self, name: str) -> dict[str, Any] | None: ...


HANG_POLL_SECONDS = 0.05  # how soon a "hang" fault lifted lets the blocked call go on


class InjectedFault(OSError):
    """An OSError a :class:`FaultyFS` raised (so logs can say it was injected)."""


class FaultyFS(FS):
    """An :class:`FS` that fails or delays writes and syncs as ``faults`` say (see the module doc)."""

    def __init__(self, faults: FaultSource, prefix: str) -> None:
        self.faults = faults
        self.prefix = prefix

    def _fault(self, stage: str) -> dict[str, Any] | None:
        try:
            return self.faults.get(f"{self.prefix}.{stage}")
        except Exception:  # a broken fault source must never break the writer
            return None

    def _check(self, stage: str, *, delay: bool = True) -> None:
        """Raise or sleep as the ``stage`` fault ("write" or "fsync") says."""
        f = self._fault(stage) or {}
        mode = f.get("mode")
        if mode == "enospc" and stage == "write":
            raise InjectedFault(errno.ENOSPC, "No space left on device (injected)")
        if mode == "fail":
            raise InjectedFault(errno.EIO, f"Input/output error (injected {stage})")
        if mode == "delay" and stage == "fsync" and delay:
            time.sleep(float(f.get("seconds", 1.0)))
        if mode == "hang" and stage == "fsync" and delay:
            while (self._fault(stage) or {}).get("mode") == "hang":
                time.sleep(HANG_POLL_SECONDS)

    def writev(self, fd: int, bufs: list[bytes]) -> int:
        self._check("write")
        return super().writev(fd, bufs)

    def pwrite_all(self, fd: int, data: bytes, pos: int) -> None:
        self._check("write")
        super().pwrite_all(fd, data, pos)

    def fsync(self, fd: int) -> None:
        self._check("fsync")
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._check("fsync")
        super().fdatasync(fd)

    def write_atomic(self, path: Path, data: bytes, *, fsync: bool = True, tmp: Path | None = None) -> None:
        self._check("write")
        self._check("fsync", delay=False)
        super().write_atomic(path, data, fsync=fsync, tmp=tmp)
