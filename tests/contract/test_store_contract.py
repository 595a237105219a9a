"""The store contract (see ``lossproof/store/base.py``), run against every backend.

Everything backend-specific is behind ``store_backends``; these tests only use the ``Store``
interface, opened through the ``store_factory`` fixture.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lossproof.ingest.series_limit import _stored as stored_series
from lossproof.ingest.series_limit import series_key
from lossproof.log.base import LogGap
from lossproof.store.base import (
    CompactResult,
    DeadLetter,
    Incarnation,
    Ledger,
    LostRange,
    MetricMetadata,
    Point,
    ReportWrite,
    SeriesSamples,
    SpoolState,
    Store,
    WriteBatch,
    WriteResult,
    labels_text,
    report_digest,
)
from lptest.store_backends import BACKENDS, StoreBackend

T0 = 1_700_000_000_000
ALL = (0, 2**62)
StoreFactory = Callable[..., Store]


@pytest.fixture(params=sorted(BACKENDS))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """``store_factory(readonly=False)`` opens a handle on this test's (initially empty) store."""
    backend: StoreBackend = BACKENDS[request.param](tmp_path)
    yield backend.open
    backend.close_all()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    return store_factory()


def pt(t: int, v: float = 1.0, metric: str = "cpu", **labels: str) -> Point:
    return Point(metric, labels or {"host": "h1"}, t, v)


def report(seq: int, n: int = 3, agent: str = "a1", tenant: str = "t1", metric: str = "cpu") -> ReportWrite:
    """A report whose points are unique to (agent, seq): t = T0 + seq * 1000 + i."""
    return ReportWrite(
        tenant, agent, seq, [pt(T0 + seq * 1000 + i, float(seq), metric, agent=agent) for i in range(n)]
    )


def count_points(store: Store, tenant: str = "t1", metric: str = "cpu", **labels: str) -> int:
    return sum(len(s.points) for s in store.query(tenant, metric, *ALL, labels))


def batch(*reports: ReportWrite, now: int = 1000, **kw: object) -> WriteBatch:
    return WriteBatch(reports=list(reports), now_ms=now, **kw)  # type: ignore[arg-type]


# --- idempotency ---------------------------------------------------------------------------------


def test_same_batch_three_times_equals_once(store: Store) -> None:
    b = batch(
        report(1),
        report(3, agent="a2"),
        report(4),
        samples=[("t1", pt(T0, 5.0, "temp", room="r1")), ("t2", pt(T0, 6.0, "temp", room="r1"))],
        lost=[LostRange("t1", "a1", 7, 8, "spool full")],
        dead_letters=[DeadLetter(0, 17, "t1", "undecodable", b"\xff")],
        gaps=[LogGap(0, 3, 9, "segment missing", 500)],
    )
    first = store.write_batch(b)
    assert first == WriteResult(points_written=11, reports_stored=3, reports_duplicate=0)
    snapshot = (
        store.query("t1", "cpu", *ALL, {}),
        store.query("t1", "temp", *ALL, {}),
        store.query("t2", "temp", *ALL, {}),
        store.ledger("t1", "a1"),
        store.ledger("t1", "a2"),
        store.agents("t1"),
        store.dead_letter_count(),
        store.log_gaps(),
    )
    for _ in range(2):
        again = store.write_batch(b)
        # the samples, replayed, are counted skipped (a duplicate report's points are not offered)
        assert again == WriteResult(points_written=0, reports_stored=0, reports_duplicate=3, points_skipped=2)
        assert (
            store.query("t1", "cpu", *ALL, {}),
            store.query("t1", "temp", *ALL, {}),
            store.query("t2", "temp", *ALL, {}),
            store.ledger("t1", "a1"),
            store.ledger("t1", "a2"),
            store.agents("t1"),
            store.dead_letter_count(),
            store.log_gaps(),
        ) == snapshot
    assert count_points(store) == 9
    assert store.dead_letter_count() == 1
    assert store.log_gaps() == [LogGap(0, 3, 9, "segment missing", 500)]


def test_resend_with_same_content_is_a_duplicate(store: Store) -> None:
    store.write_batch(batch(report(1, n=2)))
    res = store.write_batch(batch(report(1, n=2)))
    assert res == WriteResult(points_written=0, reports_stored=0, reports_duplicate=1)
    assert store.conflicts("t1") == []


