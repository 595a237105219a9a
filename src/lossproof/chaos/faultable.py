"""What the chaos scenarios do to any process of a topology, a lossproof one or a Kafka broker."""

from __future__ import annotations

import contextlib
import os
import signal


class Faultable:
    """Signals, pause and resume for a process known by its pid; subclasses say how to find it."""

    name: str
    paused: bool

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def signal(self, sig: int) -> None:
        """Send ``sig`` if the process runs; return at once."""
        pid = self.pid
        if pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False
