"""Bad arguments to the CLI: a one-line error and a non-zero exit, never a traceback, a hang or a run
that goes on with nonsense. Each case runs the real entry point (``lossproof.cli.main``, in this
process, so a bad argument costs milliseconds) against unreachable addresses; the cases that run a
real benchmark or a real connection timeout run ``python -m lossproof`` as a process."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lptest.cli import run_cli

UNREACHABLE_KAFKA = "127.0.0.1:1"
UNREACHABLE_URL = "http://127.0.0.1:1"

Fails = Callable[..., str]


def _one_error(returncode: int, stderr: str, args: tuple[str, ...], rc: int | None) -> str:
    """Assert a non-zero exit, no traceback, exactly one error line (click's usage errors add their
    "Usage:"/"Try" lines); return that line."""
    assert returncode != 0, f"exit 0 for {args}: {stderr!r}"
    if rc is not None:
        assert returncode == rc, stderr
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture
def fails(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Fails:
    """Run ``lossproof ARGS`` through the real entry point in this process (:func:`run_cli`)."""

    def run(cwd: Path, *args: str, env: dict[str, str] | None = None, rc: int | None = None) -> str:
        ran = run_cli(monkeypatch, capsys, *args, cwd=cwd, env=env)
        return _one_error(ran.code, ran.err, args, rc)

    return run


def fails_process(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60, rc: int | None = None
) -> str:
    """As :func:`fails`, as a process of its own: for commands that measure or wait for real."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSPROOF_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "lossproof", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return _one_error(proc.returncode, proc.stderr, args, rc)


# --- B4: nan and inf are refused by every float option ----------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["chaos", "run", "kill-ingest", "--duration", "nan"],
        ["chaos", "run", "kill-ingest", "--duration", "inf"],
        ["bench", "ingest", "--api-key", "x", "--duration", "nan"],
        ["bench", "kafka", "--bootstrap-servers", UNREACHABLE_KAFKA, "--topic", "t", "--seconds", "nan"],
        ["bench", "agent", "--seconds", "nan"],
        ["bench", "replay", "--rate", "nan"],
        ["bench", "replay", "--rate", "inf"],
        ["bench", "replay", "--rate", "-5"],
        ["bench", "replay", "--rate", "0"],
        ["kafka", "init", "--bootstrap-servers", UNREACHABLE_KAFKA, "--timeout", "nan"],
    ],
)
def test_non_finite_and_out_of_range_floats_refused(fails: Fails, tmp_path: Path, args: list[str]) -> None:
    line = fails(tmp_path, *args, rc=2)
    assert "Invalid value" in line


def test_finite_float_type() -> None:
    import click

    from lossproof.cliutil import finite_float

    t = finite_float(0, min_open=True)
    assert t.convert("2.5", None, None) == 2.5
    for bad in ("nan", "inf", "-inf", "0", "-1", "x"):
        with pytest.raises(click.BadParameter):
            t.convert(bad, None, None)


# --- path settings of the server's config (lossproof.toml) ----------------------------------------

# A NUL byte reached the first open/mkdir: `up`'s worker died on it three times, the fallback receiver
# served with a config naming an unusable path. Now every command that loads the file refuses it.
NUL_PATHS = [
    ('[store]\npath = "a\\u0000b"\n', "store.path: 'a\\x00b' contains a NUL byte"),
    ('[log]\ndir = "a\\u0000b"\n', "log.dir: 'a\\x00b' contains a NUL byte"),
    ('[log]\ndir = ""\n', "log.dir: must not be empty"),
]


@pytest.mark.process
@pytest.mark.parametrize("command", [["up", "--port", "0"], ["fallback", "--port", "0"]])
@pytest.mark.parametrize(("text", "needle"), NUL_PATHS)
def test_bad_path_settings_refused_at_start(
    tmp_path: Path, command: list[str], text: str, needle: str
) -> None:
    (tmp_path / "lossproof.toml").write_text(text)
    line = fails_process(tmp_path, command[0], "--data-dir", str(tmp_path), *command[1:], timeout=30)
    assert needle in line and "lossproof.toml" in line, line


@pytest.mark.parametrize(("text", "needle"), NUL_PATHS)
def test_bad_path_settings_refused_by_keys(fails: Fails, tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "lossproof.toml").write_text(text)
    line = fails(tmp_path, "keys", "list", "--data-dir", str(tmp_path))
    assert needle in line, line