def test_reused_seq_with_other_content_is_a_conflict_kept_whole(store: Store) -> None:
    """#14: a seq already stored with different content was counted a duplicate and dropped."""
    store.write_batch(batch(report(1, n=2)))
    different = ReportWrite("t1", "a1", 1, [pt(T0 + 1000, 99.0, agent="a1"), pt(T0 + 5, 1.0, agent="a1")])
    res = store.write_batch(batch(different, now=2000))
    assert res == WriteResult(points_written=0, reports_stored=0, reports_duplicate=0, reports_conflict=1)
    [series] = store.query("t1", "cpu", *ALL, {})
    assert series.points == [(T0 + 1000, 1.0), (T0 + 1001, 1.0)]  # the seq's stored report is untouched
    [c] = store.conflicts("t1")
    assert (c.agent, c.incarnation, c.seq, c.points, c.detected_ms, c.applied_ms) == ("a1", "", 1, 2, 2000, 0)
    assert c.digest == report_digest(different.points) != report_digest(report(1, n=2).points)
    ledger = store.ledger("t1", "a1")
    assert ledger is not None and ledger.conflicts == [(1, 1)] and ledger.stored == [(1, 1)]
    [summary] = store.agents("t1")
    assert summary.conflict_reports == 1
    # the same conflicting report read again (a worker re-reading its batch) is kept once
    store.write_batch(batch(different, now=3000))
    assert len(store.conflicts("t1")) == 1 and store.agents("t1")[0].conflict_reports == 1
    assert store.conflicts("t2") == [] and store.conflicts("t1", "a2") == []
    # an operator applies it: its points become samples, the first write per (series, t) winning
    assert store.apply_conflict("t1", c.id, 4000) == 1
    [series] = store.query("t1", "cpu", *ALL, {})
    assert series.points == [(T0 + 5, 1.0), (T0 + 1000, 1.0), (T0 + 1001, 1.0)]
    assert store.conflicts("t1")[0].applied_ms == 4000
    with pytest.raises(KeyError):
        store.apply_conflict("t2", c.id, 4000)  # another tenant's conflict is not there


def test_same_seq_twice_in_one_batch_with_other_content_is_a_conflict(store: Store) -> None:
    res = store.write_batch(batch(report(1, n=2), ReportWrite("t1", "a1", 1, [pt(T0 + 7, agent="a1")])))
    assert res == WriteResult(points_written=2, reports_stored=1, reports_duplicate=0, reports_conflict=1)
    assert count_points(store) == 2
    assert [c.seq for c in store.conflicts("t1")] == [1]


def test_same_seq_twice_in_one_batch_stored_once(store: Store) -> None:
    res = store.write_batch(batch(report(1, n=2), report(1, n=2)))
    assert res == WriteResult(points_written=2, reports_stored=1, reports_duplicate=1)
    assert count_points(store) == 2


def test_stored_digests_only_of_stored_seqs(store: Store) -> None:
    store.write_batch(batch(report(1), report(2), report(5)))
    got = store.stored_digests("t1", "a1", "", [(2, 6), (9, 9)])
    assert got == {2: report_digest(report(2).points), 5: report_digest(report(5).points)}
    assert store.stored_digests("t1", "a1", "other", [(1, 9)]) == {}
    assert store.stored_digests("t2", "a1", "", [(1, 9)]) == {}


def test_max_stored_seq_is_per_incarnation(store: Store) -> None:
    assert store.max_stored_seq("t1", "a1", "") == 0
    store.write_batch(batch(report(1), report(7), report(3)))
    assert store.max_stored_seq("t1", "a1", "") == 7
    assert store.max_stored_seq("t1", "a1", "other") == 0
    assert store.max_stored_seq("t2", "a1", "") == 0


def test_report_times_around_runs_of_seqs(store: Store) -> None:
    """Where in time a run of unstored seqs lies: the times of the stored reports around it."""
    timed = [ReportWrite("t1", "a1", s, report(s).points, time_ms=T0 + s * 1000) for s in (1, 2, 6, 9)]
    store.write_batch(batch(*timed, ReportWrite("t1", "a1", 12, report(12).points)))
    got = store.report_times_around("t1", "a1", "", [(3, 5), (7, 8), (10, 11), (13, 20)])
    assert got == [(T0 + 2000, T0 + 6000), (T0 + 6000, T0 + 9000), (T0 + 9000, 0), (0, 0)]
    assert store.report_times_around("t1", "a1", "", []) == []
    assert store.report_times_around("t1", "a1", "other", [(3, 5)]) == [(0, 0)]
    assert store.report_times_around("t2", "a1", "", [(3, 5)]) == [(0, 0)]


# --- incarnations --------------------------------------------------------------------------------


def inc_report(seq: int, incarnation: str, agent: str = "a1", t: int = 0) -> ReportWrite:
    points = [pt(T0 + t + seq * 1000, float(seq), agent=agent, inc=incarnation)]
    return ReportWrite("t1", agent, seq, points, incarnation)


def test_incarnations_have_their_own_seq_space(store: Store) -> None:
    """#14: a wiped spool (or a second host with the same id) starts at seq 1 again."""
    r1 = store.write_batch(batch(inc_report(1, "i1"), inc_report(2, "i1"), now=1000))
    r2 = store.write_batch(batch(inc_report(1, "i2"), inc_report(2, "i2"), now=2000))
    assert r1.reports_stored == r2.reports_stored == 2 and r2.reports_conflict == 0
    assert count_points(store) == 4
    summaries = store.agents("t1")
    assert [(a.agent, a.incarnation, a.stored_reports, a.first_seen_ms) for a in summaries] == [
        ("a1", "i1", 2, 1000),
        ("a1", "i2", 2, 2000),
    ]
    latest = store.ledger("t1", "a1")
    assert latest is not None and latest.incarnation == "i2" and latest.stored == [(1, 2)]
    first = store.ledger("t1", "a1", "i1")
    assert first is not None and first.incarnation == "i1" and first.stored == [(1, 2)]
    assert store.ledger("t1", "a1", "nope") is None


