"""Deliberate damage to an embedded log, for chaos and contract tests. Never used in production.

Call these only while no writer or reader has the log open: they rewrite files underneath.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lossproof.durable import fsync_dir, write_atomic
from lossproof.log.embedded import segment as seg


@dataclass(frozen=True, slots=True)
class RecordLocation:
    offset: int
    path: Path
    pos: int  # byte position of the record header in ``path``
    size: int  # header + key + value


def _trusted_end(pdir: Path, base: int) -> int | None:
    try:
        s = seg.read_seal(pdir, base)
    except seg.BadSeal:
        return None
    return s.end_pos if s else None


def record_locations(directory: Path, partition: int = 0) -> list[RecordLocation]:
    """Every valid record of the partition (stops at the first bad byte of each segment)."""
    pdir = seg.partition_dir(directory, partition)
    out: list[RecordLocation] = []
    for base in seg.list_segments(pdir):
        path = seg.segment_path(pdir, base)
        end = _trusted_end(pdir, base)
        fd = os.open(path, os.O_RDONLY)
        try:
            win = seg.FileWindow(fd)
            limit = win.size() if end is None else min(end, win.size())
            p = 0
            while p < limit:
                r = seg.read_record(win, p, want_payload=False, limit=limit)
                if r.status is not seg.Status.OK or r.header is None:
                    break
                out.append(RecordLocation(r.header.number, path, p, r.header.size))
                p = r.header.end
        finally:
            os.close(fd)
    return out


def locate_record(directory: Path, offset: int, partition: int = 0) -> RecordLocation:
    for loc in record_locations(directory, partition):
        if loc.offset == offset:
            return loc
    raise KeyError(f"offset {offset} not found in {directory}")


def corrupt_byte(path: Path, pos: int, xor: int = 0xFF) -> None:
    """Flip bits of the byte at ``pos`` of ``path`` (xor with ``xor``), then fsync."""
    fd = os.open(path, os.O_RDWR)
    try:
        b = os.pread(fd, 1, pos)
        if len(b) != 1:
            raise ValueError(f"{path} has no byte {pos}")
        os.pwrite(fd, bytes([b[0] ^ (xor & 0xFF or 0xFF)]), pos)
        os.fsync(fd)
    finally:
        os.close(fd)


def corrupt_record(
    directory: Path, offset: int, *, where: str = "value", partition: int = 0
) -> RecordLocation:
    """Flip a byte inside record ``offset``: ``where`` is "value" (last byte), "header" or "magic"."""
    loc = locate_record(directory, offset, partition)
    at = {"value": loc.pos + loc.size - 1, "header": loc.pos + 20, "magic": loc.pos}[where]
    corrupt_byte(loc.path, at)
    return loc


def last_segment(directory: Path, partition: int = 0) -> Path:
    pdir = seg.partition_dir(directory, partition)
    bases = seg.list_segments(pdir)
    if not bases:
        raise FileNotFoundError(f"no segments in {pdir}")
    return seg.segment_path(pdir, bases[-1])


def tear_tail(
    directory: Path, *, offset: int = 2**40, value_size: int = 1000, keep: float = 0.5, partition: int = 0
) -> int:
    """Append the first ``keep`` fraction of an encoded record to the last segment (a torn write).

    Returns the number of bytes appended.
    """
    rec = seg.encode_record(offset, seg.now_ms(), b"torn", b"\xab" * value_size)
    part = rec[: max(1, int(len(rec) * keep))]
    with open(last_segment(directory, partition), "ab") as f:
        f.write(part)
        f.flush()
        os.fsync(f.fileno())
    return len(part)


def truncate_last_segment(directory: Path, size: int, partition: int = 0) -> None:
    """Cut the last segment to ``size`` bytes (a power loss that kept only part of the file)."""
    path = last_segment(directory, partition)
    os.truncate(path, min(size, path.stat().st_size))


def lose_records(directory: Path, first: int, last: int, partition: int = 0) -> int:
    """Make records with offsets in [first, last] vanish, as a log that lost data would.

    Segments holding only such records are deleted; others are rewritten without them (their seal,
    if any, keeps its offsets so the loss shows). Returns how many records were removed.
    """
    pdir = seg.partition_dir(directory, partition)
    removed = 0
    changed = False
    for base in seg.list_segments(pdir):
        path = seg.segment_path(pdir, base)
        try:
            seal = seg.read_seal(pdir, base)
        except seg.BadSeal:
            seal = None
        keep: list[bytes] = []
        drop = 0
        data = path.read_bytes()
        limit = len(data) if seal is None else min(seal.end_pos, len(data))
        fd = os.open(path, os.O_RDONLY)
        try:
            win = seg.FileWindow(fd)
            p = 0
            while p < limit:
                r = seg.read_record(win, p, want_payload=False, limit=limit)
                if r.status is not seg.Status.OK or r.header is None:
                    break
                if first <= r.header.number <= last:
                    drop += 1
                else:
                    keep.append(data[p : r.header.end])
                p = r.header.end
        finally:
            os.close(fd)
        if not drop:
            continue
        removed += drop
        changed = True
        if not keep:
            os.unlink(path)
            seg.seal_path(pdir, base).unlink(missing_ok=True)
            continue
        body = b"".join(keep)
        write_atomic(path, body)
        if seal is not None:
            seg.write_seal(
                pdir, base, seg.Seal(len(body), seal.next_offset, seal.reserved_next, seal.sealed_ms)
            )
    if changed:
        fsync_dir(pdir)
    return removed
