"""The one-writer lock of a durable directory: a non-blocking exclusive ``flock`` on a file that
holds the holder's pid (only the flock counts; the pid is for the error message)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path


class LockFailed(OSError):
    """flock failed for another reason than another holder (e.g. a file system without locks)."""


def try_lock(path: Path, content: str | None = None) -> tuple[int | None, str]:
    """flock ``path`` exclusively without waiting; write ``content`` (default: our pid) into it.

    Returns (fd, "") when we got it, (None, holder) when another process (or another open file in
    this process) holds it; ``holder`` is the holder's pid ("unknown" if it wrote none yet).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        pid = "unknown"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = os.pread(fd, 128, 0).decode("ascii", "replace").split()[0]
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None, pid
        raise LockFailed(e.errno or errno.EIO, f"cannot lock {path}: {e}") from e
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (content if content is not None else f"{os.getpid()}\n").encode(), 0)
    except OSError:
        release_lock(fd)
        raise
    return fd, ""


def release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)
