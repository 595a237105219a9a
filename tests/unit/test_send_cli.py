"""`lossproof send` before and while it talks to a server: progress on stderr while it retries, and a
timestamp in seconds refused before anything is sent (it would be stored in 1970, or refused and
counted as lost)."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import pytest

from lptest.cli import run_cli
from lptest.inproc import InProcess


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nobody listens here


def test_retries_are_shown_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = tmp_path / "in.jsonl"
    line.write_text('{"metric": "m", "v": 1}\n')
    url = f"http://127.0.0.1:{_closed_port()}"
    args = ["send", "--url", url, "--api-key", "k", "--state-dir", str(tmp_path / "s"), "--attempts", "3"]
    r = run_cli(monkeypatch, capsys, *args, str(line))
    assert r.code == 1
    lines = r.err.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines[:2]] == ["attempt 1/3 failed", "attempt 2/3 failed"], r.err
    assert "cannot reach" in lines[0] and "trying again in 0.2 s" in lines[0]
    assert lines[-1].startswith("Error: not acknowledged after 3 attempts") and len(lines) == 3


@pytest.mark.parametrize("t", [0, 1_767_225_600, 99_999_999_999.5])
def test_a_timestamp_in_seconds_is_refused_before_sending(
    t: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = tmp_path / "in.jsonl"
    line.write_text(f'{{"metric": "m", "v": 1}}\n{{"metric": "m", "v": 1, "t": {t}}}\n')
    url = f"http://127.0.0.1:{_closed_port()}"  # never reached: refused first
    args = ["send", "--url", url, "--api-key", "k", "--state-dir", str(tmp_path / "s"), "--attempts", "1"]
    r = run_cli(monkeypatch, capsys, *args, str(line))
    assert r.code == 1
    (err,) = r.err.strip().splitlines()
    assert err.startswith("Error: line 2: t ") and "seconds" in err and "cannot reach" not in err


def test_wait_stored_says_acknowledged_but_not_stored_when_the_worker_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    p = InProcess(tmp_path / "data", "lp_test_" + secrets.token_hex(16))
    p.start(worker=False)  # acknowledged into the log, never stored
    try:
        line = tmp_path / "in.jsonl"
        line.write_text('{"metric": "m", "v": 1}\n')
        args = ["send", "--url", p.url, "--api-key", p.key, "--state-dir", str(tmp_path / "s")]
        r = run_cli(monkeypatch, capsys, *args, "--wait-stored", "--wait-timeout", "1", str(line))
    finally:
        p.stop()
    assert r.code == 1
    *progress, error = r.err.strip().splitlines()  # more progress lines if a try is slow (load)
    assert any("waiting for the worker" in line for line in progress), r.err
    assert error.startswith("Error: acknowledged, but not stored within 1 s") and "nothing is lost" in error


def test_wait_stored_returns_once_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    p = InProcess(tmp_path / "data", "lp_test_" + secrets.token_hex(16))
    p.start()
    try:
        line = tmp_path / "in.jsonl"
        line.write_text('{"metric": "m", "v": 1}\n' * 3)
        args = ["send", "--url", p.url, "--api-key", p.key, "--state-dir", str(tmp_path / "s")]
        r = run_cli(monkeypatch, capsys, *args, "--points-per-report", "1", "--wait-stored", str(line))
        assert r.code == 0, r
        assert r.out.strip().endswith(f"3 points in 3 reports acknowledged durable and stored by {p.url}")
        status, body = p.get("/v1/query?metric=m")
        assert status == 200 and len(body["series"][0]["points"]) >= 1
    finally:
        p.stop()