# --- B3 / C7: kafka init ----------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["bad topic!", ""])
def test_kafka_init_bad_topic(fails: Fails, tmp_path: Path, topic: str) -> None:
    line = fails(tmp_path, "kafka", "init", "--bootstrap-servers", UNREACHABLE_KAFKA, "--topic", topic)
    assert "--topic" in line


def test_kafka_init_empty_bootstrap(fails: Fails, tmp_path: Path) -> None:
    line = fails(tmp_path, "kafka", "init", "--bootstrap-servers", "")
    assert "--bootstrap-servers" in line and "empty" in line


def test_kafka_init_min_isr_above_rf_refused_before_connecting(fails: Fails, tmp_path: Path) -> None:
    line = fails(
        tmp_path,
        "kafka",
        "init",
        "--bootstrap-servers",
        UNREACHABLE_KAFKA,
        "--unsafe",
        "--replication-factor",
        "1",
        "--min-insync-replicas",
        "2",
    )
    assert "min.insync.replicas 2" in line and "Kafka at" not in line


def test_kafka_init_env_overrides_apply_without_config(fails: Fails, tmp_path: Path) -> None:
    data = str(tmp_path / "no-config")
    line = fails(
        tmp_path, "kafka", "init", "--data-dir", data, env={"LOSSPROOF_LOG_KAFKA_TOPIC": "bad topic"}
    )
    assert "LOSSPROOF_LOG_KAFKA_TOPIC" in line
    line = fails(
        tmp_path,
        "kafka",
        "init",
        "--data-dir",
        data,
        "--timeout",
        "1",
        env={"LOSSPROOF_LOG_KAFKA_BOOTSTRAP_SERVERS": UNREACHABLE_KAFKA},
    )
    assert f"Kafka at {UNREACHABLE_KAFKA}:" in line


# --- bench kafka ------------------------------------------------------------------------------------


def test_bench_kafka_bad_topic(fails: Fails, tmp_path: Path) -> None:
    args = ["--bootstrap-servers", UNREACHABLE_KAFKA, "--topic", "bad topic", "--seconds", "1"]
    line = fails(tmp_path, "bench", "kafka", *args)
    assert "--topic" in line


@pytest.mark.process  # waits for the Kafka client's own connection timeout
def test_bench_kafka_unreachable_fails_before_measuring(tmp_path: Path) -> None:
    args = ["--bootstrap-servers", UNREACHABLE_KAFKA, "--topic", "t", "--seconds", "1"]
    line = fails_process(tmp_path, "bench", "kafka", *args, timeout=30)
    assert f"Kafka at {UNREACHABLE_KAFKA}" in line


# --- bench ingest -----------------------------------------------------------------------------------


def test_bench_ingest_bad_url(fails: Fails, tmp_path: Path) -> None:
    line = fails(tmp_path, "bench", "ingest", "--url", "notaurl", "--api-key", "x")
    assert "notaurl" in line


def test_bench_ingest_log_kafka_checked_before_running(fails: Fails, tmp_path: Path) -> None:
    line = fails(tmp_path, "bench", "ingest", "--spawn", "--log", "kafka")
    assert "--data-dir" in line


