"""Run `lossproof up` as a real process and talk to it over real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

from lossproof import config as config_mod
from lossproof.faults import write_faults

HTTP = urllib3.PoolManager(maxsize=64, timeout=urllib3.Timeout(connect=2, read=30), retries=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_operator_key(data_dir: Path, api_key: str, key: str) -> None:
    """Create ``data_dir``'s config if new (``api_key`` for tenant default, as ``lossproof up`` does)
    and make ``key`` an operator key in it, as ``lossproof keys create --operator`` does."""
    cfg, _ = config_mod.init_data_dir(data_dir, api_key)
    if config_mod.hash_key(key) not in cfg.operator.key_hashes:
        with config_mod.editing(data_dir) as edited:
            edited.operator.key_hashes.append(config_mod.hash_key(key))


class Endpoint:
    """A running lossproof HTTP API, its default tenant's key and an operator key: what tests say to
    it over HTTP. :class:`Pipeline` runs it as ``lossproof up``; :class:`lptest.inproc.InProcess` in
    this process."""

    port: int
    key: str
    operator_key: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}", "Content-Type": "application/json", **extra}

    def post_reports(
        self, agent: str, reports: list[dict[str, Any]], key: str | None = None, timeout: float = 30
    ) -> urllib3.BaseHTTPResponse:
        body = json.dumps({"agent": agent, "reports": reports}).encode()
        return HTTP.request(
            "POST", self.url + "/v1/reports", body=body, headers=self.headers(key), timeout=timeout
        )

    def get(self, path: str, key: str | None = None) -> tuple[int, Any]:
        r = HTTP.request("GET", self.url + path, headers=self.headers(key))
        return r.status, json.loads(r.data) if r.data else None

    def ledger(self, agent: str) -> dict[str, Any]:
        status, body = self.get(f"/v1/agents/{agent}/ledger")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def metrics(self, public: bool = False) -> str:
        """``/metrics`` as an operator sees it (every series), or as anyone else (``public``)."""
        headers = {} if public else {"Authorization": f"Bearer {self.operator_key}"}
        r = HTTP.request("GET", self.url + "/metrics", headers=headers)
        assert r.status == 200, r.data
        return r.data.decode()

    def wait_stored(self, agent: str, seqs: set[int], timeout: float = 30) -> dict[str, Any]:
        """Wait until the ledger's stored ranges cover ``seqs``; returns the ledger."""
        deadline = time.monotonic() + timeout
        ledger: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status, body = self.get(f"/v1/agents/{agent}/ledger")
            if status == 200:
                ledger = body
                stored = expand(ledger["stored"])
                if seqs <= stored:
                    return ledger
            time.sleep(0.1)
        raise AssertionError(f"agent {agent}: not all stored after {timeout}s; ledger {ledger}")