def test_new_incarnation_turns_the_old_ones_delayed_seqs_into_spool_reset(store: Store) -> None:
    spool = SpoolState("t1", "a1", 5, 500, 900, 3, 7, 1000, incarnation="i1")
    store.write_batch(batch(inc_report(1, "i1"), inc_report(2, "i1"), spool=[spool], now=1000))
    before = store.ledger("t1", "a1", "i1")
    assert before is not None and [(a, b) for a, b, _ in before.delayed] == [(3, 7)]
    store.write_batch(batch(inc_report(1, "i2"), now=2000))
    after = store.ledger("t1", "a1", "i1")
    assert after is not None
    assert after.delayed == [] and after.missing == []
    assert after.lost == [(3, 7, "spool_reset")]
    summary = {a.incarnation: a for a in store.agents("t1")}["i1"]
    assert (summary.lost_reports, summary.delayed_reports) == (5, 0)
    # the old incarnation was alive after all (two hosts, one id): what it delivers is stored
    store.write_batch(batch(inc_report(4, "i1"), now=3000))
    again = store.ledger("t1", "a1", "i1")
    assert again is not None and again.stored == [(1, 2), (4, 4)]
    assert again.lost == [(3, 3, "spool_reset"), (5, 7, "spool_reset")]


def test_incarnation_first_seq_bounds_its_holes(store: Store) -> None:
    b = batch(inc_report(101, "i2"), inc_report(103, "i2"), incarnations=[Incarnation("t1", "a1", "i2", 101)])
    store.write_batch(b)
    ledger = store.ledger("t1", "a1", "i2")
    assert ledger is not None and ledger.first_seq == 101
    assert [(a, b) for a, b, _ in ledger.missing] == [(102, 102)]
    # a later request that names another first seq does not move it
    store.write_batch(
        batch(
            incarnations=[Incarnation("t1", "a1", "i2", 1)],
            spool=[SpoolState("t1", "a1", 0, 0, 0, 0, 103, 5, incarnation="i2")],
        )
    )
    ledger = store.ledger("t1", "a1", "i2")
    assert ledger is not None and [(a, b) for a, b, _ in ledger.missing] == [(102, 102)]
    assert store.replay_wanted("t1", "a1", 10**15, "i2") == [(102, 102)]
    assert store.replay_wanted("t1", "a1", 10**15) == []


def test_same_seq_different_agents_or_tenants_are_different_reports(store: Store) -> None:
    res = store.write_batch(batch(report(1), report(1, agent="a2"), report(1, tenant="t2")))
    assert res.reports_stored == 3
    assert count_points(store) == 6 and count_points(store, "t2") == 3


def test_samples_first_write_wins(store: Store) -> None:
    res = store.write_batch(WriteBatch(samples=[("t1", pt(T0, 1.0, a="1", b="2"))], now_ms=1))
    assert res.points_written == 1
    # same series (labels in another order), same t, another value: ignored
    res = store.write_batch(
        WriteBatch(
            samples=[
                ("t1", Point("cpu", {"b": "2", "a": "1"}, T0, 2.0)),
                ("t1", pt(T0 + 1, 3.0, a="1", b="2")),
                ("t1", pt(T0 + 1, 4.0, a="1", b="2")),  # first in the batch wins too
            ],
            now_ms=2,
        )
    )
    assert res.points_written == 1
    assert res.points_skipped == 2  # counted, not dropped silently
    [series] = store.query("t1", "cpu", *ALL, {})
    assert series.labels == {"a": "1", "b": "2"}
    assert series.points == [(T0, 1.0), (T0 + 1, 3.0)]
    assert store.agents("t1") == []  # samples have no agent ledger


def test_point_of_a_new_report_colliding_with_a_stored_point_keeps_the_first(store: Store) -> None:
    store.write_batch(WriteBatch(samples=[("t1", pt(T0 + 2000, 7.0, agent="a1"))], now_ms=1))
    res = store.write_batch(batch(report(2, n=2)))
    assert res == WriteResult(points_written=1, reports_stored=1, reports_duplicate=0, points_skipped=1)
    [series] = store.query("t1", "cpu", *ALL, {})
    assert series.points == [(T0 + 2000, 7.0), (T0 + 2001, 2.0)]


# --- ledger --------------------------------------------------------------------------------------


def test_ledger_unknown_agent_is_none(store: Store) -> None:
    assert store.ledger("t1", "nobody") is None
    assert store.replay_wanted("t1", "nobody", 10**15) == []