def test_bench_ingest_unreachable(fails: Fails, tmp_path: Path) -> None:
    args = ["--url", UNREACHABLE_URL, "--api-key", "x", "--duration", "1"]
    line = fails(tmp_path, "bench", "ingest", *args)
    assert "cannot reach" in line


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A pipeline that refuses every key: GETs (/metrics, /healthz) answer, POSTs get 401."""

    def do_GET(self) -> None:
        body = b"# nothing\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error":"unknown API key"}'
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_url() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.process
@pytest.mark.parametrize("protocol", ["native", "prom-rw"])
def test_bench_ingest_nothing_acknowledged_fails(tmp_path: Path, refusing_url: str, protocol: str) -> None:
    args = ["--url", refusing_url, "--api-key", "wrong", "--duration", "1", "--agents", "2"]
    args += ["--points-per-report", "10", "--protocol", protocol]
    line = fails_process(tmp_path, "bench", "ingest", *args)
    assert "nothing acknowledged" in line and "401" in line


# --- bench agent / replay ---------------------------------------------------------------------------


def test_bench_agent_unreachable(fails: Fails, tmp_path: Path) -> None:
    line = fails(tmp_path, "bench", "agent", "--url", UNREACHABLE_URL, "--api-key", "x")
    assert "cannot reach" in line


def test_bench_agent_url_needs_key(fails: Fails, tmp_path: Path) -> None:
    line = fails(tmp_path, "bench", "agent", "--url", UNREACHABLE_URL)
    assert "--api-key" in line


def test_bench_replay_unreachable(fails: Fails, tmp_path: Path) -> None:
    line = fails(tmp_path, "bench", "replay", "--url", UNREACHABLE_URL, "--api-key", "x")
    assert "cannot reach" in line


# --- store bench (B2, B3, B6) -----------------------------------------------------------------------


@pytest.mark.parametrize("cmd", [["store", "bench"], ["bench", "store"]])
@pytest.mark.parametrize("writers", ["abc", "0", "", "1,x", "-1"])
def test_store_bench_bad_writers(fails: Fails, tmp_path: Path, cmd: list[str], writers: str) -> None:
    line = fails(tmp_path, *cmd, "--writers", writers, "--points", "10000")
    assert "--writers" in line


def test_store_bench_points_smaller_than_two_batches(fails: Fails, tmp_path: Path) -> None:
    line = fails(tmp_path, "store", "bench", "--points", "10000", "--writers", "1")
    assert "two batches" in line


def test_store_bench_unreachable_postgres_fails_at_once(fails: Fails, tmp_path: Path) -> None:
    dsn = "postgresql://nobody@127.0.0.1:1/x"
    args = ["--dsn", dsn, "--points", "10000", "--writers", "1", "--agents", "2"]
    line = fails(tmp_path, "store", "bench", *args, "--points-per-report", "100")
    assert "PostgreSQL" in line
    # the reported command line: also one line at once (the batch size is checked first)
    fails(tmp_path, "store", "bench", "--dsn", dsn, "--points", "10000", "--writers", "1")


@pytest.mark.process
def test_store_bench_failing_writer_does_not_hang(fails: Fails, tmp_path: Path) -> None:
    """A writer process that cannot open its store ends the run at once with its error."""
    code = (
        "from lossproof.bench.store import BenchError, bench_store_processes\n"
        "try:\n"
        "    spec = ('postgres', 'postgresql://nobody@127.0.0.1:1/x', 's')\n"
        "    bench_store_processes(spec, 2, 10000, 100, 2)\n"
        "except BenchError as e:\n"
        "    print('BenchError', e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.stdout.startswith("BenchError writer "), proc.stdout + proc.stderr


@pytest.mark.process
def test_store_bench_small_run_works(fails: Fails, tmp_path: Path) -> None:
    """The sizes fit: every run of a small bench stores timed points."""
    args = ["--points", "10000", "--agents", "2", "--points-per-report", "100", "--writers", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "lossproof", "store", "bench", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    [row] = [line.split() for line in proc.stdout.splitlines() if line.startswith("embedded")]
    assert int(row[2]) > 0
    assert "load" in proc.stdout.splitlines()[-1]  # the machine's load, printed with the numbers


# --- chaos (B4, B5) ---------------------------------------------------------------------------------


def test_chaos_json_checked_before_running(fails: Fails, tmp_path: Path) -> None:
    line = fails(tmp_path, "chaos", "run", "kill-ingest", "--json", "/nonexistent/dir/x.json")
    assert "/nonexistent/dir" in line


# --- dev kafka (B3, C6) -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["down"], ["kill", "1"]])
@pytest.mark.parametrize("content", ["{bad", "[1, 2]", '{"nodes": [1]}', '{"nodes": []}', ""])
def test_dev_kafka_damaged_state(fails: Fails, tmp_path: Path, command: list[str], content: str) -> None:
    d = tmp_path / "cluster"
    d.mkdir()
    (d / "cluster.json").write_text(content)
    line = fails(tmp_path, "dev", "kafka", *command, "--dir", str(d))
    assert "damaged" in line


@pytest.mark.parametrize("command", [["status"], ["down"], ["kill", "1"]])
def test_dev_kafka_no_cluster(fails: Fails, tmp_path: Path, command: list[str]) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    line = fails(tmp_path, "dev", "kafka", *command, "--dir", str(d))
    assert "no cluster in" in line


def test_dev_kafka_kill_unknown_node(fails: Fails, tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    d.mkdir()
    state = {
        "version": "4.1.1",
        "cluster_id": "x",
        "libs": str(tmp_path / "libs"),
        "nodes": [{"id": 1, "broker_port": 1, "controller_port": 2}],
    }
    (d / "cluster.json").write_text(json.dumps(state))
    line = fails(tmp_path, "dev", "kafka", "kill", "5", "--dir", str(d))
    assert "no node 5" in line
