"""Test helpers for the agent: run `lossproof agent` as a real process, a stand-in receiver that
records what agents send, and reading an agent's /metrics."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import tomli_w
import urllib3
import zstandard
from prometheus_client.parser import text_string_to_metric_families

from lossproof.agent.spool.format import read_all
from lossproof.protocol.ack import ACK_HEADERS

HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_argv(config: Path) -> list[str]:
    """`lossproof agent` once the lead registered it in cli.py, else the module entry point."""
    from lossproof.cli import cli

    if "agent" in getattr(cli, "commands", {}):
        return [sys.executable, "-m", "lossproof", "agent", "--config", str(config)]
    return [sys.executable, "-m", "lossproof.agent", "--config", str(config)]


def write_config(path: Path, **values: Any) -> Path:
    path.write_text(tomli_w.dumps({k: v for k, v in values.items() if v is not None}))
    return path


def base_config(tmp: Path, primary: str, key: str, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "agent_id": "agent-under-test",
        "api_key": key,
        "primary_url": primary,
        "spool_dir": str(tmp / "spool"),
        "interval_seconds": 0.1,
        "statsd_port": 0,
        "metrics_port": free_port(),
        "collect_host": True,
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 1.0,
        "shutdown_drain_seconds": 5.0,
        "labels": {"host": "test-host"},
    }
    cfg.update(over)
    return cfg


@dataclass
class AgentProc:
    """`lossproof agent --config` as a child process, killed -9 or stopped like a real one."""

    config: Path
    cfg: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_paths: list[Path] = field(default_factory=list)

    def start(self) -> None:
        self.starts += 1
        log = self.config.with_name(f"{self.config.stem}-run{self.starts}.log")
        self.log_paths.append(log)
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(agent_argv(self.config), stdout=f, stderr=subprocess.STDOUT)

    def wait_started(self, timeout: float = 20) -> dict[str, Any]:
        """The `agent.started` log line of the current run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.run_log().splitlines():
                if '"agent.started"' in line:
                    return json.loads(line)  # type: ignore[no-any-return]
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.run_log()[-2000:]}")
            time.sleep(0.02)
        raise AssertionError(f"agent did not start: {self.run_log()[-2000:]}")

    def run_log(self) -> str:
        return self.log_paths[-1].read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.log_paths)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[str, float]:
        return scrape(int(self.cfg["metrics_port"]))

    @property
    def spool_dir(self) -> Path:
        return Path(self.cfg["spool_dir"])


def scrape(port: int) -> dict[str, float]:
    """``name{label="v",...}`` → value of an agent's /metrics (labels sorted)."""
    text = HTTP.request("GET", f"http://127.0.0.1:{port}/metrics").data.decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib3.exceptions.HTTPError, OSError, AssertionError, KeyError):
            last = cond()
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r:.500})")


def spool_records(spool_dir: Path) -> dict[int, bytes]:
    """seq → report bytes of every intact record in the spool; asserts no seq holds two reports."""
    out: dict[int, bytes] = {}
    for _, rec, payload in read_all(spool_dir):
        if rec.seq in out:
            assert out[rec.seq] == payload, f"seq {rec.seq} holds two different reports"
        out[rec.seq] = payload
    return out


# --- a stand-in receiver --------------------------------------------------------------------------


@dataclass
class Received:
    status: int
    agent: str
    seqs: list[int]
    dropped: list[tuple[int, int, str]]
    spool: dict[str, int] | None
    reports: list[dict[str, Any]]
    at: float


Policy = Callable[["StandIn", Received], tuple[int, dict[str, Any], dict[str, str]]]


def accept_all(srv: StandIn, req: Received) -> tuple[int, dict[str, Any], dict[str, str]]:
    return 200, {"acked": [[s, s] for s in req.seqs], "replay": []}, {}


def answer_headers(headers: dict[str, str]) -> dict[str, str]:
    """A stand-in plays lossproof: its answers carry the protocol header unless the policy sets it
    itself (to a value, or to "" to leave it out and play a server that is not lossproof)."""
    return {k: v for k, v in {**ACK_HEADERS, **headers}.items() if v != ""}


class StandIn:
    """A native-protocol receiver in a thread: decodes each request, records it, answers per ``policy``.

    Stands in for the fallback receiver (and for a primary whose answers a test wants to script)."""

    def __init__(self, policy: Policy = accept_all, port: int = 0, delay: float = 0.0) -> None:
        self.policy = policy
        self.delay = delay
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.concurrent = 0
        self.max_concurrent = 0
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                with srv.lock:
                    srv.concurrent += 1
                    srv.max_concurrent = max(srv.max_concurrent, srv.concurrent)
                try:
                    raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                    enc = self.headers.get("Content-Encoding", "")
                    if enc == "zstd":
                        raw = zstandard.ZstdDecompressor().decompress(raw, max_output_size=256 * 2**20)
                    elif enc == "gzip":
                        raw = gzip.decompress(raw)
                    if "msgpack" in self.headers.get("Content-Type", ""):
                        body = msgspec.msgpack.decode(raw)
                    else:
                        body = json.loads(raw)
                    req = Received(
                        0,
                        body["agent"],
                        [r["seq"] for r in body["reports"]],
                        [(d["first"], d["last"], d["reason"]) for d in body.get("dropped", [])],
                        body.get("spool"),
                        body["reports"],
                        time.monotonic(),
                    )
                    if srv.delay:
                        time.sleep(srv.delay)
                    status, answer, headers = srv.policy(srv, req)
                    req.status = status
                    with srv.lock:
                        srv.requests.append(req)
                    data = json.dumps(answer).encode()
                    self.send_response(status)
                    for k, v in answer_headers(headers).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with srv.lock:
                        srv.concurrent -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StandIn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def acked_seqs(self) -> set[int]:
        with self.lock:
            return {s for r in self.requests if r.status == 200 for s in r.seqs}

    def reported_drops(self) -> list[tuple[int, int, str]]:
        with self.lock:
            return [d for r in self.requests if r.status == 200 for d in r.dropped]

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.requests)


def expand(ranges: Any) -> set[int]:
    return {s for r in ranges for s in range(r[0], r[1] + 1)}


def env_without_agent_vars() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOSSPROOF_AGENT")}
