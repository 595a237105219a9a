"""Start a throwaway ``lossproof up`` for benchmarks and tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lossproof.config import new_key
from lossproof.up import wait_ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def spawned_pipeline(
    data_dir: Path, port: int | None = None, key: str | None = None
) -> Iterator[tuple[str, str]]:
    """Yields (url, api key) of a running pipeline; stops it (SIGTERM) on exit. ``key``: the default
    tenant's key of an existing data dir (a fresh one gets a new key)."""
    port = port or free_port()
    key = key or new_key()
    env = {**os.environ, "LOSSPROOF_API_KEY": key}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lossproof", "up", "--data-dir", str(data_dir), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(url, 60):
            raise RuntimeError(f"lossproof up did not become ready on {url}")
        yield url, key
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
