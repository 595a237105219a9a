"""What a write batch does to the reports, conflicts, ledger and agent rows: one pure function.

The idempotency and ledger rules of every store backend live here once, independent of SQL:

- :func:`plan_batch` takes the batch's agent data (:func:`lossproof.store.ledger.group_batch`) and
  the prior state the backend loaded (:class:`Prior`: agent summary rows, ledger rows, and the
  digests of the reports' seqs the ledger says are stored) and returns a :class:`Plan`: reports to
  insert (with digest and time), conflicts to keep, ledger rows to delete and insert, agent rows to
  upsert, and the counters of the :class:`~lossproof.store.base.WriteResult`.
- A backend loads the prior state (:func:`digests_wanted` says which digests), applies the plan in
  its write transaction, and builds the point columns from ``plan.reports`` itself.

Rules (the contract tests state them too): the first write of a seq wins (batch order, then
stored); the same seq again with the same content is a duplicate, with other content a conflict that
is kept (never applied); the ledger moves by :func:`lossproof.store.ledger.advance`; the first
report of a new incarnation of a known agent id makes what the agent id's other incarnations still
had delayed lost (``spool_reset``), unless the same batch writes to them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from lossproof.points import same_report
from lossproof.store import ledger as lg
from lossproof.store.base import Ledger, ReportWrite, SpoolState, encode_points

__all__ = [
    "AgentKey",
    "AgentUpdate",
    "AgentWork",
    "Plan",
    "Prior",
    "Summary",
    "digests_wanted",
    "plan_batch",
]

AgentKey = lg.AgentKey
AgentWork = lg.AgentWork


class Summary(NamedTuple):
    """The prior values an agent row contributes to the plan (the backends' ``_SUMMARY`` columns)."""

    last_stored_ms: int
    spool_pending_reports: int
    spool_pending_bytes: int
    spool_oldest_ms: int
    spool_first_pending: int
    spool_last_seq: int
    spool_reported_ms: int
    first_seq: int
    first_seen_ms: int
    conflict_reports: int

    @classmethod
    def of(cls, row: Sequence[Any]) -> Summary:
        return cls(*(int(v) for v in row))

    def spool(self, key: AgentKey) -> SpoolState | None:
        """The last spool state the agent reported, None if it never did."""
        return lg.spool_state(*key, self[1:7]) if self.spool_reported_ms else None


@dataclass(slots=True)
class Prior:
    """The stored state a batch is planned against, loaded by the backend in its write transaction.

    - ``agents``: the summary of every incarnation of the batch that has an agent row, and of the
      other incarnations of agent ids that get a new one in the batch (at least those with seqs
      still delayed: the others are left as they are);
    - ``ledgers``: the ledger rows of those incarnations (missing key: no rows);
    - ``digests``: per incarnation, the stored digest of (at least) the seqs :func:`digests_wanted`
      names; a stored seq without a digest (stored before digests were kept) counts as duplicate.
    """

    agents: dict[AgentKey, Summary] = field(default_factory=dict)
    ledgers: dict[AgentKey, list[lg.LedgerRow]] = field(default_factory=dict)
    digests: dict[AgentKey, dict[int, bytes]] = field(default_factory=dict)


AgentRow = tuple[str, str, str, int, int, int, int, int, int, int, int, int, int, int, int, int, int, int]


@dataclass(slots=True)
class AgentUpdate:
    """One incarnation's new ledger and agent row. ``row`` is in the backends' ``_AGENT_COLUMNS``
    order; its last value, ``conflict_reports``, is the prior count: if ``recount_conflicts`` the
    backend counts the incarnation's kept conflicts after inserting ``plan.conflicts`` (a conflict
    recorded before is not recorded twice) and uses :meth:`row_with`."""

    key: AgentKey
    ledger: Ledger
    gone: list[tuple[str, int]]  # (kind, first) of ledger rows to delete
    added: list[lg.LedgerRow]  # ledger rows to insert
    row: AgentRow
    recount_conflicts: bool = False

    def row_with(self, conflict_reports: int) -> AgentRow:
        return (*self.row[:17], conflict_reports)


@dataclass(slots=True)
class Plan:
    now_ms: int
    reports: list[tuple[AgentKey, ReportWrite, bytes]] = field(default_factory=list)  # new: insert
    conflicts: list[tuple[AgentKey, ReportWrite, bytes]] = field(default_factory=list)  # keep
    agents: list[AgentUpdate] = field(default_factory=list)  # in the order planned
    stored: int = 0
    duplicates: int = 0
    conflicted: int = 0

    def report_rows(self) -> list[tuple[str, str, str, int, bytes, int]]:
        """Rows of ``reports``: (tenant, agent, incarnation, seq, digest, time_ms)."""
        return [(*k, r.seq, d, r.time_ms) for k, r, d in self.reports]

    def conflict_rows(
        self, recorded: Callable[[tuple[str, str, str, int]], list[bytes]]
    ) -> list[tuple[str, str, str, int, bytes, bytes, int, int]]:
        """Rows of ``conflicts``: (tenant, agent, incarnation, seq, digest, points, n_points, detected_ms).

        The table keeps a conflict read again once by its key, digest included. One recorded with a
        digest of the kind made before ``points.DIGEST_KIND`` (16 bytes of BLAKE2b) would be
        recorded again: it is left out when ``recorded`` (the digests recorded for a seq, asked
        only of seqs in conflict) names it."""
        now = self.now_ms
        rows = []
        for k, r, d in self.conflicts:
            key = (*k, r.seq)
            if any(len(old) != len(d) and same_report(r.points, old) for old in recorded(key)):
                continue
            rows.append((*key, d, encode_points(r.points), len(r.points), now))
        return rows

    def ledger_deletes(self) -> list[tuple[str, str, str, str, int]]:
        return [(*u.key, kind, first) for u in self.agents for kind, first in u.gone]

    def ledger_inserts(self) -> list[tuple[str, str, str, str, int, int, int | None, str | None]]:
        return [(*u.key, *r) for u in self.agents for r in u.added]


def _stored(rows: list[lg.LedgerRow] | None) -> list[lg.SeqRange]:
    return [(first, last) for kind, first, last, _, _ in rows or () if kind == "stored"]


def digests_wanted(work: Mapping[AgentKey, AgentWork], prior: Prior) -> dict[AgentKey, list[int]]:
    """Per incarnation, the seqs of the batch's reports that its (prior) ledger says are stored: the
    digests :func:`plan_batch` compares. Usually none (a batch of new seqs costs no lookup)."""
    out: dict[AgentKey, list[int]] = {}
    for key, (reports, *_) in work.items():
        stored = _stored(prior.ledgers.get(key)) if reports else []
        if stored:
            seqs = sorted({r.seq for r in reports if lg.contains(stored, r.seq)})
            if seqs:
                out[key] = seqs
    return out


def plan_batch(work: Mapping[AgentKey, AgentWork], prior: Prior, now_ms: int) -> Plan:
    """The plan of a batch (``work``: :func:`lossproof.store.ledger.group_batch`, in batch order)
    against ``prior``. Pure: the same input gives the same plan."""
    plan = Plan(now_ms)
    reset: set[tuple[str, str]] = set()
    for key, (reports, lost, spool_in, first_seq_in) in work.items():  # batch order: first write wins
        tenant, agent, _ = key
        summary = prior.agents.get(key)
        if summary is None and (tenant, agent) not in reset:
            reset.add((tenant, agent))
            for other, o in prior.agents.items():
                if other[:2] != (tenant, agent) or other in work:
                    continue
                old = lg.from_rows(prior.ledgers.get(other, []))
                if not old.delayed:
                    continue
                o_spool = o.spool(other)
                new = lg.advance(old, [], lg.spool_reset(old), now_ms, o_spool, o.first_seq)
                plan.agents.append(
                    _update(other, prior, new, o_spool, o.last_stored_ms, o.first_seen_ms, o.conflict_reports)
                )
        spool = spool_in
        if spool is None and summary is not None:
            spool = summary.spool(key)
        first_seq = summary.first_seq if summary else first_seq_in
        old = lg.from_rows(prior.ledgers.get(key, []) if summary else [])
        known = prior.digests.get(key, {})
        got = lg.sort_reports(reports, old.stored, lambda _seqs: known)  # noqa: B023 (called at once)
        plan.duplicates += got.duplicates
        plan.conflicted += len(got.conflicts)
        plan.stored += len(got.new)
        plan.reports += [(key, r, d) for r, d in got.new.values()]
        plan.conflicts += [(key, r, d) for r, d in got.conflicts]
        new = lg.advance(old, lg.from_seqs(got.new), lost, now_ms, spool, first_seq)
        last_stored = now_ms if got.new else (summary.last_stored_ms if summary else 0)
        first_seen = summary.first_seen_ms if summary else now_ms
        n_conflicts = summary.conflict_reports if summary else 0
        u = _update(key, prior, new, spool, last_stored, first_seen, n_conflicts)
        u.recount_conflicts = bool(got.conflicts)
        plan.agents.append(u)
    return plan


def _update(
    key: AgentKey,
    prior: Prior,
    new: Ledger,
    spool: SpoolState | None,
    last_stored: int,
    first_seen: int,
    conflict_count: int,
) -> AgentUpdate:
    tenant, agent, inc = key
    old_rows = prior.ledgers.get(key, []) if key in prior.agents else []
    new_rows = lg.to_rows(new)
    old_set, new_set = set(old_rows), set(new_rows)
    sp = spool or SpoolState(tenant, agent, 0, 0, 0, 0, 0, 0)
    row: AgentRow = (
        tenant,
        agent,
        inc,
        lg.max_seq(new, spool),
        lg.count(new.stored),
        lg.count(new.missing),
        lg.count(new.lost),
        last_stored,
        lg.count(new.delayed),
        sp.pending_reports,
        sp.pending_bytes,
        sp.oldest_pending_ms,
        sp.first_pending_seq,
        sp.last_seq,
        sp.reported_ms,
        new.first_seq,
        first_seen,
        conflict_count,
    )
    return AgentUpdate(
        key,
        new,
        gone=[(r[0], r[1]) for r in old_rows if r not in new_set],
        added=[r for r in new_rows if r not in old_set],
        row=row,
    )
