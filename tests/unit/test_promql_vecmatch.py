"""Vector matching as Prometheus does it (``engine.go``: ``VectorBinop``, ``resultMetric``; the same in
2.42 and 3.x), per step and in its order: nothing when either side has no sample, before any check
for duplicates; the "one" side must have one series per signature; one-to-one, only the samples a
comparison keeps must be unique per signature (``bool`` keeps them all); and ``bool`` drops the
metric name after ``group_left``/``group_right`` have copied labels, ``__name__`` among them.
Expected results are Prometheus 2.42's answers on the same data (differential test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lossproof.query import promql
from lossproof.store.base import Point, WriteBatch
from lossproof.store.sqlite import SqliteStore

T = 1_767_225_600_000
S = 1000

Result = dict[tuple[tuple[str, str], ...], list[float | None]]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SqliteStore:
    s = SqliteStore(Path(tmp_path_factory.mktemp("promql-vecmatch")) / "store.db")
    pts: list[tuple[str, Point]] = []

    def add(metric: str, labels: dict[str, str], samples: list[tuple[int, float]]) -> None:
        pts.extend(("t", Point(metric, labels, T + sec * S, v)) for sec, v in samples)

    add("gg", {"inst": "0"}, [(0, 1.0)])
    add("gg", {"inst": "1"}, [(0, 2.0)])
    add("mb", {"k": "1", "side": "r"}, [(0, 1.5)])
    add("mb", {"k": "2", "side": "r"}, [(0, 2.5)])
    add("mc", {"k": "1", "z": "u"}, [(0, 2.0)])
    add("mc", {"k": "1", "z": "v"}, [(0, 3.0)])
    add("mc", {"k": "2", "z": "u"}, [(0, 4.0)])
    # two series of one signature (k="1"): neither equals mb at 0 s, one does at 30 s
    add("pair", {"k": "1", "z": "u"}, [(0, 0.0), (30, 1.5)])
    add("pair", {"k": "1", "z": "v"}, [(0, 0.0), (30, 0.0)])
    # no sample before 20 s
    add("late", {}, [(20, 1.0)])
    s.write_batch(WriteBatch(samples=pts, now_ms=T))
    return s


def run(store: SqliteStore, q: str, start: int = 0, end: int = 0, step: int = 1) -> Result | str:
    """The series of ``q`` over ``T + start .. T + end`` (seconds), or "error" (Prometheus' 422)."""
    ev = promql.Evaluator(store, "t", promql.Grid(T + start * S, T + end * S, step * S))
    try:
        v = ev.eval(promql.parse(q))
    except promql.ExecutionError:
        return "error"
    assert isinstance(v, promql.Vector)
    return {promql.key_of(lab): vals for lab, vals in v.series.values()}


@pytest.mark.parametrize(
    "query",
    [
        # the "one" side has two series for on(), but the other side is empty
        "nonexistent + on() gg",
        "nonexistent + on() group_left gg",
        "gg + on() group_right nonexistent",
        # one-to-one with two samples for k="1" on the left, but no comparison keeps any of them
        "mc == on(k) mb",
        "mc < on(k) mb",
    ],
)
def test_nothing_to_match_is_no_error(store: SqliteStore, query: str) -> None:
    assert run(store, query) == {}


@pytest.mark.parametrize(
    "query",
    [
        "mc + on(k) mb",
        "mc > on(k) mb",  # both k="1" samples are kept
        "mc == bool on(k) mb",  # bool keeps every sample
        "mb + on(k) group_left mc",  # the "one" side's duplicates, whatever the "many" side
        "mb > on(k) group_left mc",
        "gg + on() late",  # late is there (at 20 s) and the other side has two series for on()
    ],
)
def test_duplicates_are_still_an_error(store: SqliteStore, query: str) -> None:
    assert run(store, query, 30, 30) == "error"


def test_range_query_checks_each_step(store: SqliteStore) -> None:
    # at 0 s neither pair sample equals mb (no error); at 30 s one does: that one is the answer
    # (one-to-one on(k): the labels of on(k))
    assert run(store, "pair == on(k) mb", 0, 30, 30) == {(("k", "1"),): [None, 1.5]}
    assert run(store, "pair == bool on(k) mb", 0, 30, 30) == "error"
    # late is empty at 0 s and 10 s: nothing there, and no error until a step where it has a sample
    assert run(store, "late + on() gg", 0, 10, 10) == {}
    assert run(store, "late + on() gg", 0, 30, 10) == "error"
    assert run(store, 'late + on() group_left gg{inst="0"}', 0, 30, 10) == {(): [None, None, 2.0, 2.0]}


def test_bool_drops_the_name_group_left_copies(store: SqliteStore) -> None:
    want = {
        (("k", "1"), ("z", "u")): [1.0],
        (("k", "1"), ("z", "v")): [1.0],
        (("k", "2"), ("z", "u")): [1.0],
    }
    assert run(store, "mc > bool on(k) group_left(__name__) mb") == want
    # without bool the name copied from the "one" side stays, as with an arithmetic operator
    assert run(store, "mc > on(k) group_left(__name__) mb") == {
        (("__name__", "mb"), ("k", "1"), ("z", "u")): [2.0],
        (("__name__", "mb"), ("k", "1"), ("z", "v")): [3.0],
        (("__name__", "mb"), ("k", "2"), ("z", "u")): [4.0],
    }
    got = run(store, "mc + on(k) group_left(__name__) mb")
    assert not isinstance(got, str) and {dict(k).get("__name__") for k in got} == {"mb"}
    # group_right: the name comes from the left ("one") side, and bool drops it again
    assert run(store, "mb < bool on(k) group_right(__name__) mc") == want
