"""Hole classification (lossproof.query.holes) on hand-made ledgers."""

from __future__ import annotations

import itertools
import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof.query import holes
from lossproof.store.base import AgentSummary, Ledger, SpoolState

S = 10_000
NOW = 10_000 * S


def summary(seen: int = NOW) -> AgentSummary:
    return AgentSummary("a", 100, 80, 5, 10, seen, 5, seen)


def times(missing_seqs: set[int], n: int = 100) -> list[int | None]:
    """One point per report every 10 s, report s at s*S; step = 10 s."""
    return [None if s in missing_seqs else s * S for s in range(1, n + 1)]


def test_gaps_and_threshold() -> None:
    found, threshold, jitter = holes.gaps(times({5, 6, 7}), S, S, 100 * S)
    assert found == [(4 * S, 8 * S, False)] and threshold == 1.6 * S
    assert jitter == threshold  # a regular sender: every gap above the threshold shows
    found, _, _ = holes.gaps(times({99, 100}), S, S, 100 * S)
    assert found == [(98 * S, 100 * S, True)]
    assert holes.gaps([None, None], 0, S, S) == ([], 0.0, 0.0)


def test_pairs_gaps_with_seq_holes_newest_first() -> None:
    ledger = Ledger(
        stored=[(1, 9), (13, 19), (26, 100)],
        missing=[(20, 25, 7)],
        lost=[(10, 12, "spool_full")],
    )
    g = holes.gaps(times(set(range(10, 13)) | set(range(20, 26))), S, S, 100 * S)
    got = holes.classify(g, summary(), ledger, NOW, reaches_now=True)
    assert [(h.kind, h.start_ms, h.end_ms) for h in got] == [
        ("lost", 9 * S, 13 * S),
        ("missing", 19 * S, 26 * S),
    ]
    assert "spool_full" in got[0].text


def test_mixed_run_is_split_by_seqs() -> None:
    ledger = Ledger(
        stored=[(1, 9), (20, 100)], missing=[(15, 19, 7)], lost=[(10, 14, "replay_window_expired")]
    )
    g = holes.gaps(times(set(range(10, 20))), S, S, 100 * S)
    got = holes.classify(g, summary(), ledger, NOW, reaches_now=True)
    assert [(h.kind, h.start_ms, h.end_ms) for h in got] == [
        ("lost", 9 * S, 145_000),
        ("missing", 145_000, 20 * S),
    ]


def test_delayed_tail_and_silent_agent() -> None:
    spool = SpoolState("t", "a", 10, 1000, 91 * S, 91, 100, NOW)
    ledger = Ledger(stored=[(1, 90)], missing=[], lost=[], delayed=[(91, 100, 91 * S)], spool=spool)
    g = holes.gaps(times(set(range(91, 101))), S, S, 100 * S)
    [h] = holes.classify(g, summary(), ledger, NOW, reaches_now=True)
    assert (h.kind, h.start_ms, h.end_ms) == ("delayed", 91 * S, 100 * S) and "spool" in h.text
    # nothing pending, not heard from for long: silent
    quiet = Ledger(stored=[(1, 90)], missing=[], lost=[])
    [h] = holes.classify(g, summary(seen=NOW - 3_600_000), quiet, NOW, reaches_now=True)
    assert h.kind == "silent"


def test_no_agent_and_no_missing_report() -> None:
    g = holes.gaps(times({50, 51, 52}), S, S, 100 * S)
    [h] = holes.classify(g, None, None, NOW, reaches_now=True)
    assert h.kind == "nodata"
    complete = Ledger(stored=[(1, 97)], missing=[], lost=[])
    [h] = holes.classify(g, summary(), complete, NOW, reaches_now=True)
    assert h.kind == "nodata" and "no report" in h.text


def test_agent_of() -> None:
    assert holes.agent_of({"host": "web-01"}, {"web-01"}) == "web-01"
    assert holes.agent_of({"agent": "x", "host": "web-01"}, {"x", "web-01"}) == "x"
    assert holes.agent_of({"host": "other"}, {"web-01"}) is None


def test_a_one_shot_sender_after_its_last_point_is_no_data_not_silent() -> None:
    quiet = Ledger(stored=[(1, 90)], missing=[], lost=[])
    g = holes.gaps(times(set(range(91, 101))), S, S, 100 * S)
    once = AgentSummary("a", 90, 90, 0, 0, NOW - 3_600_000)  # no spool state ever: last_seen_ms 0
    [h] = holes.classify(g, once, quiet, NOW, reaches_now=True)
    assert h.kind == "nodata" and "one-shot" in h.text