def test_ledger_holes_from_the_start_fill_in_and_keep_since(store: Store) -> None:
    store.write_batch(batch(report(3), report(4), now=100))
    assert store.ledger("t1", "a1") == Ledger(stored=[(3, 4)], missing=[(1, 2, 100)], lost=[])
    store.write_batch(batch(report(8), now=200))
    assert store.ledger("t1", "a1") == Ledger(
        stored=[(3, 4), (8, 8)], missing=[(1, 2, 100), (5, 7, 200)], lost=[]
    )
    store.write_batch(batch(report(1), report(6), now=300))
    assert store.ledger("t1", "a1") == Ledger(
        stored=[(1, 1), (3, 4), (6, 6), (8, 8)], missing=[(2, 2, 100), (5, 5, 200), (7, 7, 200)], lost=[]
    )
    store.write_batch(batch(report(2), report(5), report(7), now=400))
    assert store.ledger("t1", "a1") == Ledger(stored=[(1, 8)], missing=[], lost=[])
    [a] = store.agents("t1")
    assert (a.agent, a.max_seq, a.stored_reports, a.missing_reports, a.lost_reports, a.last_stored_ms) == (
        "a1",
        8,
        8,
        0,
        0,
        400,
    )


def test_ledger_lost_ranges(store: Store) -> None:
    store.write_batch(batch(report(1), report(5), now=100))
    store.write_batch(batch(lost=[LostRange("t1", "a1", 2, 3, "spool over limit")], now=200))
    led = store.ledger("t1", "a1")
    assert led == Ledger(stored=[(1, 1), (5, 5)], missing=[(4, 4, 100)], lost=[(2, 3, "spool over limit")])
    # a lost range overlapping stored seqs only marks the rest; beyond the top it adds no holes
    store.write_batch(batch(lost=[LostRange("t1", "a1", 5, 9, "disk")], now=300))
    led = store.ledger("t1", "a1")
    assert led is not None
    assert led.lost == [(2, 3, "spool over limit"), (6, 9, "disk")]
    assert led.missing == [(4, 4, 100)]
    # an already lost seq keeps its first reason
    store.write_batch(batch(lost=[LostRange("t1", "a1", 3, 3, "other")], now=400))
    assert store.ledger("t1", "a1") == led
    # the report itself arriving after all moves it from lost to stored
    res = store.write_batch(batch(report(3), report(7), now=500))
    assert res.reports_stored == 2
    assert store.ledger("t1", "a1") == Ledger(
        stored=[(1, 1), (3, 3), (5, 5), (7, 7)],
        missing=[(4, 4, 100)],
        lost=[(2, 2, "spool over limit"), (6, 6, "disk"), (8, 9, "disk")],
    )
    [a] = store.agents("t1")
    assert (a.max_seq, a.stored_reports, a.missing_reports, a.lost_reports, a.last_stored_ms) == (
        9,
        4,
        1,
        4,
        500,
    )


def test_lost_only_agent_is_known(store: Store) -> None:
    store.write_batch(batch(lost=[LostRange("t1", "a9", 1, 4, "gone")], now=5))
    assert store.ledger("t1", "a9") == Ledger(stored=[], missing=[], lost=[(1, 4, "gone")])
    [a] = store.agents("t1")
    assert (a.agent, a.max_seq, a.lost_reports, a.last_stored_ms) == ("a9", 4, 4, 0)


def test_lost_and_stored_in_the_same_batch_stored_wins(store: Store) -> None:
    store.write_batch(batch(report(2), lost=[LostRange("t1", "a1", 1, 3, "x")], now=5))
    assert store.ledger("t1", "a1") == Ledger(stored=[(2, 2)], missing=[], lost=[(1, 1, "x"), (3, 3, "x")])


def test_replay_wanted_respects_the_time_threshold(store: Store) -> None:
    store.write_batch(batch(report(3), now=1000))  # hole 1-2 seen at 1000
    store.write_batch(batch(report(6), now=5000))  # hole 4-5 seen at 5000
    assert store.replay_wanted("t1", "a1", 1000) == []
    assert store.replay_wanted("t1", "a1", 1001) == [(1, 2)]
    assert store.replay_wanted("t1", "a1", 5001) == [(1, 2), (4, 5)]
    store.write_batch(batch(report(1), now=6000))
    assert store.replay_wanted("t1", "a1", 10_000) == [(2, 2), (4, 5)]
    store.write_batch(batch(lost=[LostRange("t1", "a1", 4, 5, "gone")], now=7000))
    assert store.replay_wanted("t1", "a1", 10_000) == [(2, 2)]


def test_replay_wanted_merges_adjacent_holes_seen_at_different_times(store: Store) -> None:
    store.write_batch(batch(report(3), now=1000))
    store.write_batch(batch(report(2), lost=[LostRange("t1", "a1", 3, 3, "x")], now=1500))
    store.write_batch(batch(report(6), now=2000))
    # missing: 1 (since 1000), 4-5 (since 2000)
    assert store.replay_wanted("t1", "a1", 3000) == [(1, 1), (4, 5)]


# --- tenancy, queries ----------------------------------------------------------------------------


