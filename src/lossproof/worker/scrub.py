"""The compactor's scrub: every stored chunk and part checked again, in the background, as
``lossproof store check --set-aside`` does (docs/store.md, "A damaged chunk").

A damaged row that no write or compaction reads (a packed chunk of a closed window, never replayed
over) fails every query of its metric until something finds it, and a row damaged silently (a
flipped bit: the chunk's checksum finds it) is only found when it is read. The scrub reads them all
again, a batch at a time (:data:`~lossproof.store.base.CHECK_BATCH`), and moves the damaged ones
into ``damaged_chunks`` with the worker's own code (``Store.set_aside_rows``, ``by="scrub"``): the
counter, the gauges, the alert and the recovery by replay are those of any row set aside. A pass
starts every ``interval`` seconds from the start of the last one (the first :data:`FIRST_PASS_AFTER_S`
after the compactor starts, or ``interval`` if shorter); the compactor runs it only when it has no
compaction to do and the worker is not behind, for at most :data:`SLICE_S` a round. Where it is
in a pass is kept in memory: a restarted compactor starts again from the first row.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from lossproof.obs.logging import get
from lossproof.store.base import CHECK_BATCH, CHECKED_TABLES, Store

log = get(__name__)

FIRST_PASS_AFTER_S = 600.0  # not at every start: a restart would read the whole store again at once
SLICE_S = 0.1  # of checking a compaction round (every store.compact_interval_seconds, 2 s): ~5 %


class ScrubStep(NamedTuple):
    checked: dict[str, int]  # rows checked, by table
    moved: int  # damaged rows set aside
    passes: int  # passes finished


class Scrub:
    """Where a pass is, and when the next one starts. Not thread-safe: the compactor's loop calls it."""

    def __init__(self, interval: float, now: float | None = None) -> None:
        self.interval = interval
        start = time.monotonic() if now is None else now
        self._next = start + min(interval, FIRST_PASS_AFTER_S)
        self._running = False
        self._table = 0
        self._after: int | None = None
        self._pass = {t: 0 for t in CHECKED_TABLES}
        self._pass_moved = 0
        # done but not yet returned: what a round that failed part-way did before it failed
        self._checked = {t: 0 for t in CHECKED_TABLES}
        self._moved = 0
        self._passes = 0

    def take(self) -> ScrubStep:
        """What the rounds did since the last call (or :meth:`run`'s return), a failed one's too."""
        got = ScrubStep(self._checked, self._moved, self._passes)
        self._checked, self._moved, self._passes = {t: 0 for t in CHECKED_TABLES}, 0, 0
        return got

    def due(self, now: float) -> bool:
        return self.interval > 0 and (self._running or now >= self._next)

    def run(self, store: Store, now: float, slice_s: float = SLICE_S) -> ScrubStep:
        """Batches of the pass (one at least) until ``slice_s`` has passed or the pass is done."""
        if not self._running:
            self._running = True
            self._next = now + self.interval
            log.info("store.scrub_started")
        until = time.monotonic() + slice_s
        while self._running:  # (one batch at least)
            table = CHECKED_TABLES[self._table]
            got = store.check_rows(table, self._after, CHECK_BATCH[table])
            aside = len(store.set_aside_rows(got.damaged, by="scrub")) if got.damaged else 0
            self._checked[table] += got.checked
            self._moved += aside
            self._pass[table] += got.checked
            self._pass_moved += aside
            if got.last_id is not None:
                self._after = got.last_id
                if time.monotonic() >= until:
                    break
                continue
            self._table, self._after = self._table + 1, None
            if self._table == len(CHECKED_TABLES):
                self._passes += 1
                log.info(
                    "store.scrub_done",
                    chunks=self._pass["chunks"],
                    parts=self._pass["parts"],
                    set_aside=self._pass_moved,
                )
                self._running, self._table = False, 0
                self._pass = {t: 0 for t in CHECKED_TABLES}
                self._pass_moved = 0
        return self.take()
