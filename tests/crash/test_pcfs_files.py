"""The power-cut file system's own promises for files extended with ftruncate and files deleted while
open (what Kafka does with its preallocated, mmap'd indexes), through a real mount."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from lptest.powercut import PowerCutFS, require_fuse

pytestmark = pytest.mark.process

MIB = 1 << 20


def durable_file(fs: PowerCutFS, name: str) -> Path:
    """A new file whose name is durable (its directory synced)."""
    path = fs.root / name
    path.write_bytes(b"")
    fd = os.open(fs.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def test_an_extended_file_reads_zeros_and_keeps_only_what_was_synced(tmp_path: Path) -> None:
    require_fuse()
    with PowerCutFS(tmp_path) as fs:
        path = durable_file(fs, "index")
        with open(path, "r+b") as f:
            f.write(b"a" * 100)
            f.truncate(10 * MIB)  # preallocated, as Kafka's indexes
            f.flush()
            os.fsync(f.fileno())
            with mmap.mmap(f.fileno(), 10 * MIB) as m:
                assert m[90:110] == b"a" * 10 + bytes(10)
                m[5 * MIB : 5 * MIB + 3] = b"xyz"
                m.flush()  # msync: written back and synced
                m[6 * MIB : 6 * MIB + 3] = b"lost"[:3]  # never synced
            f.truncate(20 * MIB)  # never synced either
        assert path.stat().st_size == 20 * MIB
        fs.power_cut()
        data = path.read_bytes()
        assert len(data) == 10 * MIB, "the size a sync wrote, not the later one"
        assert data[:100] == b"a" * 100 and data[5 * MIB : 5 * MIB + 3] == b"xyz"
        assert data.count(0) == len(data) - 103, "everything else reads as zeros"


def test_a_shrunk_then_extended_file_has_no_old_bytes_after_its_sync(tmp_path: Path) -> None:
    require_fuse()
    with PowerCutFS(tmp_path) as fs:
        path = durable_file(fs, "f")
        with open(path, "r+b") as f:
            f.write(b"b" * 8192)
            os.fsync(f.fileno())
            f.truncate(10)
            f.truncate(8192)
            f.seek(0)
            assert f.read() == b"b" * 10 + bytes(8182)
            os.fsync(f.fileno())
        fs.power_cut()
        assert path.read_bytes() == b"b" * 10 + bytes(8182)


def test_a_deleted_file_is_readable_while_open_and_gone_after_the_cut_once_its_deletion_is_synced(
    tmp_path: Path,
) -> None:
    require_fuse()
    with PowerCutFS(tmp_path) as fs:
        path = durable_file(fs, "segment")
        keep = durable_file(fs, "other")
        keep.write_bytes(b"k")
        with open(path, "r+b") as f:
            f.write(b"c" * 5000)
            os.fsync(f.fileno())
            path.unlink()
            f.seek(0)
            assert f.read() == b"c" * 5000, "an open file outlives its name"
        fd = os.open(fs.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fs.power_cut()
        assert sorted(p.name for p in fs.root.iterdir()) == ["other"]
        assert keep.read_bytes() == b"", "its bytes were never synced"
