"""Seq range arithmetic: sorted, disjoint, inclusive ``(first, last)`` integer ranges.

The one implementation shared by the agent (its acked / dropped sets, :mod:`lossproof.agent.ranges`)
and the store (the per-agent ledger, :mod:`lossproof.store.ledger`). Pure functions, no imports from
either side, so the agent never depends on the store package.

Plain ranges are ``(first, last)``; *tagged* ranges ``(first, last, tag)`` carry a value per range
(the reason a range was dropped or lost, the time a missing range was first seen). Every function
takes and returns normalized lists (sorted, disjoint; plain ranges also merged when adjacent, tagged
ranges merged when adjacent with an equal tag) unless its docstring says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

SeqRange = tuple[int, int]
T = TypeVar("T")


def normalize(ranges: Iterable[SeqRange]) -> list[SeqRange]:
    """Sort and merge overlapping or adjacent ranges (any input order, any overlap).

    Empty ranges (``first > last``) are dropped."""
    out: list[SeqRange] = []
    for a, b in sorted(r for r in ranges if r[0] <= r[1]):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def from_seqs(seqs: Iterable[int]) -> list[SeqRange]:
    """Ranges covering ``seqs`` (any order, duplicates allowed)."""
    out: list[SeqRange] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def subtract(ranges: list[SeqRange], remove: list[SeqRange]) -> list[SeqRange]:
    """``ranges`` minus ``remove``; both normalized."""
    out: list[SeqRange] = []
    j = 0
    for a, b in ranges:
        cur = a
        while j < len(remove) and remove[j][1] < cur:
            j += 1
        k = j
        while k < len(remove) and remove[k][0] <= b:
            ra, rb = remove[k]
            if ra > cur:
                out.append((cur, ra - 1))
            cur = max(cur, rb + 1)
            if cur > b:
                break
            k += 1
        if cur <= b:
            out.append((cur, b))
    return out


def intersect(a: list[SeqRange], b: list[SeqRange]) -> list[SeqRange]:
    """Seqs in both ``a`` and ``b``; both normalized."""
    return [(x, y) for x, y, _ in intersect_tagged([(x, y, None) for x, y in a], b)]


def contains(ranges: list[SeqRange], seq: int) -> bool:
    lo, hi = 0, len(ranges)
    while lo < hi:
        mid = (lo + hi) // 2
        a, b = ranges[mid]
        if seq < a:
            hi = mid
        elif seq > b:
            lo = mid + 1
        else:
            return True
    return False


def count(ranges: Iterable[tuple[int, int] | tuple[int, int, object]]) -> int:
    """Number of seqs in (plain or tagged) disjoint ranges."""
    return sum(r[1] - r[0] + 1 for r in ranges)


def clip(ranges: list[SeqRange], lo: int, hi: int) -> list[SeqRange]:
    """The parts of ``ranges`` inside ``[lo, hi]``."""
    return [(max(a, lo), min(b, hi)) for a, b in ranges if b >= lo and a <= hi]


def holes(stored: list[SeqRange], lost: list[SeqRange]) -> list[SeqRange]:
    """Seqs from 1 to the highest stored-or-lost seq that are neither stored nor lost."""
    known = normalize([*stored, *lost])
    if not known:
        return []
    return subtract([(1, known[-1][1])], known)


# --- tagged ranges -------------------------------------------------------------------------------


def untag(ranges: Iterable[tuple[int, int, T]]) -> list[SeqRange]:
    return normalize((a, b) for a, b, _ in ranges)


def merge_tagged(ranges: Iterable[tuple[int, int, T]]) -> list[tuple[int, int, T]]:
    """Sort disjoint tagged ranges and merge neighbours that touch and carry an equal tag."""
    out: list[tuple[int, int, T]] = []
    for a, b, tag in sorted(ranges, key=lambda r: r[0]):
        if out and a == out[-1][1] + 1 and tag == out[-1][2]:
            out[-1] = (out[-1][0], b, tag)
        else:
            out.append((a, b, tag))
    return out


def subtract_tagged(ranges: list[tuple[int, int, T]], remove: list[SeqRange]) -> list[tuple[int, int, T]]:
    """The parts of ``ranges`` outside ``remove``, each keeping its tag."""
    out: list[tuple[int, int, T]] = []
    for a, b, tag in ranges:
        out.extend((x, y, tag) for x, y in subtract([(a, b)], remove))
    return out


def intersect_tagged(ranges: list[tuple[int, int, T]], keep: list[SeqRange]) -> list[tuple[int, int, T]]:
    """The parts of ``ranges`` inside ``keep``, each keeping its tag."""
    out: list[tuple[int, int, T]] = []
    j = 0
    for a, b, tag in ranges:
        while j < len(keep) and keep[j][1] < a:
            j += 1
        k = j
        while k < len(keep) and keep[k][0] <= b:
            x, y = max(a, keep[k][0]), min(b, keep[k][1])
            out.append((x, y, tag))
            k += 1
    return out


def union_tagged(
    existing: list[tuple[int, int, T]], added: Iterable[tuple[int, int, T]]
) -> list[tuple[int, int, T]]:
    """``existing`` plus the parts of each added range not yet covered (earlier ranges win).

    ``added`` may be unsorted and overlapping; ``existing`` is normalized."""
    out = list(existing)
    covered = untag(out)
    for a, b, tag in added:
        if a > b:
            continue
        new = [(x, y, tag) for x, y in subtract([(a, b)], covered)]
        if new:
            out.extend(new)
            covered = normalize([*covered, *((x, y) for x, y, _ in new)])
    return merge_tagged(out)


def retag(ranges: list[SeqRange], old: list[tuple[int, int, T]], default: T) -> list[tuple[int, int, T]]:
    """Tag ``ranges``: parts covered by ``old`` keep old's tag, the rest get ``default``."""
    kept = intersect_tagged(old, ranges)
    fresh = [(a, b, default) for a, b in subtract(ranges, untag(old))]
    return merge_tagged([*kept, *fresh])
