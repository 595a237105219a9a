"""``lossproof up``: run the ingest/query process and a worker as child processes, and keep them up.

Children die with the supervisor (PR_SET_PDEATHSIG), so a kill -9 of ``up`` leaves no orphan
holding the port or the log; the next ``up`` recovers the log and carries on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lossproof.children import die_with_parent
from lossproof.config import Config
from lossproof.heartbeat import ENV, Watch
from lossproof.obs.logging import get

log = get(__name__)

STARTUP_SECONDS = 10.0
STARTUP_ATTEMPTS = 3
PAUSED_SECONDS = 2.0  # a gap this long in ``up``'s own 0.2 s loop: it was stopped or starved


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    quick_exits: int = 0  # error exits in a row, each within STARTUP_SECONDS of its start
    ran: bool = False  # it once got past starting: beat, or ran STARTUP_SECONDS
    restart_at: float | None = None  # exited: started again at this time (monotonic)
    started: float = 0.0
    backoff: float = field(default=0.5)
    watch: Watch | None = None  # its heartbeat (lossproof.heartbeat)
    killed: bool = False  # by kill_if_stuck, and not exited yet
    start_timeouts: int = 0  # killed for not starting within the deadline, in a row

    def start(self) -> None:
        """Start it; should that fail (no memory or PIDs left for a moment), try again after the
        backoff rather than let ``up`` die and take the other children with it."""
        self.restart_at = None
        try:
            if self.watch is None:
                self.proc = subprocess.Popen(self.argv, preexec_fn=die_with_parent)
            else:
                beat = self.watch.renew()
                try:
                    env = {**os.environ, ENV: str(beat)}
                    self.proc = subprocess.Popen(
                        self.argv, preexec_fn=die_with_parent, env=env, pass_fds=(beat,)
                    )
                finally:
                    os.close(beat)
        except OSError as e:
            log.error("up.child_start_failed", child=self.name, error=str(e), retry_in=self.backoff)
            self.restart_at = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, 10.0)
            return
        self.killed = False
        self.started = time.monotonic()
        log.info("up.child_started", child=self.name, pid=self.proc.pid)

    def kill_if_stuck(self) -> None:
        """SIGKILL a child whose heartbeat stopped, or never started within the start-up deadline:
        the restart below then treats it as crashed."""
        if self.watch is None or self.proc is None or self.killed:
            return
        if self.watch.beating:
            self.start_timeouts = 0
        silence = self.watch.stuck()
        if silence is None or self.proc.poll() is not None:
            return
        if silence.starting:
            self.start_timeouts += 1
            log.error(
                "up.child_start_timeout",
                child=self.name,
                pid=self.proc.pid,
                starting_seconds=round(silence.seconds, 1),
                startup_timeout_seconds=self.watch.startup_timeout,
                start_timeouts_in_a_row=self.start_timeouts,
            )
        else:
            log.error(
                "up.child_stuck", child=self.name, pid=self.proc.pid, silent_seconds=round(silence.seconds, 1)
            )
        # not waited for here: a process in an uninterruptible sleep dies only when that ends,
        # and ``up`` keeps watching the others meanwhile
        self.proc.kill()
        self.killed = True


class PortInUse(Exception):
    pass


def check_port_free(host: str, port: int, wait: float = 5.0) -> None:
    """Refuse to start when something already listens on the port: otherwise ``up`` would take the
    other process's /healthz for its own and then restart its ingest child forever. Waits up to
    ``wait`` seconds first: the children of an ``up`` killed a moment ago are still dying."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PortInUse(f"cannot resolve {host}: {e.strerror}") from None
    deadline = time.monotonic() + wait
    while True:
        try:
            for family, kind, proto, _name, addr in infos:
                with socket.socket(family, kind, proto) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
                    s.bind(addr)
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise PortInUse(f"cannot listen on {host}:{port}: {e.strerror}") from None
        time.sleep(0.1)


