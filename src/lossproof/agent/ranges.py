"""Inclusive seq ranges ``(first, last)``: sorted, disjoint, merged when adjacent.

The agent's acked and dropped sets are kept as such ranges: acknowledgements arrive mostly in order,
so a day of reports is a handful of ranges, cheap to keep in memory and to persist.
"""

from __future__ import annotations

from collections.abc import Iterable

SeqRange = tuple[int, int]


def normalize(ranges: Iterable[SeqRange]) -> list[SeqRange]:
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
    return subtract(a, subtract(a, b))


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


def count(ranges: Iterable[SeqRange]) -> int:
    return sum(b - a + 1 for a, b in ranges)


def clip(ranges: list[SeqRange], lo: int, hi: int) -> list[SeqRange]:
    """The parts of ``ranges`` inside ``[lo, hi]``."""
    return [(max(a, lo), min(b, hi)) for a, b in ranges if b >= lo and a <= hi]


# --- ranges with a reason (dropped seqs) ----------------------------------------------------------

Tagged = tuple[int, int, str]


def add_tagged(existing: list[Tagged], added: Iterable[Tagged]) -> list[Tagged]:
    """``existing`` plus the parts of ``added`` not yet covered: a seq keeps its first reason."""
    out = list(existing)
    covered = normalize((a, b) for a, b, _ in out)
    for a, b, why in added:
        new = subtract([(a, b)], covered)
        if new:
            out.extend((x, y, why) for x, y in new)
            covered = normalize([*covered, *new])
    return merge_tagged(out)


def merge_tagged(ranges: Iterable[Tagged]) -> list[Tagged]:
    out: list[Tagged] = []
    for a, b, why in sorted(ranges):
        if out and a == out[-1][1] + 1 and why == out[-1][2]:
            out[-1] = (out[-1][0], b, why)
        else:
            out.append((a, b, why))
    return out


def subtract_tagged(ranges: list[Tagged], remove: list[SeqRange]) -> list[Tagged]:
    out: list[Tagged] = []
    for a, b, why in ranges:
        out.extend((x, y, why) for x, y in subtract([(a, b)], remove))
    return out


def intersect_tagged(ranges: list[Tagged], keep: list[SeqRange]) -> list[Tagged]:
    out: list[Tagged] = []
    for a, b, why in ranges:
        out.extend((x, y, why) for x, y in intersect([(a, b)], keep))
    return out
