"""The audit: for every agent, every seq it created is stored exactly once or accounted for.

The truth comes from the agents (what they created, what they themselves gave up on); the claim
comes from the pipeline (the ledger) and the evidence from the store (how many times each seq's
marker point is actually there). The audit trusts none of them alone:

- *stored once*: the store holds the seq's marker point exactly once and the ledger says stored;
- *duplicated*: the marker point is there more than once (a broken idempotency);
- *lost, accounted*: not stored, and the ledger or the agent names a reason;
- *delayed*: not stored, but still held by the agent (its spool) or in flight;
- *unaccounted*: none of the above — silent loss. Exit code 0 only if this and duplicated are 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lossproof.store import ledger as lg

SeqRange = tuple[int, int]


@dataclass(frozen=True)
class AgentTruth:
    """What an agent knows: seqs it created, and the ones it dropped itself, with reasons."""

    agent: str
    created: list[SeqRange]
    dropped: list[tuple[int, int, str]] = field(default_factory=list)
    pending: list[SeqRange] = field(default_factory=list)  # still in its spool, not acknowledged


@dataclass(frozen=True)
class PipelineView:
    """What the pipeline says about one agent (its ledger) and how often each seq's marker is stored."""

    stored: list[SeqRange]
    lost: list[tuple[int, int, str]]
    marker_counts: Mapping[int, int]  # seq -> number of marker points in the store


@dataclass
class AgentAudit:
    agent: str
    created: int = 0
    stored_once: int = 0
    duplicated: int = 0
    lost_accounted: dict[str, int] = field(default_factory=dict)
    delayed: int = 0
    unaccounted: list[SeqRange] = field(default_factory=list)
    ledger_disagrees: list[SeqRange] = field(default_factory=list)  # ledger says stored, store has no marker

    @property
    def unaccounted_count(self) -> int:
        return lg.count(self.unaccounted)

    @property
    def ok(self) -> bool:
        return self.duplicated == 0 and not self.unaccounted


def audit_agent(truth: AgentTruth, view: PipelineView) -> AgentAudit:
    created = lg.normalize(truth.created)
    out = AgentAudit(truth.agent, created=lg.count(created))
    in_store = lg.from_seqs(s for s, n in view.marker_counts.items() if n >= 1)
    once = lg.from_seqs(s for s, n in view.marker_counts.items() if n == 1)
    out.stored_once = lg.count(lg.intersect(once, created))
    out.duplicated = sum(1 for s, n in view.marker_counts.items() if n > 1 and lg.contains(created, s))
    # The ledger's claim of "stored" is only believed where the store has the evidence.
    out.ledger_disagrees = lg.subtract(lg.intersect(lg.normalize(view.stored), created), in_store)

    rest = lg.subtract(created, in_store)
    for a, b, reason in [*view.lost, *truth.dropped]:
        hit = lg.intersect(rest, [(a, b)])
        if hit:
            out.lost_accounted[reason] = out.lost_accounted.get(reason, 0) + lg.count(hit)
            rest = lg.subtract(rest, hit)
    pending = lg.intersect(rest, lg.normalize(truth.pending))
    out.delayed = lg.count(pending)
    out.unaccounted = lg.subtract(rest, pending)
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


def marker_counts(seqs: Iterable[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for s in seqs:
        counts[s] = counts.get(s, 0) + 1
    return counts