def test_tenant_isolation(store: Store) -> None:
    store.write_batch(
        batch(report(2, agent="shared", tenant="t1"), report(5, agent="shared", tenant="t2"), now=10)
    )
    assert [a.max_seq for a in store.agents("t1")] == [2]
    assert [a.max_seq for a in store.agents("t2")] == [5]
    assert store.agents("t3") == []
    assert store.ledger("t1", "shared") == Ledger(stored=[(2, 2)], missing=[(1, 1, 10)], lost=[])
    assert store.ledger("t2", "shared") == Ledger(stored=[(5, 5)], missing=[(1, 4, 10)], lost=[])
    assert store.ledger("t3", "shared") is None
    assert store.replay_wanted("t1", "shared", 11) == [(1, 1)]
    assert store.replay_wanted("t3", "shared", 11) == []
    [s1] = store.query("t1", "cpu", *ALL, {})
    [s2] = store.query("t2", "cpu", *ALL, {})
    assert {t for t, _ in s1.points} == {T0 + 2000 + i for i in range(3)}
    assert {t for t, _ in s2.points} == {T0 + 5000 + i for i in range(3)}
    assert store.query("t3", "cpu", *ALL, {}) == []


def test_label_filter_is_an_equality_subset(store: Store) -> None:
    store.write_batch(
        WriteBatch(
            samples=[
                ("t1", pt(T0, 1.0, host="a", dc="x")),
                ("t1", pt(T0, 2.0, host="b", dc="x")),
                ("t1", pt(T0, 3.0, host="c", dc="y")),
                ("t1", pt(T0, 4.0, metric="mem", host="a", dc="x")),
            ],
            now_ms=1,
        )
    )

    def hosts(labels: dict[str, str]) -> list[str]:
        return sorted(s.labels["host"] for s in store.query("t1", "cpu", *ALL, labels))

    assert hosts({}) == ["a", "b", "c"]
    assert hosts({"dc": "x"}) == ["a", "b"]
    assert hosts({"dc": "x", "host": "b"}) == ["b"]
    assert hosts({"dc": "z"}) == []
    assert hosts({"nope": ""}) == []
    [s] = store.query("t1", "cpu", *ALL, {"host": "c"})
    assert (s.metric, s.labels, s.points) == ("cpu", {"host": "c", "dc": "y"}, [(T0, 3.0)])


def test_time_range_bounds_inclusive_and_sorted(store: Store) -> None:
    ts = [T0 + 200_000, T0, T0 + 1, T0 + 99_999, T0 + 100_000, T0 - 1, T0 + 3_600_000]
    store.write_batch(WriteBatch(samples=[("t1", pt(t, float(t - T0))) for t in ts], now_ms=1))

    def times(a: int, b: int) -> list[int]:
        out = store.query("t1", "cpu", a, b, {})
        return [t for s in out for t, _ in s.points]

    assert times(T0, T0 + 100_000) == [T0, T0 + 1, T0 + 99_999, T0 + 100_000]
    assert times(T0 + 1, T0 + 1) == [T0 + 1]
    assert times(T0 + 2, T0 + 99_998) == []
    assert times(*ALL) == sorted(ts)
    assert times(T0 + 10, T0) == []
    assert store.query("t1", "cpu", T0 + 2, T0 + 99_998, {}) == []  # no empty series


def test_special_values_round_trip(store: Store) -> None:
    vals = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324]
    store.write_batch(WriteBatch(samples=[("t1", pt(T0 + i, v)) for i, v in enumerate(vals)], now_ms=1))
    [s] = store.query("t1", "cpu", *ALL, {})
    got = [v for _, v in s.points]
    assert math.isnan(got[0])
    assert got[1:] == vals[1:]


def test_empty_batch(store: Store) -> None:
    assert store.write_batch(WriteBatch(now_ms=1)) == WriteResult(0, 0, 0)
    assert store.agents("t1") == [] and store.dead_letter_count() == 0 and store.log_gaps() == []


# --- dead letters, gaps --------------------------------------------------------------------------


def test_dead_letters_and_gaps_recorded_idempotently(store: Store) -> None:
    store.write_batch(
        WriteBatch(
            dead_letters=[
                DeadLetter(0, 5, "t1", "bad zstd frame", b"\x00" * 10),
                DeadLetter(1, 5, "", "no tenant", b""),
            ],
            gaps=[LogGap(1, 10, 19, "segment 3 missing", 77), LogGap(0, 0, 4, "truncated", 78)],
            now_ms=9,
        )
    )
    store.write_batch(
        WriteBatch(
            dead_letters=[
                DeadLetter(0, 5, "t1", "bad zstd frame", b"\x00" * 10),
                DeadLetter(0, 6, "t1", "x", b"1"),
            ],
            gaps=[LogGap(1, 10, 19, "segment 3 missing", 80), LogGap(1, 20, 29, "later", 81)],
            now_ms=10,
        )
    )
    assert store.dead_letter_count() == 3
    assert store.log_gaps() == [
        LogGap(0, 0, 4, "truncated", 78),
        LogGap(1, 10, 19, "segment 3 missing", 77),
        LogGap(1, 20, 29, "later", 81),
    ]


# --- atomicity -----------------------------------------------------------------------------------


