"""Fault injection for tests and the chaos harness, off unless LOSSPROOF_FAULTS_FILE is set.

Disk faults of the segment writers (``log.write``, ``log.fsync``, ``fallback.write``,
``fallback.fsync``) are injected by a :class:`~lossproof.segments.fs.FaultyFS` that the composition
root (:func:`file_system`) hands in when the variable is set; other names are looked up here.

The file is JSON: ``{"log.fsync": {"mode": "fail"}, "log.fsync": {"mode": "delay", "seconds": 2}}``.
Crash points (:func:`crash_point`) kill the process at a named place: ``{"store.before_commit": {}}``.
It is re-read on every look-up, so a running process can be steered from outside, and a fault written
with :func:`write_faults` applies to every operation that starts after it returns (tests need not
sleep). Production processes never set the variable and never pay for a check.
"""

from __future__ import annotations

import json
import os
import random
import signal
from typing import Any

from lossproof.segments.fs import FS, REAL, FaultyFS

_ENV = "LOSSPROOF_FAULTS_FILE"


class Faults:
    def __init__(self, path: str | None = None) -> None:
        self.path = path if path is not None else os.environ.get(_ENV)
        # (raw file content, parsed faults), replaced as one: a look-up on another thread sees a
        # consistent pair
        self._state: tuple[bytes, dict[str, dict[str, Any]]] = (b"", {})

    def get(self, name: str) -> dict[str, Any] | None:
        if not self.path:
            return None
        # Read whole on every look-up (they come per fsync or per request, never per point): an mtime
        # check would miss a second change within the file system's timestamp granularity.
        self._reload()
        return self._state[1].get(name)

    def _reload(self) -> None:
        assert self.path
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self._state = (b"", {})
            return
        except OSError:
            return
        if raw == self._state[0]:
            return
        try:
            data = json.loads(raw)
        except ValueError:
            return  # not written by write_faults (which replaces atomically): keep the previous faults
        self._state = (raw, data if isinstance(data, dict) else {})


def write_faults(path: str, faults: dict[str, Any]) -> None:
    """Atomically replace the fault file (used by tests and the chaos harness)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(faults, f)
    os.replace(tmp, path)


def file_system(prefix: str, faults: Faults | None = None) -> FS:
    """The file system a composition root hands to a segment writer (``prefix``: ``log`` or
    ``fallback``): a :class:`~lossproof.segments.fs.FaultyFS` steered by ``faults`` (default: the
    fault file) when tests or the chaos harness set one, else the real one. The writers themselves
    have no fault branches."""
    if faults is None:
        faults = Faults()
        if not faults.path:
            return REAL
    return FaultyFS(faults, prefix)


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
