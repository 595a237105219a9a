"""The Rust extension ``lossproof._native`` (native/): built by ``pip install -e .`` and by the wheel
build, and the functions it replaces Python with, each against an independent reference."""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof import _native, native_ext
from lossproof.points import Point
from lossproof.store.columns import Columns


def test_the_extension_is_built_and_matches_this_checkout() -> None:
    assert _native.ABI == native_ext.ABI == 18


class Resolver:
    """A store's resolve: new ids for keys it has not seen, every call recorded."""

    def __init__(self, known: dict[tuple[Any, ...], int]) -> None:
        self.known = known
        self.calls: list[tuple[Any, ...]] = []
        self.next = 1000

    def __call__(self, key: tuple[Any, ...], tenant: str, metric: str, labels: Mapping[str, str]) -> int:
        self.calls.append((key, tenant, metric, dict(labels)))
        self.next += 1
        return self.next


def reference(tenant: str, points: list[Any], known: dict[tuple[Any, ...], int], resolve: Resolver) -> Any:
    """The Python loop that point_columns replaced, as it was (lossproof/store/columns.py before the
    extension): three arrays."""
    ts = array("q")
    vs = array("d")
    ts.extend([p.t for p in points])
    vs.extend([p.v for p in points])
    last_labels: Any = None
    last_metric = ""
    sid = 0
    sids = array("q")
    for p in points:
        labels = p.labels
        metric = p.metric
        if labels is not last_labels or metric != last_metric:
            key = (tenant, metric, *labels.items())
            got = known.get(key)
            sid = resolve(key, tenant, metric, labels) if got is None else got
            last_labels, last_metric = labels, metric
        sids.append(sid)
    return sids, ts, vs


def native(tenant: str, points: list[Any], known: dict[tuple[Any, ...], int], resolve: Resolver) -> Any:
    cols = Columns()
    cols.add(tenant, points, known, resolve)
    return cols.in_order()


class Labels(Mapping[str, str]):
    """Labels that are not a dict (a decoder may hand over any mapping)."""

    def __init__(self, d: dict[str, str]) -> None:
        self.d = d

    def __getitem__(self, k: str) -> str:
        return self.d[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self.d)

    def __len__(self) -> int:
        return len(self.d)


class _WorkerPoint(msgspec.Struct, gc=False):  # the worker's decode struct (worker/decode.py)
    metric: str
    t: int
    v: float
    labels: dict[str, str] = {}


text = st.text(max_size=12)
label_sets = st.dictionaries(st.sampled_from(["a", "b", "host", "é", "", "job"]), text, max_size=5)


@st.composite
def batches(draw: st.DrawFn) -> list[Any]:
    """Points of a few series: labels dicts shared between points (runs, as OTLP hands them) or
    each its own copy (as the native protocol), in either order, of several point types."""
    shared = draw(st.lists(label_sets, min_size=1, max_size=4))
    out: list[Any] = []
    for _ in range(draw(st.integers(0, 30))):
        labels = draw(st.sampled_from(shared))
        how = draw(st.sampled_from(["same", "copy", "reversed", "mapping"]))
        if how == "copy":
            labels = dict(labels)
        elif how == "reversed":
            labels = dict(reversed(labels.items()))
        elif how == "mapping":
            labels = Labels(labels)
        metric = draw(st.sampled_from(["m", "up", "ü" * 3]))
        t = draw(st.integers(-(2**63), 2**63 - 1))
        v = draw(st.floats(allow_nan=True) | st.integers(-(2**53), 2**53))
        kind = draw(st.sampled_from([Point, _WorkerPoint]))
        out.append(Point(metric, labels, t, v) if kind is Point else _WorkerPoint(metric, t, v, labels))
    return out


@settings(max_examples=300, deadline=None)
@given(batches(), st.sampled_from(["t1", "", "tenant-ü"]), st.booleans())
def test_point_columns_match_the_python_loop(points: list[Any], tenant: str, warm: bool) -> None:
    ref_known: dict[tuple[Any, ...], int] = {}
    nat_known: dict[tuple[Any, ...], int] = {}
    if warm and points:  # some series already in the store's cache
        p = points[0]
        ref_known[(tenant, p.metric, *p.labels.items())] = 7
        nat_known[(tenant, p.metric, *p.labels.items())] = 7
    ref, nat = Resolver(ref_known), Resolver(nat_known)
    r_sids, r_ts, r_vs = reference(tenant, points, ref_known, ref)
    n_sids, n_ts, n_vs = native(tenant, points, nat_known, nat)
    assert n_sids == r_sids and n_ts == r_ts and n_vs.tobytes() == r_vs.tobytes()  # NaN's bits too
    # the store is asked the same questions, with equal keys (the same tuple structure)
    assert nat.calls == ref.calls
    # twice: the second time the key tuples come from the extension's table
    nat2 = Resolver(nat_known)
    assert native(tenant, points, nat_known, nat2)[0] == r_sids and nat2.calls == ref.calls


def test_a_cached_series_is_taken_from_the_cache_and_each_label_order_is_its_own_key() -> None:
    known = {("t", "m", ("a", "1"), ("b", "2")): 5}
    res = Resolver(known)
    pts = [Point("m", {"a": "1", "b": "2"}, 1, 1.0), Point("m", {"b": "2", "a": "1"}, 2, 2.0)]
    sids, _, _ = native("t", pts, known, res)
    assert list(sids) == [5, 1001]
    assert res.calls == [(("t", "m", ("b", "2"), ("a", "1")), "t", "m", {"b": "2", "a": "1"})]
    # forgotten by the store (a cleared cache, a rolled-back batch): asked again, never remembered here
    known.clear()
    sids, _, _ = native("t", pts, known, res)
    assert list(sids) == [1002, 1003]