def test_failing_batch_leaves_nothing_and_store_stays_usable(store: Store) -> None:
    store.write_batch(batch(report(1), now=10))
    before = (store.query("t1", "cpu", *ALL, {}), store.ledger("t1", "a1"), store.agents("t1"))
    bad = ReportWrite("t1", "a1", 9, [pt(T0 + 9000, 1.0, agent="a1"), pt(T0 + 9001, "oops", agent="a1")])  # type: ignore[arg-type]
    failing = batch(
        report(2),  # points that would be inserted before the bad one
        ReportWrite("t1", "new-agent", 1, [pt(T0, 1.0, metric="fresh", k="v")]),  # a brand-new series
        bad,
        samples=[("t1", pt(T0 + 50, 1.0, metric="fresh2"))],
        lost=[LostRange("t1", "a1", 3, 4, "x")],
        dead_letters=[DeadLetter(0, 1, "t1", "r", b"p")],
        gaps=[LogGap(0, 2, 3, "g", 1)],
        now=20,
    )
    with pytest.raises(Exception):  # noqa: B017 - any error the backend raises for a bad value
        store.write_batch(failing)
    assert (store.query("t1", "cpu", *ALL, {}), store.ledger("t1", "a1"), store.agents("t1")) == before
    assert store.ledger("t1", "new-agent") is None
    assert store.query("t1", "fresh", *ALL, {}) == [] and store.query("t1", "fresh2", *ALL, {}) == []
    assert store.dead_letter_count() == 0 and store.log_gaps() == []
    # the same batch without the bad report goes through, including the series created (and
    # rolled back) by the failed attempt
    failing.reports.remove(bad)
    res = store.write_batch(failing)
    assert res == WriteResult(points_written=5, reports_stored=2, reports_duplicate=0)
    [fresh] = store.query("t1", "fresh", *ALL, {})
    assert fresh.labels == {"k": "v"} and fresh.points == [(T0, 1.0)]
    assert count_points(store, "t1", "fresh2") == 1
    assert store.dead_letter_count() == 1 and len(store.log_gaps()) == 1


# --- metric metadata -----------------------------------------------------------------------------


def md(
    metric: str, type_: str = "counter", help_: str = "", unit: str = "", tenant: str = "t1"
) -> MetricMetadata:
    return MetricMetadata(tenant, metric, type_, help_, unit)


def test_metadata_last_write_wins_per_tenant_and_metric(store: Store) -> None:
    assert store.metadata("t1") == []
    first = [md("reqs_total", help_="Requests."), md("temp", "gauge", "Temperature.", "celsius")]
    store.write_batch(batch(metadata=first, now=1))
    store.write_batch(batch(metadata=first, now=2))  # a replay changes nothing
    assert store.metadata("t1") == sorted(first, key=lambda m: m.metric)
    # a later batch replaces; inside one batch the later entry wins
    store.write_batch(
        batch(
            metadata=[
                md("temp", "gauge", "Old.", "kelvin"),
                md("temp", "gauge", "Room temperature.", "celsius"),
                md("other", "unknown", "Other."),
            ],
            now=3,
        )
    )
    assert store.metadata("t1") == [
        md("other", "unknown", "Other."),
        md("reqs_total", help_="Requests."),
        md("temp", "gauge", "Room temperature.", "celsius"),
    ]
    assert store.metadata("t1", "temp") == [md("temp", "gauge", "Room temperature.", "celsius")]
    assert store.metadata("t1", "nope") == []
    assert [m.metric for m in store.metadata("t1", limit=2)] == ["other", "reqs_total"]
    assert store.metadata("t1", limit=0) == []


def test_metadata_tenant_isolation_and_atomic_with_the_batch(store: Store) -> None:
    store.write_batch(
        batch(
            report(1),
            metadata=[md("cpu", "gauge", "CPU of t1."), md("cpu", "counter", "CPU of t2.", tenant="t2")],
        )
    )
    assert store.metadata("t1") == [md("cpu", "gauge", "CPU of t1.")]
    assert store.metadata("t2") == [md("cpu", "counter", "CPU of t2.", tenant="t2")]
    assert store.metadata("t3") == [] and store.metadata("t2", "mem") == []
    # metadata of a batch that fails is not written either
    bad = ReportWrite("t1", "a1", 9, [pt(T0 + 9000, "oops", agent="a1")])  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017
        store.write_batch(batch(bad, metadata=[md("cpu", "gauge", "Changed."), md("new")], now=2))
    assert store.metadata("t1") == [md("cpu", "gauge", "CPU of t1.")]


# --- readers -------------------------------------------------------------------------------------


def test_readonly_handle_sees_committed_writes(store_factory: StoreFactory) -> None:
    writer = store_factory()
    reader = store_factory(readonly=True)
    assert reader.agents("t1") == []
    writer.write_batch(batch(report(2), now=10))
    assert reader.ledger("t1", "a1") == Ledger(stored=[(2, 2)], missing=[(1, 1, 10)], lost=[])
    assert count_points(reader) == 3
    assert reader.replay_wanted("t1", "a1", 11) == [(1, 1)]
    writer.write_batch(batch(metadata=[md("cpu", "gauge", "CPU.")], now=11))
    assert reader.metadata("t1") == [md("cpu", "gauge", "CPU.")]
    with pytest.raises(Exception):  # noqa: B017
        reader.write_batch(batch(report(3)))
    assert count_points(writer) == 3