@dataclass
class Banner:
    """What a person at a terminal needs once the pipeline is up, in a few lines."""

    data_dir: Path
    new_key: str | None  # the key generated on this start, if any

    def text(self, url: str) -> str:
        lines = [
            "",
            "  lossproof is up",
            f"  dashboard   {url}/",
            f"  data dir    {self.data_dir}",
        ]
        if self.new_key:
            lines.append(f"  API key     {self.new_key}  (tenant default; shown this once)")
        lines += ["  Ctrl-C stops it; `lossproof keys create --tenant T` adds keys while it runs", ""]
        return "\n".join(lines)


def run(cfg: Config, data_dir: Path, banner: Banner | None = None) -> int:
    exe = [sys.executable, "-m", "lossproof"]
    ingest = [*exe, "ingest", "--data-dir", str(data_dir), "--port", str(cfg.server.port)]
    n = cfg.server.ingest_processes
    children = [Child("ingest" if n == 1 else f"ingest{i}", ingest) for i in range(n)]
    children.append(Child("worker", [*exe, "worker", "--data-dir", str(data_dir)]))
    live, startup = cfg.server.liveness_timeout_seconds, cfg.startup_timeout()
    if live > 0 or startup > 0:
        for c in children:
            c.watch = Watch(live, startup)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def on_hangup(signum: int, frame: object) -> None:
        # Keys are checked in the ingest processes: the reload has to happen there (and only there:
        # SIGHUP would end a worker).
        for c in children:
            if c.name.startswith("ingest") and c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    for c in children:
        c.start()
    url = f"http://{cfg.server.host}:{cfg.server.port}"
    ready = False
    failed: str | None = None
    tick = time.monotonic()
    while not stopping:
        if not ready and _healthy(url):
            ready = True
            if banner is not None:
                print(banner.text(url), flush=True)
            else:
                print(f"lossproof is up: {url} (data dir {data_dir}); Ctrl-C stops it", flush=True)
        time.sleep(0.2)
        now = time.monotonic()
        if now - tick > PAUSED_SECONDS:
            # ``up`` itself did not run (Ctrl-Z, a frozen cgroup, a stalled VM), its children most
            # likely neither: their silence meanwhile says nothing of them
            for c in children:
                if c.watch is not None:
                    c.watch.excuse()
        tick = now
        for c in children:
            if stopping:
                break
            if c.restart_at is not None:
                if now >= c.restart_at:
                    c.restarts += 1
                    c.start()
                continue
            assert c.proc is not None
            c.kill_if_stuck()
            code = c.proc.poll()
            if code is None:
                continue
            # A child that died is restarted with backoff; it never takes the others down. One that
            # cannot even start (it exits with an error within seconds, again and again: a lock
            # held by another pipeline, a read-only data dir) is a setup problem: say so and stop.
            # Not once it has run: then a quick exit is an outage (PostgreSQL down while the
            # worker restarts), and ingest must keep acknowledging into the log meanwhile.
            quick = now - c.started < STARTUP_SECONDS
            c.ran = c.ran or not quick or (c.watch is not None and c.watch.beating)
            c.quick_exits = c.quick_exits + 1 if quick and code > 0 else 0
            if c.quick_exits >= STARTUP_ATTEMPTS and not c.ran:
                failed = (
                    f"the {c.name} process exited with code {code} {c.quick_exits} times "
                    "while starting (its error is above)"
                )
                stopping = True
                break
            if now - c.started > 30:
                c.backoff = 0.5
            log.error(
                "up.child_exited",
                child=c.name,
                code=code,
                restart_in=c.backoff,
                **({"quick_exits_in_a_row": c.quick_exits} if c.quick_exits > 1 else {}),
            )
            c.restart_at = now + c.backoff
            c.backoff = min(c.backoff * 2, 10.0)
    log.info("up.stopping")
    for c in children:
        if c.proc and c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for c in children:
        if c.proc is None:
            continue
        try:
            c.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("up.child_kill", child=c.name)
            c.proc.kill()
            c.proc.wait()
    log.info("up.stopped")
    if failed is not None:
        log.error("up.gave_up", why=failed)
        print(f"Error: {failed}", file=sys.stderr, flush=True)
        return 1
    return 0


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=0.5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def wait_ready(url: str, timeout: float = 30.0, stop: Callable[[], bool] = lambda: False) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop():
        if _healthy(url):
            return True
        time.sleep(0.1)
    return False
