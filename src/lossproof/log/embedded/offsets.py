"""Consumer-group committed offsets and the process locks of the embedded log.

``DIR/consumers/{group}.offset`` holds JSON ``{"offsets": {"0": 123, "1": 45}, "crc32": N}`` where the
CRC is over the canonical JSON of ``offsets``: one file per group, all partitions (the format of the
single-partition layout, unchanged). It is replaced atomically and durably: write a temp file, fsync
it, rename it over the old one, fsync the directory. Several reader processes of one group (each
owning other partitions) update it with :func:`update_committed`, a read-modify-write under the
group's ``@commit.lock`` flock, so no commit is lost to a concurrent one. A damaged file reads as
"nothing committed" (the group re-reads from the earliest record: at-least-once, never a skip).

Partition ownership: the reader of a group that owns partition ``i`` holds the flock of
:func:`reader_lock_path` (``{group}.lock`` for partition 0, as in the single-partition layout;
``{group}@p{i}.lock`` otherwise). ``@`` is not allowed in group names, so these never collide.

Retention treats every group that has a ``.lock`` or ``.offset`` file as a consumer; a group that
never committed a partition counts as committed offset 0 there, so it holds back deletion of
everything in it (unconsumed data is never deleted). Remove a group that is no longer used with
:func:`forget_group`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import zlib
from collections.abc import Mapping
from pathlib import Path

from lossproof.durable import fsync_dir
from lossproof.log.base import LogError
from lossproof.obs.logging import get
from lossproof.segments import state as cells
from lossproof.segments.lock import LockFailed
from lossproof.segments.lock import release_lock as release_lock
from lossproof.segments.lock import try_lock as _try_lock

log = get("lossproof.log.embedded")

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
        log.error("log.offsets_damaged", path=str(path), error=str(e))
        return None
    return offsets


def reader_lock_path(directory: Path, group: str, partition: int) -> Path:
    """The flock that makes a reader of ``group`` the owner of ``partition``."""
    cdir = consumers_dir(directory)
    return cdir / f"{group}.lock" if partition == 0 else cdir / f"{group}@p{partition}.lock"


def commit_lock_path(directory: Path, group: str) -> Path:
    return consumers_dir(directory) / f"{group}@commit.lock"


def member_lock_path(directory: Path, group: str, token: str) -> Path:
    """Held by every open reader of ``group`` (owner or standby); its mtime is the reader's heartbeat."""
    return consumers_dir(directory) / f"{group}@m{token}.lock"


def member_lock_files(directory: Path, group: str) -> list[Path]:
    cdir = consumers_dir(directory)
    try:
        names = os.listdir(cdir)
    except FileNotFoundError:
        return []
    prefix = f"{group}@m"
    return [cdir / n for n in names if n.startswith(prefix) and n.endswith(".lock")]


def update_committed(directory: Path, group: str, offsets: Mapping[int, int]) -> dict[int, int]:
    """Durably set the given partitions' committed offsets, keeping every other partition's.

    Serialized with the group's other readers by a (blocking, short) flock, so two readers
    committing different partitions at once never undo each other. Returns the whole new map.
    """
    fd = os.open(commit_lock_path(directory, group), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        merged = read_committed(directory, group) or {}
        merged.update({int(p): int(o) for p, o in offsets.items()})
        write_committed(directory, group, merged)
        return merged
    finally:
        os.close(fd)  # releases the flock


def write_committed(directory: Path, group: str, offsets: Mapping[int, int]) -> None:
    """Atomically and durably replace the group's committed offsets."""
    path = offset_path(directory, group)
    body = _canonical(offsets)
    cells.replace(path, cells.json_cell("offsets", body))


def list_groups(directory: Path) -> list[str]:
    try:
        names = os.listdir(consumers_dir(directory))
    except FileNotFoundError:
        return []
    groups = set()
    for name in names:
        for suffix in (".offset", ".lock"):
            if name.endswith(suffix):
                g = name[: -len(suffix)].split("@", 1)[0]
                if _GROUP_RE.match(g):
                    groups.add(g)
    return sorted(groups)


def group_lock_files(directory: Path, group: str) -> list[Path]:
    """The group's lock files that exist (partition ownership and commit locks)."""
    cdir = consumers_dir(directory)
    try:
        names = os.listdir(cdir)
    except FileNotFoundError:
        return []
    return sorted(
        cdir / n for n in names if n == f"{group}.lock" or (n.startswith(f"{group}@") and n.endswith(".lock"))
    )


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


def max_committed(directory: Path, partition: int = 0) -> int:
    """Highest committed offset of ``partition`` over all groups (0 if none): every offset below it
    was read, so it was durable, whatever a stale watermark says."""
    best = 0
    for g in list_groups(directory):
        c = read_committed(directory, g)
        if c is not None:
            best = max(best, c.get(partition, 0))
    return best


def forget_group(directory: Path, group: str) -> None:
    """Remove a consumer group (its offsets and lock files) so it no longer holds back retention.

    Raises LogError if a reader of the group is open (owns a partition or is committing).
    Run it with no reader of the group starting up.
    """
    check_group(group)
    held: list[int] = []
    try:
        for lock in group_lock_files(directory, group):
            held.append(acquire_lock(lock, f"a reader of consumer group {group!r} is open at {directory}"))
        offset_path(directory, group).unlink(missing_ok=True)
        for lock in group_lock_files(directory, group):
            lock.unlink(missing_ok=True)
        fsync_dir(consumers_dir(directory))
    finally:
        for fd in held:
            release_lock(fd)


# --- locks ---------------------------------------------------------------------------------------


def try_lock(path: Path, content: str | None = None) -> tuple[int | None, str]:
    """:func:`lossproof.segments.lock.try_lock`, with an unexpected flock failure as a LogError."""
    try:
        return _try_lock(path, content)
    except LockFailed as e:
        raise LogError(e.strerror or str(e)) from e


def acquire_lock(path: Path, what: str) -> int:
    """flock ``path`` exclusively (non-blocking) and write our pid into it; returns the fd.

    Raises LogError naming the holder's pid if another process (or another open in this process)
    holds it.
    """
    fd, holder = try_lock(path)
    if fd is None:
        raise LogError(f"{what} (pid {holder})")
    return fd


def probe_lock(path: Path) -> str | None:
    """None if nobody holds ``path``'s flock, else what the holder wrote into it ("" if nothing).

    Takes a *shared* lock for a moment, so probes never collide with each other; a probe can make a
    concurrent non-blocking exclusive attempt fail, which callers treat as "taken, try later".
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                with contextlib.suppress(OSError):
                    return os.pread(fd, 128, 0).decode("ascii", "replace").strip()
                return ""
            raise
        return None
    finally:
        os.close(fd)  # also drops the shared lock