# --- compaction ----------------------------------------------------------------------------------

WINDOW = 2 * 3600 * 1000
STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]  # Prometheus' staleness marker


def _snapshot(store: Store) -> list[tuple[str, dict[str, str], list[tuple[int, int]]]]:
    """Every series of t1 with its points, values as bits (NaN payloads compared exactly)."""
    return [
        (s.metric, s.labels, [(t, struct.unpack("<Q", struct.pack("<d", v))[0]) for t, v in s.points])
        for s in store.select("t1", [], *ALL)
    ]


def _compact_all(store: Store, now_ms: int) -> CompactResult:
    """Compact until there is nothing left, then again a day later (whatever waits for time has
    come), adding up what was done."""
    total = [0] * 6
    for now in (now_ms, now_ms + 12 * WINDOW):
        for _ in range(1000):
            got = store.compact(now_ms=now)
            for i, x in enumerate(
                (got.series, got.chunks_in, got.chunks_out, got.bytes_in, got.bytes_out, got.points)
            ):
                total[i] += x
            if not got.more:
                break
        else:
            raise AssertionError("compaction never finished")
    return CompactResult(*total)


def test_compaction_changes_nothing_a_query_sees(store: Store) -> None:
    """#15: many small chunks (one a batch) over three windows, values of every kind, points
    written twice; packed, a query sees the same points, bit for bit, and writes still dedupe."""
    base = (T0 // WINDOW) * WINDOW
    for i in range(30):
        t = base + i * 17 * 60_000  # 30 batches over ~8.5 h: windows closed and open
        vals = [float(i), i + 0.1, STALE, math.inf, -0.0, float(2**60)]
        samples = [("t1", pt(t + j, v, "m", host=f"h{j}")) for j, v in enumerate(vals)]
        samples.append(("t1", pt(t, 99.0, "m", host="h0")))  # same series and t: first wins
        store.write_batch(WriteBatch(samples=samples, now_ms=i))
    before = _snapshot(store)
    done = _compact_all(store, base + 6 * WINDOW)
    assert done.points >= 6 * 30 and done.bytes_out < done.bytes_in
    assert _snapshot(store) == before
    assert store.compact(now_ms=base + 100 * WINDOW).series == 0  # all packed already
    again = [("t1", pt(base + i * 17 * 60_000, 5.0, "m", host="h0")) for i in range(30)]
    res = store.write_batch(WriteBatch(samples=[*again, ("t1", pt(base + 1, 5.0, "m", host="h0"))]))
    assert res.points_written == 1
    assert _snapshot(store)[0][2][1] == (base + 1, struct.unpack("<Q", struct.pack("<d", 5.0))[0])


def test_series_counts_per_tenant(store: Store) -> None:
    assert store.series_counts() == {}
    store.write_batch(batch(report(1), report(2, agent="a2"), report(1, tenant="t2")))
    store.write_batch(
        WriteBatch(samples=[("t2", pt(T0, 1.0, "m", k="v")), ("t2", pt(T0 + 1, 1.0, "m", k="v"))])
    )
    assert store.series_counts() == {"t1": 2, "t2": 2}


def test_series_after_lists_new_series_by_id(store: Store) -> None:
    """What the ingest series limit keeps up with: every series once, in id order, from any id on,
    with its labels in the canonical text (so a request's series can be told new or known)."""
    assert store.series_after("t1", 0, 10) == []
    store.write_batch(batch(report(1), report(1, tenant="t2")))
    store.write_batch(WriteBatch(samples=[("t1", pt(T0, 1.0, "m", z="1", a="2")), ("t1", pt(T0 + 1, 1.0))]))
    store.write_batch(WriteBatch(series=[("t1", SeriesSamples("s", {"k": "v"}, [T0], [1.0]))]))
    everything = store.series_after("t1", 0, 100)
    ids = [i for i, _, _ in everything]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert sorted((m, lab) for _, m, lab in everything) == sorted(
        [
            ("cpu", labels_text({"agent": "a1"})),
            ("cpu", labels_text({"host": "h1"})),
            ("m", labels_text({"a": "2", "z": "1"})),
            ("s", labels_text({"k": "v"})),
        ]
    )
    assert labels_text({"z": "1", "a": "2"}) == '{"a":"2","z":"1"}'
    assert store.series_after("t1", ids[0], 1) == everything[1:2]
    assert store.series_after("t1", ids[-1], 100) == []
    assert [m for _, m, _ in store.series_after("t2", 0, 100)] == ["cpu"]


def test_first_write_wins_across_two_writers(store_factory: StoreFactory) -> None:
    """#15: the writer's knowledge of what is stored (the newest t per series) must not go stale
    when another writer (another worker process) stores points of the same series."""
    a, b = store_factory(), store_factory()
    assert a.write_batch(WriteBatch(samples=[("t1", pt(T0, 1.0))])).points_written == 1
    assert b.write_batch(WriteBatch(samples=[("t1", pt(T0 + 10, 2.0))])).points_written == 1
    # a saw T0 as the newest; b has stored T0 + 10 since: a must not write it again
    assert (
        a.write_batch(WriteBatch(samples=[("t1", pt(T0 + 10, 3.0)), ("t1", pt(T0 + 20, 4.0))])).points_written
        == 1
    )
    [series] = a.query("t1", "cpu", *ALL, {})
    assert series.points == [(T0, 1.0), (T0 + 10, 2.0), (T0 + 20, 4.0)]


def test_points_resent_from_far_apart_in_time_are_each_judged_by_what_is_stored(
    store_factory: StoreFactory,
) -> None:
    """#15: bodies resent from the start and the end of a long backlog, in one batch with new points
    between them and beyond, by a writer that knows nothing of what was stored (another process):
    each resent point keeps its first value, each new one is stored once, compacted or not."""
    hour = 3_600_000
    times = [T0 + k * hour for k in range(0, 48, 2)]  # two days, every other hour
    series = [("t1", SeriesSamples("cpu", {"host": h}, times, [1.0] * len(times))) for h in ("a", "b")]
    first = store_factory()
    assert first.write_batch(WriteBatch(series=series, now_ms=1)).points_written == 2 * len(times)
    for compact in (False, True):
        if compact:
            while first.compact(T0 + 100 * hour).more:
                pass
        writer = store_factory()  # knows nothing of what `first` stored
        resent = times[:2] + times[-2:]
        new = [T0 + (2 * k + 1) * hour + compact for k in (0, 10, 23)] + [T0 + 60 * hour + compact]
        got = writer.write_batch(
            WriteBatch(
                series=[
                    ("t1", SeriesSamples("cpu", {"host": h}, sorted(resent + new), [2.0] * 8))
                    for h in ("a", "b")
                ],
                now_ms=2,
            )
        )
        assert got.points_written == 2 * len(new)
    for s in first.query("t1", "cpu", *ALL, {}):
        stored = dict(s.points)
        assert len(stored) == len(s.points) == len(times) + 8
        assert all(stored[t] == 1.0 for t in times) and sum(v == 2.0 for v in stored.values()) == 8


def test_series_columns_are_stored_like_samples(store: Store) -> None:
    """#15: a decoder may hand samples over as columns per series (remote write does); they are
    idempotent per (series, t) like samples, and within a batch samples come before columns."""
    cols = SeriesSamples("cpu", {"host": "h1"}, [T0, T0 + 1, T0 + 2], [1.0, math.nan, 3.0])
    res = store.write_batch(WriteBatch(samples=[("t1", pt(T0 + 1, 9.0))], series=[("t1", cols)]))
    assert res.points_written == 3
    [series] = store.query("t1", "cpu", *ALL, {})
    assert [t for t, _ in series.points] == [T0, T0 + 1, T0 + 2] and series.points[1][1] == 9.0
    assert store.write_batch(WriteBatch(series=[("t1", cols)])).points_written == 0
    bad = SeriesSamples("cpu", {"host": "h2"}, [T0, T0 + 1], [1.0])
    with pytest.raises(ValueError):
        store.write_batch(WriteBatch(series=[("t1", bad)]))
    assert store.query("t1", "cpu", *ALL, {"host": "h2"}) == []


def test_packing_a_chunk_that_spans_windows_beside_other_series(store: Store) -> None:
    """#15: a chunk reaching into two windows packs into two chunks (one more than it read); the
    extra one's new id must not take an id another series' packed chunk keeps."""
    base = (T0 // WINDOW) * WINDOW
    for i in range(3):
        samples = [
            ("t1", pt(base + 10 + i, 1.0, host="a")),
            ("t1", pt(base + WINDOW + 10 + i, 2.0, host="a")),
        ]
        samples += [("t1", pt(base + 20 + i, 3.0, host=h)) for h in ("b", "c", "d")]
        store.write_batch(WriteBatch(samples=samples, now_ms=i))
    before = _snapshot(store)
    assert _compact_all(store, base + 6 * WINDOW).points
    assert _snapshot(store) == before


def test_series_after_names_series_as_ingest_keys_them(store: Store) -> None:
    """The series limit tells a request's series new or known by comparing ingest's key of each with
    what the store lists: NUL in a name (PostgreSQL keeps it as U+FFFD), empty and NUL label values,
    labels in any order must all come out as the same series."""
    pts = [
        ("a\x00b", {"k": "v"}),
        ("m", {"z": "1", "a": ""}),
        ("m", {"k": "x\x00y"}),
        ("m", {}),
    ]
    store.write_batch(WriteBatch(samples=[("t1", Point(m, lab, T0, 1.0)) for m, lab in pts]))
    _, listed = stored_series(store, "t1", 0)
    assert {series_key(m, lab) for m, lab in pts} == listed
    assert series_key("m", {"a": "", "z": "1"}) in listed  # any label order
