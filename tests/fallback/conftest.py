from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lptest import require
from lptest.fallback import Fallback, kill_quietly


@pytest.fixture
def fallback_factory(tmp_path: Path) -> Iterator[Callable[..., Fallback]]:
    started: list[Fallback] = []

    def make(name: str = "fb", key: str | None = None, extra_args: list[str] | None = None) -> Fallback:
        fb = Fallback(tmp_path / name, key or "lp_test_" + secrets.token_hex(16), extra_args=extra_args or [])
        started.append(fb)
        return fb

    yield make
    for fb in started:
        kill_quietly(fb.proc)


@pytest.fixture
def fallback(fallback_factory: Callable[..., Fallback]) -> Fallback:
    fb = fallback_factory()
    fb.start()
    return fb


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/tiny``: a real file system that fills up (a 2 MiB tmpfs, as in the disk-full test
    of the pipeline; needs root), unmounted afterwards. Name a fallback ``tiny`` to put its data dir
    there (its logs and fault file stay in ``tmp_path``)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode == 0
    require(mounted, "a small tmpfs mount (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
