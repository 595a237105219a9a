"""Test helpers: run `lossproof fallback` and `lossproof replay` as real processes."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import urllib3
import zstandard

from lossproof.fallback import journal as jn
from lossproof.faults import write_faults
from lossproof.protocol import native
from lossproof.protocol.ack import ACK_HEADERS
from lossproof.protocol.compression import decompress
from lptest.pipeline import with_operator_key

HTTP = urllib3.PoolManager(maxsize=64, timeout=urllib3.Timeout(connect=2, read=30), retries=False)


def lossproof(*args: str) -> list[str]:
    """argv for a lossproof subcommand; the fallback commands work before cli.py registers them."""
    from lossproof.cli import cli

    if args[0] in ("fallback", "replay") and args[0] not in cli.commands:  # type: ignore[attr-defined]
        return [sys.executable, "-m", "lossproof.fallback", *args]
    return [sys.executable, "-m", "lossproof", *args]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fallback:
    data_dir: Path
    key: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    extra_args: list[str] = field(default_factory=list)
    operator_key: str = field(default_factory=lambda: "lp_operator_" + secrets.token_hex(16))

    @property
    def faults_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-faults.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def journal(self) -> Path:
        return jn.journal_dir(self.data_dir)

    def start(self, wait: bool = True, extra_env: dict[str, str] | None = None) -> None:
        env = {
            **os.environ,
            "LOSSPROOF_API_KEY": self.key,
            "LOSSPROOF_FAULTS_FILE": str(self.faults_file),
            **(extra_env or {}),
        }
        self.starts += 1
        with_operator_key(self.data_dir, self.key, self.operator_key)
        log_path = self.data_dir.parent / f"{self.data_dir.name}-fallback-{self.starts}.log"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                lossproof(
                    "fallback", "--data-dir", str(self.data_dir), "--port", str(self.port), *self.extra_args
                ),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"fallback exited with {self.proc.returncode}: {self.logs()[-3000:]}")
            try:
                if HTTP.request("GET", self.url + "/healthz", timeout=1).status == 200:
                    return
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"fallback not ready after {timeout}s: {self.logs()[-3000:]}")

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")
            for p in sorted(self.data_dir.parent.glob(f"{self.data_dir.name}-fallback-*.log"))
        )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def faults(self, faults: dict[str, Any]) -> None:
        write_faults(str(self.faults_file), faults)

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}", "Content-Type": "application/json", **extra}

    def post(
        self, agent: str, reports: list[dict[str, Any]], encoding: str = "identity", key: str | None = None
    ) -> urllib3.BaseHTTPResponse:
        body, enc = encode_body({"agent": agent, "reports": reports}, encoding)
        return post_raw(self.url, body, enc, key or self.key)

    def metrics(self, public: bool = False) -> str:
        """``/metrics`` as an operator sees it (every series), or as anyone else (``public``)."""
        headers = {} if public else {"Authorization": f"Bearer {self.operator_key}"}
        r = HTTP.request("GET", self.url + "/metrics", headers=headers)
        assert r.status == 200, r.data
        return r.data.decode()


def encode_body(body: dict[str, Any], encoding: str) -> tuple[bytes, str]:
    raw = json.dumps(body).encode()
    if encoding == "gzip":
        return gzip.compress(raw), encoding
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(raw), encoding
    return raw, encoding


def post_raw(url: str, body: bytes, encoding: str, key: str, timeout: float = 30) -> urllib3.BaseHTTPResponse:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if encoding != "identity":
        headers["Content-Encoding"] = encoding
    return HTTP.request("POST", url + "/v1/reports", body=body, headers=headers, timeout=timeout)


def journal_seqs(journal: Path) -> list[tuple[str, str, int]]:
    """(tenant, agent, seq) of every report in the journal, in journal order, decoding each body."""
    out = []
    for rec in jn.read_all(journal):
        e = rec.entry
        req = native.decode(decompress(e.body, e.encoding, 2**30), e.content_type)
        out += [(e.tenant, req.agent, r.seq) for r in req.reports]
    return out


def sent_seqs(requests: list[tuple[dict[str, str], bytes]]) -> list[tuple[str, int]]:
    """(agent, seq) of every report in the requests a scripted target received."""
    out = []
    for headers, body in requests:
        raw = decompress(body, headers.get("Content-Encoding", ""), 2**30)
        req = native.decode(raw, headers.get("Content-Type", native.JSON))
        out += [(req.agent, r.seq) for r in req.reports]
    return out


def record_seqs(records: list[jn.Record]) -> list[tuple[str, int]]:
    return [(r.entry.agent, s) for r in records for a, b in r.entry.seqs for s in range(a, b + 1)]


def run_replay(
    data_dir: Path, url: str, key: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        lossproof("replay", "--from", str(data_dir), "--to", url, "--api-key", key, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if not k.startswith("LOSSPROOF_")},
    )


def kill_quietly(proc: subprocess.Popen[Any] | None) -> None:
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def create_key(data_dir: Path, *args: str) -> str:
    out = subprocess.run(
        lossproof("keys", "create", "--data-dir", str(data_dir), *args),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[0]


def ack_of(body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    """What lossproof's ingest answers a decoded native request it stored durably: 200, the protocol
    header and every seq acked (for scripted stand-ins of the main ingest)."""
    seqs = sorted(int(r["seq"]) for r in body.get("reports", []))
    return 200, dict(ACK_HEADERS), {"acked": [[s, s] for s in seqs], "replay": []}


def ack_of_raw(headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
    """As :func:`ack_of`, for the request as it came over the wire (compressed, JSON or msgpack)."""
    raw = decompress(body, headers.get("Content-Encoding", ""), 256 * 2**20)
    checked = native.check(raw, headers.get("Content-Type", native.JSON))
    answer = {"acked": [list(r) for r in checked.seqs], "replay": []}
    return 200, dict(ACK_HEADERS), json.dumps(answer).encode()


class Target:
    """A tiny real HTTP server that answers as scripted and records every request."""

    def __init__(self, script: Callable[[int, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]):
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(200, {}, b'{"status":"ok"}')

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k: v for k, v in self.headers.items()}
                with target.lock:
                    n = len(target.requests)
                    target.requests.append((headers, body))
                status, extra, answer = script(n, headers, body)
                if status == 0:  # drop the connection without answering
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._answer(status, extra, answer)

            def _answer(self, status: int, extra: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                # it plays lossproof: the protocol header, unless the script leaves it out ("")
                for k, v in {**ACK_HEADERS, **extra}.items():
                    if v != "":
                        self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
