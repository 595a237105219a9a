"""`lossproof send` and `lossproof up` from the command line: what they do with bad input, refused
reports and a port already taken (one line and a non-zero exit, never a traceback)."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lptest.pipeline import Pipeline, report

LOSSPROOF = [sys.executable, "-m", "lossproof"]


def send(p: Pipeline, state: Path, data: bytes, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOSSPROOF, "send", "--url", p.url, "--api-key", p.key, "--state-dir", str(state), *args],
        input=data.decode("utf-8", "surrogateescape"),
        capture_output=True,
        text=True,
        errors="surrogateescape",
        timeout=60,
    )


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def test_a_refused_report_is_accounted_as_lost_by_the_next_send(pipeline: Pipeline, tmp_path: Path) -> None:
    state = tmp_path / "state"
    good = b'{"metric": "m", "v": 1, "labels": {"host": "x"}}\n'
    msg = one_line_error(send(pipeline, state, b'{"metric": "m", "v": "not a number"}\n', "--agent", "cli1"))
    assert "400" in msg
    r = send(pipeline, state, good, "--agent", "cli1")
    assert r.returncode == 0, r.stderr
    ledger = pipeline.wait_stored("cli1", {2})
    # seq 1 was given up on: lost, with why; not "missing", which would mean lost in the pipeline
    assert ledger["missing"] == []
    assert [lr["range"] for lr in ledger["lost"]] == [[1, 1]], ledger
    assert "gave up" in ledger["lost"][0]["reason"] and "400" in ledger["lost"][0]["reason"]
    r = send(pipeline, state, good, "--agent", "cli1")  # reported once, not again
    assert r.returncode == 0, r.stderr
    assert pipeline.wait_stored("cli1", {3})["lost"] == ledger["lost"]


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Not lossproof: answers every POST 200 with a body that looks like an acknowledgement."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"acked": [[1, 1000]], "replay": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_200_that_is_not_an_acknowledgement_is_not_taken_for_one(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    good = b'{"metric": "m", "v": 1, "labels": {"host": "x"}}\n'
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        impostor = Pipeline(pipeline.data_dir, int(srv.server_address[1]), pipeline.key)
        r = send(impostor, state, good, "--agent", "cli2", "--attempts", "2")
        # one line of progress per failed try but the last, then the error
        progress, _, last = r.stderr.strip().rpartition("\n")
        assert progress.startswith("attempt 1/2 failed: ") and "\n" not in progress, r.stderr
        msg = one_line_error(subprocess.CompletedProcess(r.args, r.returncode, r.stdout, last))
    finally:
        srv.shutdown()
        srv.server_close()
    assert "not acknowledged after 2 attempts" in msg and "X-Lossproof-Protocol" in msg, msg
    # the next run, against the real pipeline, says seq 1 was given up on, and why
    assert send(pipeline, state, good, "--agent", "cli2").returncode == 0
    ledger = pipeline.wait_stored("cli2", {2})
    assert [lr["range"] for lr in ledger["lost"]] == [[1, 1]]
    assert "did not acknowledge" in ledger["lost"][0]["reason"]


def test_nan_is_sent_as_nan(pipeline: Pipeline, tmp_path: Path) -> None:
    r = send(
        pipeline, tmp_path / "s", b'{"metric": "nan_m", "v": NaN, "t": 1700000000000}\n', "--agent", "cli2"
    )
    assert r.returncode == 0, r.stderr
    pipeline.wait_stored("cli2", {1})
    status, q = pipeline.get("/v1/query?metric=nan_m&from=0&to=9999999999999")
    assert status == 200
    assert [p[1] for p in q["series"][0]["points"]] == ["NaN"], q


def test_bad_arguments_are_one_line_errors(pipeline: Pipeline, tmp_path: Path) -> None:
    good = b'{"metric": "m", "v": 1}\n'
    started = time.monotonic()
    assert "--url" in one_line_error(
        subprocess.run(
            [*LOSSPROOF, "send", "--url", "ftp://x", "--api-key", "k", "--state-dir", str(tmp_path)],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
    )
    assert time.monotonic() - started < 10  # refused at once, not after retries
    assert "--agent" in one_line_error(send(pipeline, tmp_path / "s", good, "--agent", "a" * 300))
    assert "UTF-8" in one_line_error(send(pipeline, tmp_path / "s", b'{"metric": "\xff"}\n', "--agent", "x"))
    one_line_error(send(pipeline, Path("/proc/nope"), good, "--agent", "x"))
    # a long agent id within the protocol's limit gets a state file of its own
    assert send(pipeline, tmp_path / "s", good, "--agent", "b" * 256).returncode == 0


@pytest.mark.process
def test_up_refuses_a_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [*LOSSPROOF, "up", "--data-dir", str(tmp_path / "d"), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert f"127.0.0.1:{port}" in one_line_error(r)
    # nothing created: the next start makes the config and prints its key
    assert not (tmp_path / "d").exists()


def test_up_stops_when_a_child_cannot_start(pipeline: Pipeline) -> None:
    """A second pipeline on a data dir in use: its ingest cannot take the log, so `up` says why and
    exits, instead of restarting it forever; the first pipeline is untouched."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run(
        [*LOSSPROOF, "up", "--data-dir", str(pipeline.data_dir), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "another process is writing the log" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: the ingest process exited")
    assert pipeline.post_reports("still-up", [report(1)]).status == 200
