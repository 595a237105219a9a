"""Where the next request goes: the primary, or a fallback receiver while the primary is failing.

The primary must have failed *continuously* (no 200 in between) for ``fallback_after`` before the
agent switches; then every ``probe_interval`` one real request (carrying the next batch) goes to the
primary, and its first 200 brings the agent back. A fallback that fails passes the turn to the next
fallback URL. A fallback's 200 is an acknowledgement like the primary's: the fallback receiver
fsyncs before it answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from lossproof.obs.logging import get

log = get(__name__)

PRIMARY = "primary"
FALLBACK = "fallback"


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    kind: str  # PRIMARY or FALLBACK
    probe: bool = False  # a request to the primary while on fallback


class Router:
    def __init__(
        self,
        primary: str,
        fallbacks: list[str],
        fallback_after: float,
        probe_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallbacks = fallbacks
        self.fallback_after = fallback_after
        self.probe_interval = probe_interval
        self.clock = clock
        self.mode = PRIMARY
        self.failing_since: float | None = None
        self._fb = 0
        self._next_probe = 0.0
        self._probing = False

    def choose(self) -> Target:
        """The target for the next request (switching to fallback if the primary failed long enough)."""
        now = self.clock()
        if self.mode == PRIMARY:
            if (
                self.fallbacks
                and self.failing_since is not None
                and now - self.failing_since >= self.fallback_after
            ):
                self.mode = FALLBACK
                self._next_probe = now + self.probe_interval
                log.warning(
                    "agent.destination_fallback",
                    primary=self.primary,
                    fallback=self.fallbacks[self._fb],
                    failing_for=round(now - self.failing_since, 1),
                )
            else:
                return Target(self.primary, PRIMARY)
        if not self._probing and now >= self._next_probe:
            return Target(self.primary, PRIMARY, probe=True)
        return Target(self.fallbacks[self._fb], FALLBACK)

    def sending(self, target: Target) -> None:
        if target.probe:
            self._probing = True
            self._next_probe = self.clock() + self.probe_interval

    def result(self, target: Target, ok: bool, failed: bool) -> None:
        """``ok``: a 200. ``failed``: the destination is unavailable (connection error, 5xx, 429)."""
        now = self.clock()
        if target.kind == PRIMARY:
            if target.probe:
                self._probing = False
            if ok:
                if self.mode == FALLBACK:
                    log.warning("agent.destination_primary", primary=self.primary)
                self.mode = PRIMARY
                self.failing_since = None
            elif failed and self.failing_since is None:
                self.failing_since = now
        elif failed and not ok:
            self._fb = (self._fb + 1) % len(self.fallbacks)

    def seconds_to_next_event(self) -> float | None:
        """How long until a switch to fallback or a probe is due (None: nothing scheduled)."""
        now = self.clock()
        if self.mode == PRIMARY:
            if self.fallbacks and self.failing_since is not None:
                return max(0.0, self.failing_since + self.fallback_after - now)
            return None
        if self._probing:
            return None  # the probe's answer decides; nothing is due before it
        return max(0.0, self._next_probe - now)
