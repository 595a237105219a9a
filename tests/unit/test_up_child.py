"""`up`'s child handle: a start that fails (fork out of PIDs or memory for a moment) is retried
after the backoff instead of raising out of `up`, which would take the other children down."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from lossproof import up
from lossproof.heartbeat import Watch


def test_a_failed_start_is_retried_after_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    real = subprocess.Popen
    calls = []

    def popen(*args: object, **kwargs: object) -> object:
        calls.append(args)
        if len(calls) == 1:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(up.subprocess, "Popen", popen)
    c = up.Child("worker", [sys.executable, "-c", "pass"], watch=Watch(60))
    c.start()
    assert c.proc is None and c.restart_at is not None and c.backoff == 1.0
    c.start()
    assert c.proc is not None and c.restart_at is None
    assert c.proc.wait(30) == 0
    c.watch.close()  # type: ignore[union-attr]
