"""The compactor's scrub: every stored chunk and part checked again, in the background, as
``lossproof store check --set-aside`` does (docs/store.md, "A damaged chunk").

A damaged row that no write or compaction reads (a packed chunk of a closed window, never replayed
over) fails every query of its metric until something finds it, and a row damaged silently (a
flipped bit: the chunk's checksum finds it) is only found when it is read. The scrub reads them all
again, a batch at a time (:data:`~lossproof.store.base.CHECK_BATCH`), and moves the damaged ones
into ``damaged_chunks`` with the worker's own code (``Store.set_aside_rows``, ``by="scrub"``): the
counter, the gauges, the alert and the recovery by replay are those of any row set aside.

Pacing: a pass starts every ``interval`` seconds from the start of the last one (the first
:data:`FIRST_PASS_AFTER_S` after the compactor starts, or ``interval`` if shorter). The compactor
runs a round only when it has no compaction to do and the worker is not behind; a round checks
batches for :data:`SLICE_S` (one at least), and the next waits :data:`REST` times as long as it
took (5 % of a CPU at most, whatever the compaction interval). A round that fails is tried again
from where the pass was, after a backoff (:data:`BACKOFF_S` doubling up to :data:`BACKOFF_MAX_S`).
Where it is in a pass is kept in memory: a restarted compactor starts again from the first row.

A limit: at most :data:`MAX_ASIDE` rows set aside a pass, as a write gives up after as many
(``quarantine.ATTEMPTS``). More damage than that is a failing disk, or a reader that takes good
rows for damaged (a bug): moving a whole store aside would hide it from every query, and a row
set aside comes back only by a replay, which old windows no longer have. The rest are counted,
logged and left where they are (their queries fail loudly) for an operator's
``lossproof store check --set-aside``.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from lossproof.obs.logging import get
from lossproof.store import quarantine
from lossproof.store.base import CHECK_BATCH, CHECKED_TABLES, Store
from lossproof.store.quarantine import Damaged

log = get(__name__)

FIRST_PASS_AFTER_S = 600.0  # not at every start: a restart would read the whole store again at once
SLICE_S = 0.1  # of checking a round
REST = 19.0  # the next round waits this many times as long as the last one took: 5 %
BACKOFF_S = 2.0  # after a failed round, doubling
BACKOFF_MAX_S = 600.0
MAX_ASIDE = quarantine.ATTEMPTS  # rows set aside a pass, at most


class ScrubStep(NamedTuple):
    checked: dict[str, int]  # rows checked, by table
    moved: int  # damaged rows set aside
    left: int  # damaged rows found but left where they are (over MAX_ASIDE a pass)
    passes: int  # passes finished


class Scrub:
    """Where a pass is, and when the next round may run. Not thread-safe: the compactor's loop
    calls it. Times are ``time.monotonic()`` seconds (or any clock the caller passes as ``now``)."""

    def __init__(self, interval: float, now: float | None = None) -> None:
        self.interval = interval
        start = time.monotonic() if now is None else now
        self._next = start + min(interval, FIRST_PASS_AFTER_S)
        self._not_before = start
        self._backoff = BACKOFF_S
        self._running = False
        self._table = 0
        self._after: int | None = None
        self._pass = {t: 0 for t in CHECKED_TABLES}
        self._pass_moved = self._pass_left = 0
        # done but not yet returned: what a round that failed part-way did before it failed
        self._checked = {t: 0 for t in CHECKED_TABLES}
        self._moved = self._left = self._passes = 0

    def take(self) -> ScrubStep:
        """What the rounds did since the last call (or :meth:`run`'s return), a failed one's too."""
        got = ScrubStep(self._checked, self._moved, self._left, self._passes)
        self._checked = {t: 0 for t in CHECKED_TABLES}
        self._moved = self._left = self._passes = 0
        return got

    @property
    def running(self) -> bool:
        """A pass is under way."""
        return self._running

    def due(self, now: float) -> bool:
        return self.interval > 0 and now >= self._not_before and (self._running or now >= self._next)

    def failed(self, now: float) -> None:
        """The round begun at ``now`` failed: the next one waits the backoff."""
        self._not_before = now + self._backoff
        self._backoff = min(2 * self._backoff, BACKOFF_MAX_S)

    def run(self, store: Store, now: float, slice_s: float = SLICE_S) -> ScrubStep:
        """Batches of the pass (one at least) until ``slice_s`` has passed or the pass is done."""
        if not self._running:
            self._running = True
            self._next = now + self.interval
            log.info("store.scrub_started")
        began = time.monotonic()
        until = began + slice_s
        while self._running:
            table = CHECKED_TABLES[self._table]
            got = store.check_rows(table, self._after, CHECK_BATCH[table])
            self._set_aside(store, got.damaged)
            self._checked[table] += got.checked
            self._pass[table] += got.checked
            if got.last_id is not None:
                self._after = got.last_id
                if time.monotonic() >= until:
                    break
                continue
            self._table, self._after = self._table + 1, None
            if self._table == len(CHECKED_TABLES):
                self._done()
        self._not_before = now + (REST + 1) * (time.monotonic() - began)
        self._backoff = BACKOFF_S
        return self.take()

    def _set_aside(self, store: Store, damaged: list[Damaged]) -> None:
        if not damaged:
            return
        room = max(0, MAX_ASIDE - self._pass_moved)
        moved = len(store.set_aside_rows(damaged[:room], by="scrub")) if room else 0
        left = len(damaged) - min(room, len(damaged))
        if left and not self._pass_left:
            log.error(
                "store.scrub_too_much_damage",
                limit=MAX_ASIDE,
                why="more damaged rows in one pass than it sets aside: a failing disk, or a bug that takes "
                "good rows for damaged; the rest are left where they are (their queries fail). Check the "
                "disk, then run `lossproof store check` (--set-aside to move them)",
            )
        self._moved += moved
        self._pass_moved += moved
        self._left += left
        self._pass_left += left

    def _done(self) -> None:
        self._passes += 1
        log.info(
            "store.scrub_done",
            chunks=self._pass["chunks"],
            parts=self._pass["parts"],
            set_aside=self._pass_moved,
            damaged_left=self._pass_left,
        )
        self._running, self._table = False, 0
        self._pass = {t: 0 for t in CHECKED_TABLES}
        self._pass_moved = self._pass_left = 0
