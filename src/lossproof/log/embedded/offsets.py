"""Consumer-group committed offsets and the process locks of the embedded log.

``DIR/consumers/{group}.offset`` holds JSON ``{"offsets": {"0": 123}, "crc32": N}`` where the CRC is
over the canonical JSON of ``offsets``. It is replaced atomically and durably: write a temp file,
fsync it, rename it over the old one, fsync the directory. A damaged file reads as "nothing
committed" (the group re-reads from the earliest record: at-least-once, never a skip).

Retention treats every group that has a ``.lock`` or ``.offset`` file as a consumer; a group that
never committed counts as committed offset 0, so it holds back deletion of everything (unconsumed
data is never deleted). Remove a group that is no longer used with :func:`forget_group`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import zlib
from collections.abc import Mapping
from pathlib import Path

from lossproof.log.base import LogError
from lossproof.log.embedded.segment import fsync_dir

log = logging.getLogger("lossproof.log.embedded")

CONSUMERS_DIR = "consumers"
_GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_group(group: str) -> str:
    if not _GROUP_RE.match(group):
        raise ValueError(f"invalid consumer group name {group!r} (letters, digits, '._-', max 128)")
    return group


def consumers_dir(directory: Path) -> Path:
    return directory / CONSUMERS_DIR


def offset_path(directory: Path, group: str) -> Path:
    return consumers_dir(directory) / f"{group}.offset"


def _canonical(offsets: Mapping[int, int]) -> bytes:
    return json.dumps({str(p): int(o) for p, o in sorted(offsets.items())}, sort_keys=True).encode()


def read_committed(directory: Path, group: str) -> dict[int, int] | None:
    """The group's committed offsets, or None if it never committed (or the file is damaged)."""
    path = offset_path(directory, group)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        offsets = {int(p): int(o) for p, o in doc["offsets"].items()}
        if int(doc["crc32"]) != zlib.crc32(_canonical(offsets)):
            raise ValueError("crc mismatch")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        log.error("log.offsets_damaged", extra={"path": str(path), "error": str(e)})
        return None
    return offsets


def write_committed(directory: Path, group: str, offsets: Mapping[int, int]) -> None:
    """Atomically and durably replace the group's committed offsets."""
    cdir = consumers_dir(directory)
    path = offset_path(directory, group)
    tmp = path.with_name(path.name + ".tmp")
    body = _canonical(offsets)
    data = b'{"offsets": ' + body + b', "crc32": ' + str(zlib.crc32(body)).encode() + b"}\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(cdir)


def list_groups(directory: Path) -> list[str]:
    try:
        names = os.listdir(consumers_dir(directory))
    except FileNotFoundError:
        return []
    groups = set()
    for name in names:
        for suffix in (".offset", ".lock"):
            if name.endswith(suffix):
                g = name[: -len(suffix)]
                if _GROUP_RE.match(g):
                    groups.add(g)
    return sorted(groups)


def min_committed(directory: Path, partition: int = 0) -> int | None:
    """Lowest committed offset of ``partition`` over all known groups; None if no group committed.

    A known group without a commit for the partition counts as 0.
    """
    groups = list_groups(directory)
    values: list[int] = []
    any_commit = False
    for g in groups:
        c = read_committed(directory, g)
        if c is not None and partition in c:
            any_commit = True
            values.append(c[partition])
        else:
            values.append(0)
    if not any_commit:
        return None
    return min(values)


def forget_group(directory: Path, group: str) -> None:
    """Remove a consumer group (its offsets and lock file) so it no longer holds back retention.

    Raises LogError if a reader of the group is open.
    """
    check_group(group)
    lock = consumers_dir(directory) / f"{group}.lock"
    fd = acquire_lock(lock, f"a reader of consumer group {group!r} is open at {directory}")
    try:
        offset_path(directory, group).unlink(missing_ok=True)
        lock.unlink(missing_ok=True)
        fsync_dir(consumers_dir(directory))
    finally:
        release_lock(fd)


# --- locks ---------------------------------------------------------------------------------------


def acquire_lock(path: Path, what: str) -> int:
    """flock ``path`` exclusively (non-blocking) and write our pid into it; returns the fd.

    Raises LogError naming the holder's pid if another process (or another open in this process)
    holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        pid = "unknown"
        with contextlib.suppress(OSError, ValueError):
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            pid = text or "unknown"
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise LogError(f"{what} (pid {pid})") from None
        raise LogError(f"cannot lock {path}: {e}") from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)
