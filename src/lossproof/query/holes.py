"""Holes on charts: where a series has no data, and why (from its agent's ledger).

The ledger knows exactly which of an agent's *reports* (seqs) are stored, delayed, missing or lost,
but not the time each report covered. A chart knows where in *time* a series has no points. This
module joins the two, at the chart's resolution (one step = one pixel):

1. A gap is a stretch of steps without a point between two points (or after the last one, up to now),
   longer than 1.6 times the series' usual spacing.
2. The series belongs to an agent when one of its labels ``agent``, ``host`` or ``instance`` (in that
   order; the agent's default labels carry ``host``) equals an agent's id.
3. The part of a gap after the oldest report still in the agent's spool is **delayed** (exact: the
   agent said so). A gap at the end of the chart with nothing pending is **pending** when the agent was
   heard from lately (the data may be in the log, behind the worker) and **silent** otherwise.
4. The other gaps are matched with the agent's non-stored seq runs (missing / lost, with the reason)
   newest first: the n-th gap from the right with the n-th hole in the seq space from the top. Seqs are
   handed out in time order, so this is right whenever the series has a point in every report; a
   run mixing kinds is split in proportion to its seqs. It is only done when the chart reaches the
   present (otherwise the holes after the chart are unknown): in a chart of the past, a gap is labelled
   with the kind when the agent's holes all share it, else **unknown** with the ledger's holes listed.
   Gaps beyond the ledger's holes are **nodata**: no report is missing, the agent made none then.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass

from lossproof.store.base import AgentSummary, Ledger

AGENT_LABELS = ("agent", "host", "instance")
RECENT_MS = 120_000  # an agent heard from within this long is "live"


@dataclass(frozen=True, slots=True)
class Hole:
    start_ms: int
    end_ms: int
    kind: str  # delayed | pending | missing | lost | silent | nodata | unknown
    text: str

    def as_json(self) -> dict[str, object]:
        return {"from": self.start_ms, "to": self.end_ms, "kind": self.kind, "text": self.text}


@dataclass(frozen=True, slots=True)
class Piece:
    kind: str  # missing | lost
    first: int
    last: int
    note: str  # the reason (lost) or the time first seen (missing)


def agent_of(labels: dict[str, str], agents: set[str]) -> str | None:
    for name in AGENT_LABELS:
        v = labels.get(name)
        if v is not None and v in agents:
            return v
    return None


def gaps(
    times: list[int | None], grid_start: int, step: int, until_ms: int
) -> tuple[list[tuple[int, int, bool]], float]:
    """``(from, to, trailing)`` stretches without data, from per-step sample times (None: no point),
    and the spacing above which a stretch counts as a gap."""
    present = [t for t in times if t is not None]
    if not present:
        return [], 0.0
    deltas = [b - a for a, b in itertools.pairwise(present) if b > a]
    usual = max(statistics.median(deltas) if deltas else step, step)
    threshold = 1.6 * usual
    out: list[tuple[int, int, bool]] = []
    for a, b in itertools.pairwise(present):
        if b - a > threshold:
            out.append((a, b, False))
    end = min(until_ms, grid_start + (len(times) - 1) * step)
    if end - present[-1] > threshold:
        out.append((present[-1], end, True))
    return out, threshold


def seq_holes(ledger: Ledger) -> list[list[Piece]]:
    """Runs of non-stored seqs below the agent's pending range, newest first; each run is the list
    of its missing / lost pieces in seq order."""
    pending_from = min((a for a, _, _ in ledger.delayed), default=None)
    pieces = [Piece("missing", a, b, f"first seen {_iso(since)}") for a, b, since in ledger.missing]
    pieces += [Piece("lost", a, b, why or "no reason given") for a, b, why in ledger.lost]
    if pending_from is not None:
        pieces = [p for p in pieces if p.last < pending_from]
    pieces.sort(key=lambda p: p.first)
    runs: list[list[Piece]] = []
    for p in pieces:
        if runs and p.first == runs[-1][-1].last + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs[::-1]


def classify(
    found: list[tuple[int, int, bool]],
    agent: AgentSummary | None,
    ledger: Ledger | None,
    now_ms: int,
    reaches_now: bool,
    threshold: float = 0.0,
) -> list[Hole]:
    """Why each gap is there (see the module doc); ``threshold`` is the spacing that makes a gap."""
    if agent is None or ledger is None:
        return [Hole(a, b, "nodata", "no data (the series belongs to no known agent)") for a, b, _ in found]
    out: list[Hole] = []
    rest: list[tuple[int, int]] = []
    spool = ledger.spool
    delayed_n = sum(b - a + 1 for a, b, _ in ledger.delayed)
    pending_from = spool.oldest_pending_ms if (spool is not None and delayed_n) else None
    for a, b, trailing in found:
        if pending_from is not None and b > pending_from:
            cut = max(a, pending_from)
            out.append(
                Hole(
                    cut,
                    b,
                    "delayed",
                    f"not arrived yet: {delayed_n} report(s) of {agent.agent} still in its spool, "
                    f"the oldest made {_iso(pending_from)} ({_ago(now_ms - pending_from)} ago)",
                )
            )
            if cut - a > threshold:  # a gap before the pending reports too
                rest.append((a, cut))
            continue
        if trailing:
            seen = agent.heard_ms
            if now_ms - seen <= RECENT_MS:
                text = f"not stored yet: {agent.agent} was heard from {_iso(seen)}"
                out.append(Hole(a, b, "pending", text))
            elif agent.one_shot:
                text = f"{agent.agent} sends only when it is run (one-shot sender); last sent {_iso(seen)}"
                out.append(Hole(a, b, "nodata", text))
            else:
                text = f"{agent.agent} not heard from since {_iso(seen) if seen else 'ever'}"
                out.append(Hole(a, b, "silent", text))
            continue
        rest.append((a, b))
    runs = seq_holes(ledger)
    rest.sort(reverse=True)
    if reaches_now:
        for i, (a, b) in enumerate(rest):
            if i < len(runs):
                out += _split(a, b, runs[i], agent.agent)
            else:
                out.append(Hole(a, b, "nodata", f"no data, and no report of {agent.agent} is missing"))
    else:
        kinds = {(p.kind, p.note if p.kind == "lost" else "") for run in runs for p in run}
        for a, b in rest:
            if not runs:
                out.append(Hole(a, b, "nodata", f"no data, and no report of {agent.agent} is missing"))
            elif len(kinds) == 1:
                kind, note = next(iter(kinds))
                out.append(Hole(a, b, kind, _describe(kind, note, agent.agent, None)))
            else:
                listed = "; ".join(_piece_text(p) for run in runs[:5] for p in run)
                out.append(Hole(a, b, "unknown", f"missing or lost; {agent.agent}'s ledger: {listed}"))
    out.sort(key=lambda h: h.start_ms)
    return out


def _split(a: int, b: int, run: list[Piece], agent: str) -> list[Hole]:
    total = sum(p.last - p.first + 1 for p in run)
    out: list[Hole] = []
    pos = float(a)
    for p in run:
        width = (b - a) * (p.last - p.first + 1) / total
        out.append(Hole(round(pos), round(pos + width), p.kind, _describe(p.kind, p.note, agent, p)))
        pos += width
    return out


def _describe(kind: str, note: str, agent: str, p: Piece | None) -> str:
    seqs = f" (reports {p.first}-{p.last})" if p is not None else ""
    if kind == "lost":
        return f"lost: {note}{seqs} — {agent} gave them up"
    return f"missing{seqs}: acknowledged but not stored, replay asked from {agent}" + (
        f"; {note}" if note else ""
    )


def _piece_text(p: Piece) -> str:
    return f"{p.kind} {p.first}-{p.last} ({p.note})"


def _iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ms: int) -> str:
    s = max(0, ms // 1000)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h"
