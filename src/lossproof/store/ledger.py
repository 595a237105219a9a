"""The ledger: which seqs of an agent are stored, missing, lost or delayed, as seq ranges.

The range arithmetic (sorted, disjoint, inclusive ``(first, last)`` ranges, plain or tagged) is
:mod:`lossproof.ranges`, shared with the agent; it is re-exported here for the store backends. In the
ledger a missing range is tagged with the time it was first seen, a lost range with its reason.

:func:`advance` is the one ledger transition every store backend applies, so the stored / missing /
lost rules live here once, independent of SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lossproof.points import same_report
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
from lossproof.store.base import Ledger, ReportWrite, SpoolState, WriteBatch, report_digest

__all__ = [
    "EMPTY",
    "SPOOL_RESET",
    "LedgerRow",
    "SeqRange",
    "Sorted",
    "advance",
    "contains",
    "count",
    "from_rows",
    "from_seqs",
    "group_batch",
    "holes",
    "intersect",
    "intersect_tagged",
    "max_seq",
    "merge_tagged",
    "normalize",
    "retag",
    "sort_reports",
    "spool_reset",
    "spool_state",
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
    first_seq: int = 1,
) -> Ledger:
    """The agent's ledger after storing the ``stored`` seqs and giving up on the ``lost`` ranges.

    - stored only grows; a stored seq is never missing or lost;
    - a lost range is recorded with its reason for the seqs not stored (an already lost seq keeps
      its first reason); storing a lost seq moves it to stored;
    - delayed = the agent's pending range (from its last spool state) not stored or lost;
    - missing = holes between ``first_seq`` (where the incarnation's seq space starts) and the
      highest seq known (stored, lost, or the agent's last seq) that are not delayed; a hole that
      was already missing keeps its ``since_ms``, a new hole gets ``now_ms``.
    """
    base = max(first_seq, 1)
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
    gaps = subtract(subtract([(base, top)], done), pending) if top >= base else []
    new_missing = retag(gaps, old.missing, now_ms)
    delayed = [(a, b, spool.oldest_pending_ms) for a, b in pending] if spool else []
    return Ledger(
        stored=new_stored,
        missing=new_missing,
        lost=new_lost,
        delayed=delayed,
        spool=spool,
        incarnation=old.incarnation,
        first_seq=base,
        conflicts=old.conflicts,
    )


SPOOL_RESET = "spool_reset"


def spool_reset(old: Ledger) -> list[tuple[int, int, str]]:
    """The lost ranges to record for an incarnation superseded by a new one of the same agent id:
    what it still had delayed (created, never delivered) is gone with its spool, so it is lost with
    reason ``spool_reset`` rather than forgotten. Should the old incarnation still be alive (two
    hosts sharing an id), a report it delivers later moves from lost to stored as usual."""
    return [(a, b, SPOOL_RESET) for a, b, _ in old.delayed]


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


# --- new, duplicate or conflicting reports ----------------------------------------------------------


@dataclass(slots=True)
class Sorted:
    """One incarnation's reports of a batch, sorted by what the store does with them."""

    new: dict[int, tuple[ReportWrite, bytes]] = field(default_factory=dict)  # seq -> (report, digest)
    duplicates: int = 0
    conflicts: list[tuple[ReportWrite, bytes]] = field(default_factory=list)


def sort_reports(
    reports: Sequence[ReportWrite],
    stored: list[SeqRange],
    stored_digests: Callable[[list[int]], dict[int, bytes]],
) -> Sorted:
    """Split ``reports`` (in batch order) into new ones (the first of each seq not yet stored),
    duplicates (a seq already stored, or earlier in the batch, with the same content digest) and
    conflicts (the same seq with other content). ``stored_digests`` is asked only about seqs the
    ledger says are stored, so the usual batch of new seqs costs no lookup. A stored seq without a
    digest (stored before digests were kept) cannot be compared: it counts as a duplicate, as before."""
    out = Sorted()
    digests = [report_digest(r.points) for r in reports]
    again = sorted({r.seq for r in reports if contains(stored, r.seq)})
    known = stored_digests(again) if again else {}
    for r, d in zip(reports, digests, strict=True):
        if r.seq in out.new:
            prev = out.new[r.seq][1]
        elif contains(stored, r.seq):
            prev = known.get(r.seq, d)
        else:
            out.new[r.seq] = (r, d)
            continue
        if prev == d or same_report(r.points, prev, d):
            out.duplicates += 1
        else:
            out.conflicts.append((r, d))
    return out


AgentKey = tuple[str, str, str]  # (tenant, agent, incarnation)
# What a batch says about one incarnation: its reports (batch order), lost ranges, last spool
# state, and the first seq of its seq space.
AgentWork = tuple[list[ReportWrite], list[tuple[int, int, str]], SpoolState | None, int]


def group_batch(batch: WriteBatch) -> dict[AgentKey, AgentWork]:
    """The batch's agent data per (tenant, agent, incarnation), in order of first appearance."""
    out: dict[AgentKey, AgentWork] = {}

    def of(key: AgentKey) -> AgentWork:
        w = out.get(key)
        if w is None:
            w = out[key] = ([], [], None, 1)
        return w

    firsts: dict[AgentKey, int] = {}
    for inc in batch.incarnations:
        firsts.setdefault((inc.tenant, inc.agent, inc.incarnation), inc.first_seq)
    for r in batch.reports:
        of((r.tenant, r.agent, r.incarnation))[0].append(r)
    for lr in batch.lost:
        of((lr.tenant, lr.agent, lr.incarnation))[1].append((lr.first, lr.last, lr.reason))
    for sp in batch.spool:
        key = (sp.tenant, sp.agent, sp.incarnation)
        reports, lost, _, first = of(key)
        out[key] = (reports, lost, sp, first)  # the last one wins
    for key in firsts:
        of(key)
    return {k: (r, lo, sp, firsts.get(k, first)) for k, (r, lo, sp, first) in out.items()}


def spool_state(tenant: str, agent: str, incarnation: str, v: Sequence[int]) -> SpoolState:
    """A :class:`SpoolState` from the six spool columns of an agent row (pending reports, pending
    bytes, oldest pending ms, first pending seq, last seq, reported ms)."""
    return SpoolState(tenant, agent, v[0], v[1], v[2], v[3], v[4], v[5], incarnation)


def max_seq(new: Ledger, spool: SpoolState | None) -> int:
    """The highest seq known of an incarnation: stored, lost, or the agent's last one."""
    return max(
        new.stored[-1][1] if new.stored else 0,
        new.lost[-1][1] if new.lost else 0,
        spool.last_seq if spool else 0,
    )