@pytest.mark.parametrize(
    ("t", "v", "labels"),
    [
        (2**63, 1.0, {}),  # beyond int64
        (-(2**63) - 1, 1.0, {}),
        (1.5, 1.0, {}),  # a float time
        ("1", 1.0, {}),
        (1, "1.0", {}),  # a str value
        (1, None, {}),
        (1, 1.0, None),  # labels that are no mapping
        (1, 1.0, [("a", "b")]),
    ],
)
def test_a_point_that_cannot_be_stored_fails_as_before_and_appends_nothing(
    t: Any, v: Any, labels: Any
) -> None:
    ok = Point("m", {"a": "b"}, 1, 1.0)
    bad = Point("m", labels, t, v)  # a Struct checks no types when it is made
    pts = [ok, bad]
    with pytest.raises(Exception) as ref_err:
        reference("t", pts, {}, Resolver({}))
    cols = Columns()
    cols.add("t", [ok], {}, Resolver({}))
    with pytest.raises(type(ref_err.value)):
        cols.add("t", pts, {}, Resolver({}))
    assert [len(c) for c in cols.in_order()] == [1, 1, 1]


def test_non_str_labels_take_the_general_path() -> None:
    known: dict[tuple[Any, ...], int] = {}
    pts = [Point("m", {"a": 1}, 1, 1.0), Point("m", {"a": 1}, 2, 2.0)]  # type: ignore[dict-item]
    ref, nat = Resolver(dict(known)), Resolver(known)
    assert native("t", pts, known, nat)[0] == reference("t", pts, {}, ref)[0]
    assert nat.calls == ref.calls


def test_a_resolver_that_fails_leaves_the_columns_as_they_were() -> None:
    def fail(*_: Any) -> int:
        raise RuntimeError("series limit")

    cols = Columns()
    with pytest.raises(RuntimeError, match="series limit"):
        cols.add("t", [Point("m", {}, 1, 1.0)], {}, fail)
    assert len(cols) == 0 and [len(c) for c in cols.in_order()] == [0, 0, 0]


def _i64(xs: list[int]) -> bytes:
    return np.array(xs, dtype=np.int64).tobytes()


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 10),
    st.lists(
        st.one_of(
            st.tuples(st.just("learn"), st.lists(st.tuples(st.integers(0, 3), st.integers(-5, 20)))),
            st.tuples(st.just("add"), st.lists(st.tuples(st.integers(0, 3), st.integers(-5, 20)))),
        ),
        max_size=20,
    ),
)
def test_stored_times_never_calls_a_stored_point_new(
    capacity: int, ops: list[tuple[str, list[tuple[int, int]]]]
) -> None:
    """StoredTimes (the embedded writer's memory of what it stored): a point it calls stored was
    added, one it calls new was not added and is above the newest t the series was learned with
    (the store's part), whatever it forgot to stay within ``capacity``."""
    s = _native.StoredTimes(capacity)
    floors: dict[int, int] = {}
    added: set[tuple[int, int]] = set()
    for op, pairs in ops:
        sids, ts = [p[0] for p in pairs], [p[1] for p in pairs]
        if op == "learn":
            s.learn(_i64(sids), _i64(ts))
            for sid, t in pairs:
                floors[sid] = max(floors.get(sid, t), t)
        else:
            s.add(_i64(sids), _i64(ts))
            added.update(p for p in pairs if p[0] in floors)
        assert len(s) <= capacity and s.series() == len(floors)
        assert sorted(np.frombuffer(s.unknown(_i64([0, 1, 2, 3])), dtype=np.int64)) == [
            x for x in range(4) if x not in floors
        ]
    probe = [(sid, t) for sid in range(4) for t in range(-6, 22)]
    verdicts = s.check(_i64([p[0] for p in probe]), _i64([p[1] for p in probe]))
    for (sid, t), v in zip(probe, verdicts, strict=True):
        if v == 1:
            assert (sid, t) in added
        elif v == 0:
            assert sid in floors and t > floors[sid] and (sid, t) not in added
        else:
            assert v == 2
            assert sid not in floors or t <= floors[sid] or len(added) >= max(1, capacity // 2)
        if (sid, t) in added and len(added) < max(1, capacity // 2):  # nothing forgotten yet
            assert v == 1


def test_stored_times_forget_the_oldest_times_not_the_first_added() -> None:
    """Full, a series forgets the older half of its times: a point that arrives late (newer than
    what was forgotten, older than what came before it) is still answered from memory."""
    s = _native.StoredTimes(8)
    s.learn(_i64([0]), _i64([-(1 << 63)]))
    s.add(_i64([0] * 4), _i64([200, 201, 202, 203]))  # arrived first, the newest times
    s.add(_i64([0] * 5), _i64([100, 101, 102, 103, 104]))  # 9 > 8: 100..104 forgotten
    assert len(s) == 4
    probe = [100, 104, 105, 150, 200, 203, 204]
    got = list(s.check(_i64([0] * len(probe)), _i64(probe)))
    assert got == [2, 2, 0, 0, 1, 1, 0]  # forgotten: unknown; above the floor 104: new or stored
