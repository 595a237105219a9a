"""`lossproof up` at a terminal: a short banner (dashboard URL, key when generated, data dir) and
readable log lines; JSON log lines with --log-format json, as when not at a terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lptest import subprocess_env
from lptest.pipeline import free_port

pytestmark = pytest.mark.process


def _up_on_a_terminal(data_dir: Path, *args: str) -> str:
    """Run `up` with stdout and stderr on a pseudo-terminal until it is up and has logged a while;
    returns everything it wrote."""
    port = free_port()
    leader, follower = pty.openpty()
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("LOSSPROOF_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lossproof", "up", "--data-dir", str(data_dir), "--port", str(port), *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    out = b""
    try:
        deadline = time.monotonic() + 60
        up_at = None
        while time.monotonic() < deadline:
            if up_at is None and b"lossproof is up" in out:
                up_at = time.monotonic()
            if up_at is not None and time.monotonic() - up_at > 1.0:
                break
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    out += os.read(leader, 65536)
                except OSError:  # the terminal closed: up exited
                    break
        assert up_at is not None, out.decode(errors="replace")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        os.close(leader)
    return out.decode(errors="replace").replace("\r\n", "\n")


def _log_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "child_started" in line or "ingest.listening" in line]


def test_a_terminal_gets_a_banner_and_readable_lines(tmp_path: Path) -> None:
    out = _up_on_a_terminal(tmp_path / "d")
    assert "dashboard   http://127.0.0.1:" in out
    assert f"data dir    {tmp_path / 'd'}" in out
    key_line = next(line for line in out.splitlines() if "API key     lp_" in line)
    assert "tenant default" in key_line
    lines = _log_lines(out)
    assert lines, out
    assert not any(line.lstrip().startswith("{") for line in lines), lines
    # a second start generated no key and shows none
    again = _up_on_a_terminal(tmp_path / "d")
    assert "dashboard   http://127.0.0.1:" in again and "API key" not in again


def test_log_format_json_at_a_terminal(tmp_path: Path) -> None:
    out = _up_on_a_terminal(tmp_path / "d", "--log-format", "json")
    lines = _log_lines(out)
    assert lines, out
    for line in lines:
        assert json.loads(line)["event"] in {"up.child_started", "ingest.listening"}
    assert "dashboard   http" not in out  # machine-readable: the plain one-line notice
    assert "lossproof is up: http://127.0.0.1:" in out
