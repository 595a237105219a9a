"""Holes on charts: where a series has no data, and why (from its agent's ledger).

The ledger knows exactly which of an agent's *reports* (seqs) are stored, delayed, missing or lost;
each stored report also keeps the time the agent made it. A chart knows where in *time* a series has
no points. This module joins the two, at the chart's resolution (one step = one pixel):

1. A gap is a stretch of steps without a point between two points (or after the last one, up to now),
   longer than 1.6 times the series' usual spacing (the median). A gap that the ledger does not
   explain is only shown when it is also longer than the sender's own irregularity (1.25 times the
   90th percentile of its spacing, given 20 spacings or more): jitter is not a hole.
2. The series belongs to an agent when one of its labels ``agent``, ``host`` or ``instance`` (in that
   order; the agent's default labels carry ``host``) equals an agent's id.
3. The part of a gap after the oldest report still in the agent's spool is **delayed** (exact: the
   agent said so). A gap at the end of the chart with nothing pending is **pending** when the agent was
   heard from lately (the data may be in the log, behind the worker) and **silent** otherwise.
4. Each run of non-stored seqs (missing / lost, with the reason) lies in time between the stored
   reports around it: a gap that overlaps that stretch is that run's (split between runs halfway, and
   within a run in proportion to its seqs of each kind). Whatever of a gap lies clearly outside every
   run's stretch is **nodata**: no report is missing there, the agent made none then.
5. Runs whose neighbours have no time (reports stored before times were kept, or sent without one)
   are matched by order instead: the n-th unexplained gap from the right with the n-th run from the
   top, only when the chart reaches the present; in a chart of the past such a gap is labelled with
   the kind when those runs all share it, else **unknown** with the ledger's holes listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from lossproof.store.base import AgentSummary, Ledger

AGENT_LABELS = ("agent", "host", "instance")
RECENT_MS = 120_000  # an agent heard from within this long is "live"
JITTER_MIN_DELTAS = 20


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


# a run of seqs with the times of the stored reports around it (0: unknown)
Placed = tuple[int, int, list[Piece]]


def agent_of(labels: dict[str, str], agents: set[str]) -> str | None:
    for name in AGENT_LABELS:
        v = labels.get(name)
        if v is not None and v in agents:
            return v
    return None


class Gaps(NamedTuple):
    found: list[tuple[int, int, bool]]  # (from, to, trailing): stretches without data
    threshold: float  # the spacing above which a stretch is a gap when the ledger explains it
    jitter: float  # above which it is shown when nothing explains it: the sender's own irregularity


def gaps(times: list[int | None], grid_start: int, step: int, until_ms: int) -> Gaps:
    """The stretches without data, from per-step sample times (None: no point)."""
    present = np.array([t for t in times if t is not None], dtype=np.int64)
    return gaps_of(present, len(times), grid_start, step, until_ms)


def gaps_of(present: npt.NDArray[np.int64], steps: int, grid_start: int, step: int, until_ms: int) -> Gaps:
    """:func:`gaps` from the times of the steps that have a point (in step order) and the number of
    steps: no Python per step (a chart has 1,000 of them per series)."""
    if not len(present):
        return Gaps([], 0.0, 0.0)
    d = np.diff(present)
    deltas: list[int] = np.sort(d[d > 0]).tolist()  # sorted, for the median and quantile below
    usual = max(_median(deltas) if deltas else step, step)
    threshold = 1.6 * usual
    # An irregular sender's spacing varies: a stretch within its common spacing is not a hole. The
    # 90th percentile, as outages are rare and jitter is common; with few points it tells nothing.
    jitter = threshold
    if len(deltas) >= JITTER_MIN_DELTAS:  # and never more than 3 x the median: an outage shows
        jitter = min(max(threshold, 1.25 * _p90(deltas)), 3.0 * usual)
    out = [(int(present[i]), int(present[i + 1]), False) for i in np.flatnonzero(d > threshold).tolist()]
    end = min(until_ms, grid_start + (steps - 1) * step)
    if end - int(present[-1]) > threshold:
        out.append((int(present[-1]), end, True))
    return Gaps(out, threshold, jitter)


def _median(data: list[int]) -> float | int:
    """``statistics.median`` of sorted ``data`` (without its sort)."""
    n = len(data)
    return data[n // 2] if n % 2 else (data[n // 2 - 1] + data[n // 2]) / 2


def _p90(data: list[int]) -> float:
    """``statistics.quantiles(data, n=10)[-1]`` (its exclusive method) of sorted ``data``, len >= 2."""
    n, ld = 10, len(data)
    j = min(max(9 * (ld + 1) // n, 1), ld - 1)
    delta = 9 * (ld + 1) - j * n
    return (data[j - 1] * (n - delta) + data[j] * delta) / n


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


def run_span(run: list[Piece]) -> tuple[int, int]:
    return run[0].first, run[-1].last


def classify(
    found: Gaps,
    agent: AgentSummary | None,
    ledger: Ledger | None,
    now_ms: int,
    reaches_now: bool,
    placed: Sequence[tuple[int, int]] = (),
) -> list[Hole]:
    """Why each gap is there (see the module doc). ``placed[i]`` is, for the i-th run of
    :func:`seq_holes`, the times of the stored reports around it (0: unknown), from
    ``Store.report_times_around``."""
    if agent is None or ledger is None:
        return [
            Hole(a, b, "nodata", "no data (the series belongs to no known agent)")
            for a, b, _ in found.found
            if b - a > found.jitter
        ]
    out: list[Hole] = []
    rest: list[tuple[int, int]] = []
    spool = ledger.spool
    delayed_n = sum(b - a + 1 for a, b, _ in ledger.delayed)
    pending_from = spool.oldest_pending_ms if (spool is not None and delayed_n) else None
    for a, b, trailing in found.found:
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
            if cut - a > found.threshold:  # a gap before the pending reports too
                rest.append((a, cut))
            continue
        if trailing:
            if b - a <= found.jitter:
                continue
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
    times = [_ordered(placed[i]) if i < len(placed) else (0, 0) for i in range(len(runs))]
    claims: dict[int, list[int]] = {}  # gap (index in rest) -> the runs whose reports fall in it
    for i, (lo, hi) in enumerate(times):
        for j in _gaps_of(rest, lo, hi, found.jitter):
            claims.setdefault(j, []).append(i)
    for j, claimed in claims.items():
        a, b = rest[j]
        in_order = sorted(claimed, reverse=True)  # runs are newest first: oldest first is time order
        out += _placed(a, b, [(*times[i], runs[i]) for i in in_order], agent.agent, found.jitter)
    unexplained = [g for j, g in enumerate(rest) if j not in claims]
    matched = {i for claimed in claims.values() for i in claimed}
    if matched:
        # Runs that could not be placed (no time, or times that fit no gap) are older than the
        # placed ones if anything: seqs are handed out in time order. So are the gaps they may be.
        oldest = max(matched)
        pool = [runs[i] for i in range(oldest + 1, len(runs)) if i not in matched]
        before = min(rest[j][0] for j in claims)
        candidates = [g for g in unexplained if g[1] <= before]
    else:
        pool, candidates = runs, unexplained
    out += _unplaced(candidates, pool, agent.agent, reaches_now, found.jitter)
    left = [g for g in unexplained if g not in candidates and g[1] - g[0] > found.jitter]
    out += [_nodata(a, b, agent.agent) for a, b in left]
    out.sort(key=lambda h: h.start_ms)
    return out


def _ordered(times: tuple[int, int]) -> tuple[int, int]:
    lo, hi = times
    return (hi, lo) if lo and hi and lo > hi else (lo, hi)  # a clock stepped back


def _gaps_of(rest: list[tuple[int, int]], lo: int, hi: int, jitter: float) -> list[int]:
    """The gaps a run's reports fall in, from the times of the stored reports around it (0:
    unknown). With one side known, only the one gap at that side, if any."""
    if lo and hi:
        return [j for j, (a, b) in enumerate(rest) if lo < b and hi > a]
    if lo:  # the report before the run: its points end the gap's data, at or before its time
        return [j for j, (a, b) in enumerate(rest) if a <= lo < b][:1]
    if hi:  # the report after: its points start the data after the gap, at or before its time
        near = [j for j, (a, b) in enumerate(rest) if a < hi <= b + jitter]
        return near[-1:]
    return []


def _nodata(a: int, b: int, agent: str) -> Hole:
    return Hole(a, b, "nodata", f"no data, and no report of {agent} is missing then")


def _placed(a: int, b: int, over: list[Placed], agent: str, jitter: float) -> list[Hole]:
    """A gap the reports of one or more runs fall in (time order): each run gets the part of the gap
    up to halfway between its last report and the next run's first. What lies clearly outside the
    runs' reports (before the first, after the last) is no data: the series had none then."""
    out: list[Hole] = []
    lo, hi = over[0][0], over[-1][1]
    if lo and lo - a > jitter:
        out.append(_nodata(a, lo, agent))
        a = lo
    tail = None
    if hi and b - hi > jitter:
        tail = _nodata(hi, b, agent)
        b = hi
    start = a
    for i, (_, run_hi, run) in enumerate(over):
        if i + 1 < len(over):
            known = [x for x in (run_hi, over[i + 1][0]) if x]
            # halfway between this run's last neighbour and the next run's first; without either,
            # an equal share of what is left
            mid = sum(known) // len(known) if known else start + (b - start) // (len(over) - i)
            end = min(b, max(start, mid))
        else:
            end = b
        if end > start:
            out += _split(start, end, run, agent)
        start = end
    if tail is not None:
        out.append(tail)
    return out


