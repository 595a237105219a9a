"""The series ids the native column builders remember (native/src/lib.rs, ``KEYS``) against the
store's cache (:class:`~lossproof.store.base.SeriesCache`): whatever the caches are made to hold,
forget or change, in any order and however many there are, each point gets the id its cache holds
at that moment, and the store's resolver is asked exactly for the series its cache does not hold.
The three builders: points (``point_columns``), native reports (``report_columns``) and remote-write
blocks (``block_columns``)."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof import _native
from lossproof.points import Point, PointsBlock
from lossproof.protocol import promrw
from lossproof.store.base import SeriesCache
from lossproof.store.columns import Columns

WriteRequest = promrw._message("prometheus.WriteRequest")

SERIES = [
    ("m", {"a": "1"}),
    ("m", {"a": "2"}),
    ("m", {"a": "1", "b": "x"}),
    ("m", {"b": "x", "a": "1"}),  # another key: labels in another order
    ("up", {}),
    ("ü", {"é": "ü" * 3}),
]
TENANTS = ["t", "other"]


class Resolver:
    """A store's resolve: a new id each call, remembered nowhere (an uncommitted series)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.next = 10_000

    def __call__(self, key: tuple[Any, ...], tenant: str, metric: str, labels: dict[str, str]) -> int:
        self.calls.append(key)
        self.next += 1
        return self.next


def key_of(tenant: str, k: int) -> tuple[Any, ...]:
    metric, labels = SERIES[k]
    return (tenant, metric, *labels.items())


def columns(how: str, tenant: str, picks: list[int], known: dict[Any, int], res: Resolver) -> list[int]:
    cols = Columns()
    if how == "points":
        pts = [Point(SERIES[k][0], dict(SERIES[k][1]), i, 1.0) for i, k in enumerate(picks)]
        cols.add(tenant, pts, known, res)
    elif how == "report":
        raw = msgspec.msgpack.encode(
            {
                "seq": 1,
                "points": [
                    {"metric": SERIES[k][0], "labels": SERIES[k][1], "t": i, "v": 1.0}
                    for i, k in enumerate(picks)
                ],
            }
        )
        got = _native.native_report(raw)
        assert got is not None
        cols.add(tenant, PointsBlock(got[2]), known, res)
    else:
        req = WriteRequest()
        for i, k in enumerate(picks):
            ts = req.timeseries.add()
            for name, value in [("__name__", SERIES[k][0]), *SERIES[k][1].items()]:
                lb = ts.labels.add()
                lb.name, lb.value = name, value
            s = ts.samples.add()
            s.timestamp, s.value = i, 1.0
        block, error = _native.rw1_block(req.SerializeToString())
        assert error is None
        sids, _, _ = _native.block_columns(tenant, block, 0, block.samples(), known, res)
        return list(memoryview(sids).cast("q"))
    return list(cols.in_order()[0])


ops = st.one_of(
    st.tuples(
        st.just("columns"),
        st.sampled_from(["points", "report", "rw"]),
        st.lists(st.integers(0, len(SERIES) - 1), min_size=1, max_size=8),
    ),
    st.tuples(st.just("commit"), st.lists(st.integers(0, len(SERIES) - 1), max_size=4)),
    st.tuples(st.just("change"), st.integers(0, len(SERIES) - 1)),  # the same key, another id
    st.tuples(st.just("clear")),
    st.tuples(st.just("del"), st.integers(0, len(SERIES) - 1)),
    st.tuples(st.just("pop"), st.integers(0, len(SERIES) - 1)),
    st.tuples(st.just("popitem")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(TENANTS), ops), max_size=40))
