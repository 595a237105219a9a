"""Filesystem steps that survive a power loss, not only a crash.

A write is on disk after ``fsync`` of the file; a new name (a created file, a rename, a new
directory) is on disk only after ``fsync`` of the directory that holds it. Every file lossproof
relies on after a restart goes through these, so none of them can be left vouching for something
the page cache never wrote out.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

IOV_MAX = 1024  # Linux's limit on buffers per writev


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` whose new directories are durable entries in their parents."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for d in reversed(missing):
        fsync_dir(d.parent)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def writev_all(fd: int, bufs: list[bytes]) -> int:
    """Write every buffer (short writes resumed, IOV_MAX respected); returns the bytes written."""
    views = [memoryview(b) for b in bufs if b]
    total = sum(len(v) for v in views)
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i : i + IOV_MAX])
        if n <= 0:
            raise OSError(errno.EIO, "writev wrote nothing")
        while n > 0:
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0
    return total


def fdatasync_path(path: Path) -> None:
    """Make durable what is in ``path`` now, e.g. bytes a killed process wrote but never synced,
    before anything new vouches for them."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, tmp: Path | None = None, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` all at once: after a crash or power loss it holds the old
    content or the new, never a mix. ``fsync=False`` (tests only) keeps the atomicity, not the
    durability."""
    tmp = tmp or path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)
