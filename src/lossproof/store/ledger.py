"""Seq range arithmetic for the ledger: sorted, disjoint, inclusive ``(first, last)`` ranges.

Plain ranges are ``(first, last)``; *tagged* ranges ``(first, last, tag)`` carry a value per range
(the time a missing range was first seen, the reason a range was lost). Every function takes and
returns normalized lists (sorted, disjoint; plain ranges also merged when adjacent, tagged ranges
merged when adjacent with an equal tag) unless its docstring says otherwise.

:func:`advance` is the one ledger transition every store backend applies, so the stored / missing /
lost rules live here once, independent of SQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from lossproof.store.base import Ledger, SpoolState

SeqRange = tuple[int, int]
T = TypeVar("T")


def normalize(ranges: Iterable[SeqRange]) -> list[SeqRange]:
    """Sort and merge overlapping or adjacent ranges (any input order, any overlap)."""
    out: list[SeqRange] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def from_seqs(seqs: Iterable[int]) -> list[SeqRange]:
    return normalize((s, s) for s in seqs)


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
