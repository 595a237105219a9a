"""Helpers shared by lossproof's tests: real processes, clusters and clients, importable from any test
directory (``pythonpath = ["tests"]`` in pyproject.toml).

``procs/`` holds scripts that tests run as processes of their own (writers, readers, appenders), so that
they can be killed -9 for real.
"""

from __future__ import annotations

import os
from pathlib import Path

import lossproof

TESTS = Path(__file__).resolve().parent.parent
PROCS = Path(__file__).resolve().parent / "procs"
SRC = Path(lossproof.__file__).resolve().parent.parent


def subprocess_env() -> dict[str, str]:
    """The environment for a helper process: it imports lossproof and lptest, and has no fault file."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("LOSSPROOF_FAULTS_FILE", None)
    return env


def require(ok: object, what: str) -> None:
    """A test that needs something of the machine (a server, a browser, a client): where it is
    missing, skipped on a developer's machine but a failure in CI (``CI`` set), which installs
    everything with ``scripts/bootstrap``, so a missing install step can never pass as a skip."""
    import pytest

    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing, and CI must run this test (scripts/bootstrap installs it)")
    pytest.skip(f"{what} is missing (scripts/bootstrap installs it)")


def read_lines(fd: int, partial: bytes) -> tuple[list[bytes], bytes]:
    """What a helper process wrote to the non-blocking pipe ``fd`` since the last call: its complete
    lines, and the partial last one to hand back next time (``partial`` is the one from before)."""
    lines: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        partial += chunk
        *done, partial = partial.split(b"\n")
        lines += done
    return lines, partial