@dataclass
class Pipeline(Endpoint):
    data_dir: Path
    port: int
    key: str
    proc: subprocess.Popen[bytes] | None = None
    faults_file: Path = field(init=False)
    operator_key: str = field(init=False)
    starts: int = 0

    def __post_init__(self) -> None:
        self.faults_file = self.data_dir.parent / f"{self.data_dir.name}-faults.json"
        self.operator_key = "lp_operator_" + secrets.token_hex(16)

    def add_key(self, tenant: str) -> str:
        """A new key for ``tenant`` (created if new), by the real ``lossproof keys create``; a running
        pipeline takes it at once (it reloads keys when the config changes)."""
        argv = [sys.executable, "-m", "lossproof", "keys", "create", "--tenant", tenant, "--data-dir"]
        return subprocess.run(
            [*argv, str(self.data_dir)], capture_output=True, text=True, check=True
        ).stdout.strip()

    def start(self, wait: bool = True, extra_env: dict[str, str] | None = None) -> None:
        env = {
            **os.environ,
            "LOSSPROOF_API_KEY": self.key,
            "LOSSPROOF_FAULTS_FILE": str(self.faults_file),
            # tests check replay requests promptly
            "LOSSPROOF_LEDGER_REPLAY_GRACE_SECONDS": "1",
            **(extra_env or {}),
        }
        self.starts += 1
        with_operator_key(self.data_dir, self.key, self.operator_key)
        log_path = self.data_dir.parent / f"{self.data_dir.name}-up-{self.starts}.log"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lossproof",
                    "up",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"lossproof up exited with {self.proc.returncode}: {self.logs()[-3000:]}"
                )
            try:
                r = HTTP.request("GET", self.url + "/healthz", timeout=1)
                # ready once reads are too: until the worker has created the store, a read is a 503
                # (tests read right after starting, and a loaded machine can take seconds); a store
                # that stays unavailable (a test's broken one) is waited for a few seconds only
                store_wait = time.monotonic() < deadline - timeout + 10
                if r.status == 200 and (not store_wait or self.get("/v1/agents")[0] != 503):
                    return
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"not ready after {timeout}s: {self.logs()[-3000:]}")

    def logs(self) -> str:
        out = []
        for p in sorted(self.data_dir.parent.glob(f"{self.data_dir.name}-up-*.log")):
            out.append(p.read_text(errors="replace"))
        return "\n".join(out)

    def kill9(self) -> None:
        """kill -9 the supervisor; its children die with it (PDEATHSIG). Wait until they are gone."""
        assert self.proc is not None
        children = _children(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        for pid in children:  # belt and braces: a test must not leave processes behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.02)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def faults(self, faults: dict[str, Any]) -> None:
        write_faults(str(self.faults_file), faults)


def expand(ranges: list[list[int]]) -> set[int]:
    return {s for a, b in ranges for s in range(a, b + 1)}


def report(
    seq: int, n: int = 3, t0: int = 1_767_225_600_000, metric: str = "cpu.user", host: str = "h"
) -> dict[str, Any]:
    return {
        "seq": seq,
        "time": t0 + seq,
        "points": [
            {"metric": metric, "labels": {"host": host, "i": str(i)}, "t": t0 + seq * 1000, "v": seq + i / 10}
            for i in range(n)
        ],
    }


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def simulate_power_loss(log_dir: Path, torn_bytes: int = 0) -> int:
    """What a power cut does to the embedded log: every byte not yet fsync'd is gone.

    The writer publishes its durable watermark only after fsync, so dropping every record at or
    past it is the worst case a real power loss can do. ``torn_bytes`` of garbage are left after the
    cut, like a half-written sector. Returns the number of records dropped. Call only after the
    writing process was killed.
    """
    from lossproof.log.embedded import segment as seg
    from lossproof.log.embedded.damage import record_locations

    pdir = seg.partition_dir(log_dir)
    with open(pdir / "durable", "rb") as f:
        watermark = seg.decode_watermark(f.read())
    assert watermark is not None
    dropped = [loc for loc in record_locations(log_dir) if loc.offset >= watermark]
    cut: dict[Path, int] = {}
    for loc in dropped:
        cut[loc.path] = min(cut.get(loc.path, loc.pos), loc.pos)
    for path, pos in cut.items():
        with open(path, "r+b") as f:
            f.truncate(pos)
            if torn_bytes:
                f.seek(pos)
                f.write(os.urandom(torn_bytes))
    return len(dropped)


class Sender(threading.Thread):
    """An agent in miniature: numbered reports, retried with the same seq until acknowledged."""

    def __init__(self, p: Pipeline, agent: str, stop: threading.Event, points: int = 20) -> None:
        super().__init__(daemon=True)
        self.p, self.agent, self.stop_evt, self.points = p, agent, stop, points
        self.acked: set[int] = set()
        self.statuses: dict[int, int] = {}
        self.next_seq = 1

    def run(self) -> None:
        while not self.stop_evt.is_set():
            seqs = [self.next_seq, self.next_seq + 1]
            try:
                r = self.p.post_reports(
                    self.agent, [report(s, self.points, host=self.agent) for s in seqs], timeout=15
                )
                status = r.status
            except urllib3.exceptions.HTTPError:
                status = 0
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                assert expand(json.loads(r.data)["acked"]) == set(seqs)
                self.acked.update(seqs)
                self.next_seq += 2
            else:
                time.sleep(0.05)


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send ``data`` on a new connection to 127.0.0.1:``port``; everything the server sends until it
    closes (or ``<<TIMEOUT>>``), and how long that took."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(timeout)
        s.sendall(data)
        started = time.monotonic()
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            out += b"<<TIMEOUT>>"
        return out, time.monotonic() - started