def jittery(n: int, seed: int = 7) -> list[int]:
    """Report times of a sender every 1-3 s (uneven), in ms."""
    import random

    rnd = random.Random(seed)
    out, t = [], 1_000_000
    for _ in range(n):
        t += rnd.choice((1000, 1000, 1000, 2000, 3000))
        out.append(t)
    return out


def on_grid(points: list[int], start: int, step: int, n: int) -> list[int | None]:
    """The chart's per-step last sample time (what select_last gives), from point times."""
    grid: list[int | None] = [None] * n
    for t in points:
        i = -(-(t - start) // step)  # the first step at or after t
        if 0 <= i < n:
            grid[i] = t
    return grid


def test_holes_are_placed_by_report_times_and_jitter_is_no_hole() -> None:
    # An irregular sender: report s made at made[s-1], one point each at that time. Reports 40-60
    # were lost during a real outage: made[38] (report 39) to made[60] (report 61) has no data.
    made = jittery(120)
    stored = [t for s, t in enumerate(made, 1) if not 40 <= s <= 60]
    start, step = made[0], 1000
    now = made[-1] + 3000  # the newest stretch, 3 s, is within this sender's jitter
    n = (now - start) // step + 1
    ledger = Ledger(stored=[(1, 39), (61, 120)], missing=[], lost=[(40, 60, "spool_full")])
    agent = AgentSummary("a", 120, 99, 0, 21, now, 0, now)
    g = holes.gaps(on_grid(stored, start, step, n), start, step, now)
    # the sender's own spacing (1-3 s) makes gaps above 1.6 x the median, but none is a hole
    assert any(b - a <= g.jitter for a, b, _ in g.found)
    placed = [(made[38], made[60])]
    got = holes.classify(g, agent, ledger, now, True, placed)
    assert [(h.kind, h.start_ms, h.end_ms) for h in got] == [("lost", made[38], made[60])]
    assert "spool_full" in got[0].text
    # without the times (reports stored before they were kept), the old order matching still finds
    # the outage, as the only gap that is more than jitter
    [h] = holes.classify(g, agent, ledger, now, True)
    assert (h.kind, h.start_ms, h.end_ms) == ("lost", made[38], made[60])


def test_a_chart_of_the_past_places_each_run_exactly() -> None:
    ledger = Ledger(
        stored=[(1, 9), (13, 19), (26, 100)], missing=[(20, 25, 7)], lost=[(10, 12, "spool_full")]
    )
    g = holes.gaps(times(set(range(10, 13)) | set(range(20, 26)), n=60), S, S, 60 * S)
    runs = holes.seq_holes(ledger)  # newest first
    placed = [(19 * S, 26 * S), (9 * S, 13 * S)]
    assert [holes.run_span(r) for r in runs] == [(20, 25), (10, 12)]
    got = holes.classify(g, summary(), ledger, NOW, reaches_now=False, placed=placed)
    assert [(h.kind, h.start_ms, h.end_ms) for h in got] == [
        ("lost", 9 * S, 13 * S),
        ("missing", 19 * S, 26 * S),
    ]


def test_a_gap_wider_than_its_runs_reports_is_no_data_outside_them() -> None:
    # the series stopped at report 5 and came back at 40; only reports 20-22 are missing: the agent
    # made the others without this series
    ledger = Ledger(stored=[(1, 19), (23, 100)], missing=[(20, 22, 7)], lost=[])
    g = holes.gaps(times(set(range(6, 40))), S, S, 100 * S)
    got = holes.classify(g, summary(), ledger, NOW, True, [(19 * S, 23 * S)])
    assert [(h.kind, h.start_ms, h.end_ms) for h in got] == [
        ("nodata", 5 * S, 19 * S),
        ("missing", 19 * S, 23 * S),
        ("nodata", 23 * S, 40 * S),
    ]


def test_two_runs_in_one_gap_share_it_halfway_between_them() -> None:
    # reports 10-12 lost and 15-17 missing; 13-14 were stored but without this series
    ledger = Ledger(
        stored=[(1, 9), (13, 14), (18, 100)], missing=[(15, 17, 7)], lost=[(10, 12, "spool_full")]
    )
    g = holes.gaps(times(set(range(10, 18))), S, S, 100 * S)
    placed = [(14 * S, 18 * S), (9 * S, 13 * S)]  # newest run first
    got = holes.classify(g, summary(), ledger, NOW, True, placed)
    assert [(h.kind, h.start_ms, h.end_ms) for h in got] == [
        ("lost", 9 * S, 135_000),
        ("missing", 135_000, 18 * S),
    ]


def test_runs_sharing_one_report_time_are_placed_without_error() -> None:
    # one collection sent as several reports with one time: two runs with the same neighbours' times
    ledger = Ledger(stored=[(1, 11), (13, 13), (15, 100)], missing=[], lost=[(12, 12, "x"), (14, 14, "y")])
    g = holes.gaps(times({12, 13, 14}), S, S, 100 * S)
    got = holes.classify(g, summary(), ledger, NOW, True, [(11 * S, 15 * S), (11 * S, 15 * S)])
    want = [("lost", 11 * S, 13 * S), ("lost", 13 * S, 15 * S)]
    assert [(h.kind, h.start_ms, h.end_ms) for h in got] == want
    assert ["x" in got[0].text, "y" in got[1].text] == [True, True]


def test_a_run_with_one_known_neighbour_takes_only_the_gap_at_that_side() -> None:
    # reports 1-80 were stored before times were kept; 81-85 lost; the report after them has a time
    made = jittery(120)
    stored = [t for s, t in enumerate(made, 1) if not 81 <= s <= 85]
    start, step, now = made[0], 1000, made[-1] + 1000
    g = holes.gaps(on_grid(stored, start, step, (now - start) // step + 1), start, step, now)
    ledger = Ledger(stored=[(1, 80), (86, 120)], missing=[], lost=[(81, 85, "spool_full")])
    agent = AgentSummary("a", 120, 115, 0, 5, now, 0, now)
    got = holes.classify(g, agent, ledger, now, True, [(0, made[85])])
    assert [(h.kind, h.start_ms, h.end_ms) for h in got] == [("lost", made[79], made[85])]
    got = holes.classify(g, agent, ledger, now, True, [(made[79], 0)])
    assert [(h.kind, h.start_ms, h.end_ms) for h in got] == [("lost", made[79], made[85])]


def test_times_that_fit_no_gap_fall_back_to_order_and_a_clock_step_back_is_undone() -> None:
    ledger = Ledger(stored=[(1, 39), (61, 100)], missing=[], lost=[(40, 60, "spool_full")])
    g = holes.gaps(times(set(range(40, 61))), S, S, 100 * S)
    # report times 300 s after the points (a backfill sent now, a relay's backlog): order matching
    [h] = holes.classify(g, summary(), ledger, NOW, True, [(39 * S + 300_000, 61 * S + 300_000)])
    assert (h.kind, h.start_ms, h.end_ms) == ("lost", 39 * S, 61 * S)
    [h] = holes.classify(g, summary(), ledger, NOW, True, [(61 * S, 39 * S)])  # before > after
    assert (h.kind, h.start_ms, h.end_ms) == ("lost", 39 * S, 61 * S)


def test_frequent_outages_are_not_taken_for_jitter() -> None:
    # every 10 s, with a 40 s outage every sixth spacing: more than a tenth of the spacings
    pts, t = [], 0
    for i in range(1, 120):
        t += 40_000 if i % 6 == 0 else 10_000
        pts.append(t)
    start, step = 0, 1000
    g = holes.gaps(on_grid(pts, start, step, pts[-1] // step + 1), start, step, pts[-1])
    got = holes.classify(g, None, None, NOW, True)
    assert len(got) == 19 and all(h.end_ms - h.start_ms == 40_000 for h in got)


def _reference_gaps(times: list[int | None], grid_start: int, step: int, until_ms: int) -> holes.Gaps:
    """The first version of :func:`holes.gaps`, in plain Python with ``statistics``."""
    present = [t for t in times if t is not None]
    if not present:
        return holes.Gaps([], 0.0, 0.0)
    deltas = [b - a for a, b in itertools.pairwise(present) if b > a]
    usual = max(statistics.median(deltas) if deltas else step, step)
    threshold = 1.6 * usual
    jitter = threshold
    if len(deltas) >= holes.JITTER_MIN_DELTAS:
        jitter = min(max(threshold, 1.25 * statistics.quantiles(deltas, n=10)[-1]), 3.0 * usual)
    out = [(a, b, False) for a, b in itertools.pairwise(present) if b - a > threshold]
    end = min(until_ms, grid_start + (len(times) - 1) * step)
    if end - present[-1] > threshold:
        out.append((present[-1], end, True))
    return holes.Gaps(out, threshold, jitter)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.integers(0, 40)), max_size=80),
    st.integers(1, 7),
    st.integers(0, 400),
)
def test_gaps_from_arrays_as_the_plain_python_version(
    spacing: list[int | None], step: int, until: int
) -> None:
    """``gaps`` (numpy, median and 90th percentile without ``statistics``) gives exactly what the
    plain version gave, on per-step times as a chart has them: non-decreasing, with holes, repeats
    (a point older than a step) and irregular spacing."""
    t, times = 1000, []
    for d in spacing:
        if d is not None:
            t += d
        times.append(None if d is None else t)
    assert holes.gaps(times, 1000, step, 1000 + until * step) == _reference_gaps(
        times, 1000, step, 1000 + until * step
    )
