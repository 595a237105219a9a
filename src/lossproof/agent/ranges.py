"""Inclusive seq ranges ``(first, last)``: sorted, disjoint, merged when adjacent.

The agent's acked and dropped sets are kept as such ranges: acknowledgements arrive mostly in order,
so a day of reports is a handful of ranges, cheap to keep in memory and to persist.

The arithmetic itself lives in :mod:`lossproof.ranges` (shared with the store's ledger); this module
names it the agent's way: dropped ranges are tagged with their reason (:data:`Tagged`), and
:func:`add_tagged` adds drops where a seq keeps its first reason.
"""

from __future__ import annotations

from lossproof.ranges import (
    SeqRange,
    clip,
    contains,
    count,
    from_seqs,
    intersect,
    intersect_tagged,
    merge_tagged,
    normalize,
    subtract,
    subtract_tagged,
)
from lossproof.ranges import union_tagged as add_tagged

__all__ = [
    "SeqRange",
    "Tagged",
    "add_tagged",
    "clip",
    "contains",
    "count",
    "from_seqs",
    "intersect",
    "intersect_tagged",
    "merge_tagged",
    "normalize",
    "subtract",
    "subtract_tagged",
]

# A dropped range and the reason it was dropped.
Tagged = tuple[int, int, str]
