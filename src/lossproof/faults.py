"""Fault injection for tests and the chaos harness, off unless LOSSPROOF_FAULTS_FILE is set.

The file is JSON: ``{"log.fsync": {"mode": "fail"}, "log.fsync": {"mode": "delay", "seconds": 2}}``.
Crash points (:func:`crash_point`) kill the process at a named place: ``{"store.before_commit": {}}``.
It is re-read when its mtime changes (checked at most every 50 ms), so a running process can be
steered from outside. Production processes never set the variable and never pay for a check.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from typing import Any

_ENV = "LOSSPROOF_FAULTS_FILE"


class Faults:
    def __init__(self, path: str | None = None) -> None:
        self.path = path if path is not None else os.environ.get(_ENV)
        self._mtime = -1
        self._checked = 0.0
        self._faults: dict[str, dict[str, Any]] = {}

    def get(self, name: str) -> dict[str, Any] | None:
        if not self.path:
            return None
        now = time.monotonic()
        if now - self._checked >= 0.05:
            self._checked = now
            self._reload()
        return self._faults.get(name)

    def _reload(self) -> None:
        assert self.path
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            self._faults, self._mtime = {}, -1
            return
        if mtime == self._mtime:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return  # half-written by the test: keep the previous faults, re-read next time
        self._mtime = mtime
        self._faults = data if isinstance(data, dict) else {}


def write_faults(path: str, faults: dict[str, Any]) -> None:
    """Atomically replace the fault file (used by tests and the chaos harness)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(faults, f)
    os.replace(tmp, path)


_process_faults: Faults | None = None


def crash_point(name: str) -> None:
    """Die by SIGKILL right here when the fault file holds ``{name: {"probability": p}}`` (default 1):
    a kill -9 at an exact point, e.g. inside a store transaction, which a kill from outside only hits
    by luck. Costs nothing when LOSSPROOF_FAULTS_FILE is not set."""
    global _process_faults
    if _process_faults is None:
        _process_faults = Faults()
    spec = _process_faults.get(name)
    if spec is not None and random.random() < float(spec.get("probability", 1.0)):
        os.kill(os.getpid(), signal.SIGKILL)
