"""The audit: every report an agent created is stored exactly once or accounted for.

A report is identified by its *marker* (the chaos driver's ``(run, n)``: which process made it, its
count there; :mod:`lossproof.chaos.journal`), not by its seq: a seq can be reused (a wiped spool,
two agents sharing an id), and two reports with one seq must never pass for one. The seq and the
incarnation only say where to look for the reason a report is missing.

The truth comes from the agents (their spools and marker journals: what they created, what they
gave up on themselves, what they still hold); the claim comes from the pipeline (the ledger of each
incarnation) and the evidence from the store (how many times each marker point is there). The audit
trusts none of them alone:

- *stored once*: the store holds the report's marker point exactly once;
- *duplicated*: the marker point is there more than once (a broken idempotency);
- *lost, accounted*: not stored, and the agent names a reason, or the ledger of the report's
  incarnation does (e.g. ``spool_reset``), or keeps the report whole as a seq conflict, or the spool
  was wiped before the pipeline ever heard of the report (``wiped_unreported``);
- *delayed*: not stored, but still held by the agent (its spool);
- *unaccounted*: none of the above — silent loss. Exit code 0 only if this and duplicated are 0.

A seq the spool created that no marker names (a spool the chaos driver did not write) cannot be
proven stored: it counts as stored by nobody, so only a reason or a delay accounts for it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from lossproof.chaos.journal import Marker
from lossproof.store import ledger as lg

SeqRange = tuple[int, int]
MarkerKey = tuple[str, int]  # (run, n)

# The harness wiped the spool before the pipeline had heard of these reports (not even their seq in
# a request's spool state): nothing in the pipeline could know they existed.
WIPED_UNREPORTED = "wiped_unreported"
# The ledger keeps a report with a reused seq whole, as a conflict an operator can apply.
CONFLICT_KEPT = "conflict_kept"


@dataclass(frozen=True)
class AgentTruth:
    """What one agent spool knows: the seqs it created, the ones it dropped itself (with reasons),
    the ones it still holds, and (from its marker journal) each report's marker and the spool's
    incarnations as ``(first_seq, incarnation)``."""

    agent: str
    created: list[SeqRange]
    dropped: list[tuple[int, int, str]] = field(default_factory=list)
    pending: list[SeqRange] = field(default_factory=list)  # still in its spool, not acknowledged
    markers: list[Marker] = field(default_factory=list)
    incarnations: list[tuple[int, str]] = field(default_factory=list)
    # The spool was wiped: what it still held will never be sent, so it is not "delayed".
    gone: bool = False
    name: str = ""  # how the table names this spool (several may share an agent id)

    @property
    def label(self) -> str:
        return self.name or self.agent

    def incarnation_of(self, seq: int) -> str:
        """The incarnation whose seq space holds ``seq``: the last begun at or below it. They are in
        the order they began; a later one never starts below an earlier one (it starts at the lowest
        seq still pending), and of two starting at one seq the later has the seqs."""
        found = ""
        for first, inc in self.incarnations:
            if first <= seq:
                found = inc
        return found


@dataclass(frozen=True)
class LedgerView:
    """What the pipeline's ledger says about one incarnation of an agent."""

    stored: list[SeqRange] = field(default_factory=list)
    lost: list[tuple[int, int, str]] = field(default_factory=list)
    conflicts: list[int] = field(default_factory=list)  # seqs with a conflicting report kept whole
    heard: int = 0  # the highest seq the pipeline has heard of (stored, missing, lost, spool state)


@dataclass(frozen=True)
class PipelineView:
    """The ledgers of an agent's incarnations and how often each marker is in the store."""

    ledgers: Mapping[str, LedgerView]
    marker_counts: Mapping[MarkerKey, int]


@dataclass
class AgentAudit:
    agent: str
    created: int = 0
    stored_once: int = 0
    duplicated: int = 0
    lost_accounted: dict[str, int] = field(default_factory=dict)
    delayed: int = 0
    # (marker or None for an unmarked seq, seq) of every report nothing accounts for
    unaccounted_reports: list[tuple[MarkerKey | None, int]] = field(default_factory=list)
    # seqs the ledger calls stored while the report (its marker) is not in the store: what a
    # reused seq looks like when the second report was thrown away as a "duplicate"
    ledger_disagrees: list[SeqRange] = field(default_factory=list)

    @property
    def unaccounted(self) -> list[SeqRange]:
        return lg.from_seqs(seq for _, seq in self.unaccounted_reports)

    @property
    def unaccounted_count(self) -> int:
        return len(self.unaccounted_reports)

    @property
    def ok(self) -> bool:
        return self.duplicated == 0 and not self.unaccounted_reports


