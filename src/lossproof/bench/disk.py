"""The disk's own sequential write + fsync speed, the ceiling for any durable log on it."""

from __future__ import annotations

import os
import time
from pathlib import Path


def write_fsync_mib_s(directory: Path, chunk_bytes: int = 1 << 20, seconds: float = 3.0) -> float:
    """Append ``chunk_bytes`` and fsync, repeatedly, for ``seconds``; MiB/s achieved."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".bench-disk-{os.getpid()}"
    chunk = os.urandom(chunk_bytes)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.write(fd, chunk)
            os.fsync(fd)
            written += chunk_bytes
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return written / elapsed / 2**20
