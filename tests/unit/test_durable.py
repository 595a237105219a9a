"""The power-loss-safe file steps: a whole replacement or none, and new names made durable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lossproof import durable


def test_write_atomic_replaces_whole_and_leaves_no_tmp(tmp_path: Path) -> None:
    p = tmp_path / "f"
    durable.write_atomic(p, b"one")
    durable.write_atomic(p, b"two" * 100_000)
    assert p.read_bytes() == b"two" * 100_000
    assert os.listdir(tmp_path) == ["f"]


def test_failed_write_keeps_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "f"
    durable.write_atomic(p, b"old")

    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durable.os, "fsync", fail)
    with pytest.raises(OSError):
        durable.write_atomic(p, b"new")
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_make_dirs_syncs_every_new_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(durable, "fsync_dir", synced.append)
    durable.make_dirs(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c").is_dir()
    assert synced == [tmp_path, tmp_path / "a", tmp_path / "a" / "b"]
    synced.clear()
    durable.make_dirs(tmp_path / "a" / "b")  # exists: nothing new to make durable
    assert synced == []


def test_writev_all_writes_more_buffers_than_iov_max(tmp_path: Path) -> None:
    bufs = [bytes([i % 256]) * (i % 7) for i in range(3 * durable.IOV_MAX)]
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert durable.writev_all(fd, bufs) == sum(map(len, bufs))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(bufs)