def _reports(truth: AgentTruth) -> Iterable[tuple[MarkerKey | None, int]]:
    created = lg.normalize(truth.created)
    for m in truth.markers:
        if lg.contains(created, m.seq):
            yield (m.run, m.n), m.seq
    for a, b in lg.subtract(created, lg.from_seqs(m.seq for m in truth.markers)):
        for seq in range(a, b + 1):
            yield None, seq


def audit_agent(truth: AgentTruth, view: PipelineView) -> AgentAudit:
    out = AgentAudit(truth.label)
    dropped = [(a, b, r) for a, b, r in truth.dropped]
    pending = lg.normalize(truth.pending)
    empty = LedgerView()
    disagrees: list[int] = []
    for key, seq in _reports(truth):
        out.created += 1
        n = view.marker_counts.get(key, 0) if key is not None else 0
        if n == 1:
            out.stored_once += 1
            continue
        if n > 1:
            out.duplicated += 1
            continue
        led = view.ledgers.get(truth.incarnation_of(seq), empty)
        # The ledger's "stored" is only believed where the store has this report's marker.
        if lg.contains(led.stored, seq):
            disagrees.append(seq)
        reason = next((r for a, b, r in dropped if a <= seq <= b), None)
        reason = reason or next((r for a, b, r in led.lost if a <= seq <= b), None)
        if reason is None and seq in led.conflicts:
            reason = CONFLICT_KEPT
        if reason is None and lg.contains(pending, seq):
            if not truth.gone:
                out.delayed += 1
                continue
            if seq > led.heard:
                reason = WIPED_UNREPORTED
        if reason is None:
            out.unaccounted_reports.append((key, seq))
        else:
            out.lost_accounted[reason] = out.lost_accounted.get(reason, 0) + 1
    out.ledger_disagrees = lg.from_seqs(disagrees)
    return out


@dataclass
class AuditReport:
    agents: list[AgentAudit]

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.agents)

    def totals(self) -> dict[str, int]:
        lost: dict[str, int] = {}
        for a in self.agents:
            for k, v in a.lost_accounted.items():
                lost[k] = lost.get(k, 0) + v
        return {
            "agents": len(self.agents),
            "created": sum(a.created for a in self.agents),
            "stored_once": sum(a.stored_once for a in self.agents),
            "duplicated": sum(a.duplicated for a in self.agents),
            "lost_accounted": sum(lost.values()),
            "delayed": sum(a.delayed for a in self.agents),
            "unaccounted": sum(a.unaccounted_count for a in self.agents),
        }

    @property
    def every_ack_durable(self) -> bool:
        """Every seq the agents consider acknowledged (not pending, not dropped by themselves) is
        stored or accounted for by the pipeline: no 2xx was a lie."""
        return all(not a.unaccounted for a in self.agents)

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "every_ack_durable": self.every_ack_durable,
            "totals": self.totals(),
            "agents": [
                {
                    "agent": a.agent,
                    "created": a.created,
                    "stored_once": a.stored_once,
                    "duplicated": a.duplicated,
                    "lost_accounted": a.lost_accounted,
                    "delayed": a.delayed,
                    "unaccounted": a.unaccounted_count,
                    "unaccounted_ranges": [list(r) for r in a.unaccounted],
                    "unaccounted_markers": [
                        None if k is None else f"{k[0]}:{k[1]}" for k, _ in a.unaccounted_reports[:100]
                    ],
                    "ledger_disagrees": [list(r) for r in a.ledger_disagrees],
                }
                for a in self.agents
            ],
        }

    def table(self) -> list[str]:
        cols = ("created", "once", "dup", "lost(acct)", "delayed", "UNACCT")
        widths = (8, 8, 5, 10, 8, 7)
        lines = [f"{'agent':<24} " + " ".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))]
        for a in self.agents:
            lines.append(
                f"{a.agent[:24]:<24} {a.created:>8} {a.stored_once:>8} {a.duplicated:>5} "
                f"{sum(a.lost_accounted.values()):>10} {a.delayed:>8} {a.unaccounted_count:>7}"
            )
        t = self.totals()
        lines.append(
            f"{'TOTAL':<24} {t['created']:>8} {t['stored_once']:>8} {t['duplicated']:>5} "
            f"{t['lost_accounted']:>10} {t['delayed']:>8} {t['unaccounted']:>7}"
        )
        lines.append(
            "every 2xx durable: "
            + ("yes" if self.every_ack_durable else "NO (acknowledged, then lost silently)")
        )
        lines.append("audit: " + ("PASS" if self.ok else "FAIL (duplicates or silent loss)"))
        return lines


K = TypeVar("K", bound=Hashable)


def marker_counts(keys: Iterable[K]) -> dict[K, int]:
    counts: dict[K, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    return counts