def _unplaced(
    candidates: list[tuple[int, int]], runs: list[list[Piece]], agent: str, reaches_now: bool, jitter: float
) -> list[Hole]:
    """Gaps no placed run explains, and the runs that could not be placed: matched by order, newest
    first, where the chart reaches now; in a chart of the past, labelled with the runs' kind when
    they all share it. A gap within the sender's jitter is only taken by a run, never no data."""
    out: list[Hole] = []
    candidates = sorted(candidates, reverse=True)
    clear = [g for g in candidates if g[1] - g[0] > jitter]
    if len(clear) >= len(runs):  # enough clear outages for the runs: jitter is no candidate
        candidates = clear
    if reaches_now:
        for i, (a, b) in enumerate(candidates):
            if i < len(runs):
                out += _split(a, b, runs[i], agent)
            elif b - a > jitter:
                out.append(_nodata(a, b, agent))
        return out
    kinds = {(p.kind, p.note if p.kind == "lost" else "") for run in runs for p in run}
    for a, b in candidates:
        if b - a <= jitter:
            continue
        if not runs:
            out.append(_nodata(a, b, agent))
        elif len(kinds) == 1:
            kind, note = next(iter(kinds))
            out.append(Hole(a, b, kind, _describe(kind, note, agent, None)))
        else:
            listed = "; ".join(_piece_text(p) for run in runs[:5] for p in run)
            out.append(Hole(a, b, "unknown", f"missing or lost; {agent}'s ledger: {listed}"))
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
