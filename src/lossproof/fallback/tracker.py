"""The replay's done-watermark: requests are sent concurrently and finish in any order; progress
is the position after the longest prefix of finished ones (so a resumed replay skips nothing)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from lossproof.fallback import journal as jn


@dataclass(slots=True)
class Slot:
    after: jn.Position
    left_segment: int | None = None
    done: bool = False


class Tracker:
    """The done-watermark: the position after the longest prefix of finished requests."""

    def __init__(self, start: jn.Position | None, completed: dict[int, int]) -> None:
        self.position = start
        self.completed = completed
        self._slots: deque[Slot] = deque()

    def add(self, after: jn.Position, left_segment: int | None = None) -> Slot:
        slot = Slot(after, left_segment)
        self._slots.append(slot)
        return slot

    def done(self, slot: Slot) -> None:
        slot.done = True
        while self._slots and self._slots[0].done:
            s = self._slots.popleft()
            if s.left_segment is not None:
                self.completed.setdefault(s.left_segment, int(time.time() * 1000))
            self.position = s.after

    @property
    def in_flight(self) -> int:
        return len(self._slots)
