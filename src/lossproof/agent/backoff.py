"""Exponential backoff with full jitter, and ``Retry-After``.

Full jitter (a uniform delay between 0 and the exponential cap) spreads the retries of many agents
that failed at the same moment, so a recovering server is not hit by all of them at once.
"""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

# A server may ask for a long pause, but not for one so long that a typo parks the agent for days.
MAX_RETRY_AFTER = 3600.0


class Backoff:
    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after: float | None = None, floor: float = 0.0) -> float:
        """The pause before the next attempt after one more failure."""
        self.failures += 1
        cap = min(self.maximum, self.initial * 2 ** min(self.failures - 1, 30))
        delay = max(self._rng.uniform(0, cap), floor)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    def reset(self) -> None:
        self.failures = 0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())
