"""The worker's counter of damaged store rows set aside (docs/store.md, "A damaged chunk"), shared by
its writes (:mod:`.loop`) and its compactor's steps (:mod:`.compactor`), which register their metrics
in the same registry separately: a name can be registered there only once."""

from __future__ import annotations

import threading
import weakref

from prometheus_client import CollectorRegistry, Counter

_made: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def quarantined_counter(registry: CollectorRegistry) -> Counter:
    """``lossproof_store_chunks_quarantined_total{by}`` in ``registry`` (made once; ``by``: write,
    compaction or scrub)."""
    with _lock:
        c = _made.get(registry)
        if c is None:
            c = _made[registry] = Counter(
                "lossproof_store_chunks_quarantined",
                "Damaged chunks or parts moved into the store's damaged_chunks table (their points are no"
                " longer stored: a replay stores them again), by what found them: a write, compaction or"
                " the compactor's scrub.",
                ["by"],
                registry=registry,
            )
            # shown at 0 from the start: an alert sees the rise
            for by in ("write", "compaction", "scrub"):
                c.labels(by)
        return c
