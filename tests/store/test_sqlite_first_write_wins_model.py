"""Review s9-revA: the embedded store's first-write-wins through the stored-times table, with a
small table, two connections, compaction and rolled-back writes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lossproof.store.embedded.write as ew
from lossproof import _native
from lossproof.store.base import Matcher, Point, StoreUnavailable, WriteBatch
from lossproof.store.sqlite import SqliteStore

T0 = 1_700_000_000_000

op = st.one_of(
    st.tuples(
        st.sampled_from(["a", "b", "fail_a"]),
        st.lists(
            st.tuples(st.integers(0, 2), st.integers(0, 30), st.integers(0, 1000)), min_size=1, max_size=10
        ),
    ),
    st.tuples(st.sampled_from(["compact_a", "compact_b"]), st.none()),
)


class Boom(Exception):
    pass


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
# steps of a second, and of 3 h: points then lie in several spans of a first-write-wins read
# (columns.time_spans) and in several packed windows
@given(ops=st.lists(op, max_size=14), cap=st.integers(1, 8), step=st.sampled_from([1000, 3 * 3_600_000]))
def test_every_point_once_first_write_wins(ops, cap, step) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.db"
        a = SqliteStore(path)
        b = SqliteStore(path)
        a._stored = _native.StoredTimes(cap)
        b._stored = _native.StoredTimes(cap)
        model: dict[tuple[str, int], float] = {}
        try:
            for kind, arg in ops:
                if kind.startswith("compact"):
                    (a if kind == "compact_a" else b).compact(T0 + 10**9)
                    continue
                store = b if kind == "b" else a
                pts = [("t", Point(f"m{s}", {"j": "x"}, T0 + t * step, float(v))) for s, t, v in arg]
                batch = WriteBatch(samples=pts, now_ms=T0)
                if kind == "fail_a":
                    orig = ew.crash_point

                    def boom(name: str) -> None:
                        raise Boom()

                    ew.crash_point = boom
                    try:
                        # a failure the batch's data does not explain is the store's: kept, retried
                        with pytest.raises(StoreUnavailable) as failed:
                            store.write_batch(batch)
                        assert isinstance(failed.value.__cause__, Boom)
                    finally:
                        ew.crash_point = orig
                    continue
                store.write_batch(batch)
                for _, p in pts:
                    model.setdefault((p.metric, p.t), p.v)
            got: dict[tuple[str, int], float] = {}
            for s in a.select("t", [Matcher("__name__", "=~", ".+")], 0, 2 * T0):
                for t, v in s.points:
                    assert (s.metric, t) not in got, "twice"
                    got[(s.metric, t)] = v
            assert got == model
            # raw count: no duplicate stored anywhere
            con = a._con
            n_parts = con.execute("SELECT coalesce(sum(n), 0) FROM parts").fetchone()[0]
            n_chunks = con.execute("SELECT coalesce(sum(n), 0) FROM chunks").fetchone()[0]
            assert n_parts + n_chunks == len(model), (n_parts, n_chunks, len(model))
        finally:
            a.close()
            b.close()
