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

import click

from lossproof.config import new_key
from lossproof.up import wait_ready


def terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 30) -> None:
    """Stop a process the bench started: SIGTERM (a clean stop), SIGKILL if it takes too long."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def spawned_pipeline(
    data_dir: Path,
    port: int | None = None,
    key: str | None = None,
    pids: list[int] | None = None,
    log_file: Path | None = None,
) -> Iterator[tuple[str, str]]:
    """Yields (url, api key) of a running pipeline; stops it (SIGTERM) on exit. ``key``: the default
    tenant's key of an existing data dir (a fresh one gets a new key). ``pids``: gets the pid of
    the `lossproof up` process appended (for :func:`process_memory`). ``log_file``: its output goes
    there (its last line is quoted if it does not start), else nowhere."""
    port = port or free_port()
    key = key or new_key()
    env = {**os.environ, "LOSSPROOF_API_KEY": key}
    out = open(log_file, "ab") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lossproof", "up", "--data-dir", str(data_dir), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if log_file is not None else subprocess.DEVNULL,
        )
    finally:
        if log_file is not None:
            out.close()  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    if pids is not None:
        pids.append(proc.pid)
    try:
        if not wait_ready(url, 60, stop=lambda: proc.poll() is not None):
            why = f"exited with {proc.returncode}" if proc.poll() is not None else "is not ready after 60 s"
            if log_file is not None:
                lines = log_file.read_text(errors="replace").strip().splitlines()
                why += f" ({lines[-1][:300]})" if lines else ""
            raise click.ClickException(f"the benchmark's own `lossproof up` on {url} {why}")
        yield url, key
    finally:
        terminate(proc)


def check_pipeline(url: str, api_key: str | None) -> str:
    """``url`` normalized, once its /healthz answers; a one-line error otherwise (before any run)."""
    import urllib.request

    from lossproof.send import SendError, check_url

    if not api_key:
        raise click.ClickException("--api-key (or LOSSPROOF_API_KEY) is required with --url")
    try:
        url = check_url(url)
    except SendError as e:
        raise click.ClickException(str(e)) from None
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5):
            pass
    except OSError as e:
        raise click.ClickException(f"cannot reach the pipeline at {url}: {e}") from None
    return url


def _vm(pid: int) -> tuple[int, int]:
    """(current, peak) resident memory of a process in bytes, from /proc (Linux); (0, 0) if unknown."""
    now = peak = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    now = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    return now, peak


def process_memory(up_pid: int) -> list[str]:
    """One line: the peak and current RSS of the pipeline's children (ingest, worker) and of this
    process (the load generator), read from /proc while the pipeline still runs."""
    import psutil  # type: ignore[import-untyped]  # no stubs installed; calls are plain

    parts = []
    try:
        children = psutil.Process(up_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        role = next((c for c in ("ingest", "worker") if c in cmd), child.name())
        now, peak = _vm(child.pid)
        parts.append(f"{role} {peak / 2**20:,.0f} MiB (now {now / 2**20:,.0f})")
    now, peak = _vm(os.getpid())
    parts.append(f"bench client {peak / 2**20:,.0f} MiB")
    return ["peak RSS: " + ", ".join(parts)]