def test_each_point_gets_the_id_its_cache_holds_now(steps: list[tuple[int, str, tuple[Any, ...]]]) -> None:
    # two store caches and a plain dict (no token: asked every time), sharing the native table
    caches: list[dict[Any, int]] = [SeriesCache(), SeriesCache(), {}]
    ids = iter(range(1, 1 << 30))
    for which, tenant, op in steps:
        known = caches[which]
        if op[0] == "columns":
            _, how, picks = op
            want_calls = [key_of(tenant, k) for k in dict.fromkeys(picks) if key_of(tenant, k) not in known]
            expected = {key_of(tenant, k): known.get(key_of(tenant, k)) for k in picks}
            res = Resolver()
            got = columns(how, tenant, picks, known, res)
            for k, sid in zip(picks, got, strict=True):
                want = expected[key_of(tenant, k)]
                if want is None:
                    assert sid > 10_000  # from the resolver
                else:
                    assert sid == want, (how, key_of(tenant, k))
            # asked once per series it does not hold (points: once per run of one series)
            assert set(res.calls) == set(want_calls)
        elif op[0] == "commit":
            new = {key_of(tenant, k): next(ids) for k in op[1] if key_of(tenant, k) not in known}
            if isinstance(known, SeriesCache):
                known.add_committed(new)
            else:
                known.update(new)
        elif op[0] == "change":
            known[key_of(tenant, op[1])] = next(ids)
        elif op[0] == "clear":
            known.clear()
        elif op[0] == "del":
            if key_of(tenant, op[1]) in known:
                del known[key_of(tenant, op[1])]
        elif op[0] == "pop":
            known.pop(key_of(tenant, op[1]), None)
        elif op[0] == "popitem" and known:
            known.popitem()


def test_a_cache_token_changes_whenever_the_cache_forgets_or_changes_an_id() -> None:
    c = SeriesCache()
    seen = {c.token}
    steps: list[tuple[Any, bool]] = [
        (lambda: c.add_committed({("t", "m"): 1, ("t", "n"): 2, ("t", "o"): 3}), False),
        (lambda: c.__setitem__(("t", "m"), 1), False),  # the id it holds
        (lambda: c.update({("t", "p"): 4}), False),
        (lambda: c.__setitem__(("t", "m"), 5), True),
        (lambda: c.update({("t", "m"): 6}), True),
        (lambda: c.__ior__({("t", "m"): 7}), True),
        (lambda: c.__ior__({("t", "m"): 7}), False),
        (lambda: c.setdefault(("t", "m"), 8), False),  # inserts only what is not there
        (lambda: c.pop(("t", "m")), True),
        (lambda: c.__delitem__(("t", "n")), True),
        (c.popitem, True),
        (c.clear, True),
    ]
    for step, forgets in steps:
        before = c.token
        step()
        assert (c.token != before) == forgets
        assert c.token == before or c.token not in seen  # never one it, or another, had
        seen.add(c.token)
    assert SeriesCache().token not in seen


def test_two_caches_of_one_length_holding_other_ids_for_the_same_keys() -> None:
    # the native table starts over when it sees a cache shorter than the last one: equal lengths
    # keep it, so an id remembered from one cache is there when the other asks
    a, b = SeriesCache(), SeriesCache()
    a.add_committed({key_of("t", 0): 1, key_of("t", 1): 2})
    b.add_committed({key_of("t", 0): 3, key_of("t", 1): 4})
    for how in ("points", "report", "rw"):
        for _ in range(2):
            assert columns(how, "t", [0, 1], a, Resolver()) == [1, 2]
            assert columns(how, "t", [0, 1], b, Resolver()) == [3, 4]


def test_an_id_changed_in_place_is_taken_from_the_cache() -> None:
    for how in ("points", "report", "rw"):
        c = SeriesCache()
        c.add_committed({key_of("t", 0): 1})
        assert columns(how, "t", [0], c, Resolver()) == [1]
        c[key_of("t", 0)] = 2
        assert columns(how, "t", [0], c, Resolver()) == [2]
        d: dict[Any, int] = {key_of("t", 0): 5}  # a plain dict: asked every time
        assert columns(how, "t", [0], d, Resolver()) == [5]
        d[key_of("t", 0)] = 6
        assert columns(how, "t", [0], d, Resolver()) == [6]


def test_a_copy_of_a_cache_is_another_cache() -> None:
    import copy
    import pickle

    c = SeriesCache()
    c.add_committed({key_of("t", 0): 1})
    for other in (copy.copy(c), copy.deepcopy(c), pickle.loads(pickle.dumps(c))):
        assert isinstance(other, SeriesCache) and other == c and other.bytes == c.bytes
        assert other.token != c.token
        # the copy learns an id the original does not hold: the original still asks its resolver
        other[key_of("t", 1)] = 42
        assert columns("report", "t", [1], other, Resolver()) == [42]
        res = Resolver()
        assert columns("report", "t", [1], c, res) != [42] and res.calls == [key_of("t", 1)]
