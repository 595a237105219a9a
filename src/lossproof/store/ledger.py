"""The ledger: which seqs of an agent are stored, missing, lost or delayed, as seq ranges.

The range arithmetic (sorted, disjoint, inclusive ``(first, last)`` ranges, plain or tagged) is
:mod:`lossproof.ranges`, shared with the agent; it is re-exported here for the store backends. In the
ledger a missing range is tagged with the time it was first seen, a lost range with its reason.

:func:`advance` is the one ledger transition every store backend applies, so the stored / missing /
lost rules live here once, independent of SQL.
"""

from __future__ import annotations

from collections.abc import Iterable

from lossproof.ranges import (
    SeqRange,
    contains,
    count,
    from_seqs,
    holes,
    intersect,
    intersect_tagged,
    merge_tagged,
    normalize,
    retag,
    subtract,
    subtract_tagged,
    union_tagged,
    untag,
)
from lossproof.store.base import Ledger, SpoolState

__all__ = [
    "EMPTY",
    "LedgerRow",
    "SeqRange",
    "advance",
    "contains",
    "count",
    "from_rows",
    "from_seqs",
    "holes",
    "intersect",
    "intersect_tagged",
    "merge_tagged",
    "normalize",
    "retag",
    "subtract",
    "subtract_tagged",
    "to_rows",
    "union_tagged",
    "untag",
]

# --- the ledger transition -----------------------------------------------------------------------

EMPTY = Ledger(stored=[], missing=[], lost=[])


def advance(
    old: Ledger,
    stored: Iterable[SeqRange],
    lost: Iterable[tuple[int, int, str]],
    now_ms: int,
    spool: SpoolState | None = None,
) -> Ledger:
    """The agent's ledger after storing the ``stored`` seqs and giving up on the ``lost`` ranges.

    - stored only grows; a stored seq is never missing or lost;
    - a lost range is recorded with its reason for the seqs not stored (an already lost seq keeps
      its first reason); storing a lost seq moves it to stored;
    - delayed = the agent's pending range (from its last spool state) not stored or lost;
    - missing = holes between 1 and the highest seq known (stored, lost, or the agent's last seq)
      that are not delayed; a hole that was already missing keeps its ``since_ms``, a new hole
      gets ``now_ms``.
    """
    new_stored = normalize([*old.stored, *stored])
    clean_lost = [(max(a, 1), b, why) for a, b, why in lost if b >= max(a, 1)]
    new_lost = union_tagged(
        subtract_tagged(old.lost, new_stored),
        subtract_tagged(clean_lost, new_stored),
    )
    done = normalize([*new_stored, *untag(new_lost)])
    top = max(done[-1][1] if done else 0, spool.last_seq if spool else 0)
    pending: list[SeqRange] = []
    if spool and spool.first_pending_seq > 0 and spool.last_seq >= spool.first_pending_seq:
        pending = subtract([(spool.first_pending_seq, spool.last_seq)], done)
    gaps = subtract(subtract([(1, top)], done), pending) if top else []
    new_missing = retag(gaps, old.missing, now_ms)
    delayed = [(a, b, spool.oldest_pending_ms) for a, b in pending] if spool else []
    return Ledger(stored=new_stored, missing=new_missing, lost=new_lost, delayed=delayed, spool=spool)


# The ledger as table rows (kind, first, last, since_ms, reason): the same shape in every store.
LedgerRow = tuple[str, int, int, int | None, str | None]


def from_rows(rows: list[LedgerRow], spool: SpoolState | None = None) -> Ledger:
    stored: list[SeqRange] = []
    missing: list[tuple[int, int, int]] = []
    lost: list[tuple[int, int, str]] = []
    delayed: list[tuple[int, int, int]] = []
    for kind, first, last, since, reason in rows:
        if kind == "stored":
            stored.append((first, last))
        elif kind == "missing":
            missing.append((first, last, since or 0))
        elif kind == "delayed":
            delayed.append((first, last, since or 0))
        else:
            lost.append((first, last, reason or ""))
    return Ledger(stored=stored, missing=missing, lost=lost, delayed=delayed, spool=spool)


def to_rows(ledger: Ledger) -> list[LedgerRow]:
    rows: list[LedgerRow] = [("stored", a, b, None, None) for a, b in ledger.stored]
    rows += [("missing", a, b, since, None) for a, b, since in ledger.missing]
    rows += [("lost", a, b, None, why) for a, b, why in ledger.lost]
    rows += [("delayed", a, b, since, None) for a, b, since in ledger.delayed]
    return rows
