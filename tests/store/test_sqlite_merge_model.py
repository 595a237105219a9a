"""A model of the embedded store's first write wins through merges (compact.py, _merge_read), by an
adversarial review: two handles, writes spanning several 12 h windows (some before 1970), compaction
steps of each handle and steps whose read and write halves have the other handle's writes and steps
in between, clocks that make windows end mid-sequence, late writes into merged windows, and small
limits (points a window and a step, windows a pass). After every operation the store holds each
(series, t) once, the first write's value; at the end compaction stops, and every window that ended
is one chunk a series but for those of more points than the cap."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lossproof.store.embedded.compact as ec
from lossproof.store.base import Matcher, Point, WriteBatch
from lossproof.store.sqlite import SqliteStore

W = 12 * 3600 * 1000
H = 3600 * 1000
T0 = 1_700_000_000_000 // W * W
NOW_SPAN = 8 * W

op = st.one_of(
    st.tuples(
        st.just("w"),
        st.sampled_from([0, 1]),
        st.lists(
            st.tuples(st.integers(0, 3), st.integers(-40, 96), st.integers(0, 1000)), min_size=1, max_size=12
        ),
    ),
    st.tuples(st.just("c"), st.sampled_from([0, 1]), st.integers(1, 6)),
    st.tuples(st.just("split"), st.sampled_from([0, 1]), st.integers(0, 3)),
    st.tuples(st.just("clock"), st.none(), st.integers(0, 16)),
    st.tuples(
        st.just("splitw"),
        st.sampled_from([0, 1]),
        st.lists(
            st.tuples(st.integers(0, 3), st.integers(-40, 96), st.integers(0, 1000)), min_size=1, max_size=6
        ),
    ),
)


def compact_split(s: SqliteStore, now: int, maxs: int, between) -> None:
    with s._lock:
        s._con.execute("BEGIN")
        try:
            job = s._compact_read(now, maxs)
        finally:
            s._rollback()
    between()
    if job is None:
        s._reclaim()
        return
    with s._write({}, "store.compact_before_commit"):
        s._compact_write(job, now)


def check(a: SqliteStore, model) -> None:
    got = {}
    for s in a.select("t", [Matcher("__name__", "=~", ".+")], -(1 << 62), 1 << 62):
        for t, v in s.points:
            assert (s.metric, t) not in got, "twice"
            got[(s.metric, t)] = v
    assert got == model, (sorted(set(got.items()) ^ set(model.items())))[:6]
    con = a._con
    n = (
        con.execute("SELECT coalesce(sum(n),0) FROM parts").fetchone()[0]
        + con.execute("SELECT coalesce(sum(n),0) FROM chunks").fetchone()[0]
    )
    assert n == len(model), (n, len(model))


def run(ops, step, maxs=2):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.db"
        h = [SqliteStore(path), SqliteStore(path)]
        model: dict[tuple[str, int], float] = {}
        clock = [T0]
        try:

            def do(kind, who, arg):
                if kind == "w":
                    s = h[who]
                    pts = [("t", Point(f"m{k}", {"j": "x"}, T0 + t * step, float(v))) for k, t, v in arg]
                    s.write_batch(WriteBatch(samples=pts, now_ms=clock[0]))
                    for _, p in pts:
                        model.setdefault((p.metric, p.t), p.v)
                elif kind == "c":
                    for _ in range(arg):
                        h[who].compact(clock[0], maxs)
                elif kind == "clock":
                    clock[0] = T0 + arg * W // 2 + 11 * 60_000
                    # let parts flush: advance beyond part age

            for kind, who, arg in ops:
                if kind == "splitw":

                    def between(who=who, arg=arg):
                        do("w", 1 - who, arg)
                        h[1 - who].compact(clock[0], maxs)

                    compact_split(h[who], clock[0], maxs, between)
                elif kind == "split":
                    other = h[1 - who]

                    def between(other=other, n=arg):
                        for _ in range(n):
                            other.compact(clock[0], maxs)

                    compact_split(h[who], clock[0], maxs, between)
                else:
                    do(kind, who, arg)
                check(h[0], model)
            # drain both at a clock past everything: must end
            end = T0 + 200 * W
            for s in h:
                for _ in range(3000):
                    if not s.compact(end, maxs).more:
                        break
                else:
                    raise AssertionError("no end")
            check(h[0], model)
            # every ended window of a small series is one chunk
            con = sqlite3.connect(path)
            rows = con.execute(
                "SELECT series_id, t_min / ?, count(*), sum(n) FROM chunks GROUP BY 1, 2", (W,)
            ).fetchall()
            con.close()
            big = {sid for sid, w, c, n in rows if n > ec._MERGE_MAX_POINTS}
            for sid, w, c, n in rows:
                if sid not in big:
                    assert c == 1, ("not merged", sid, w, c, n, rows)
        finally:
            for s in h:
                s.close()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    ops=st.lists(op, max_size=20), step=st.sampled_from([H, 20 * 60_000, 3 * H]), maxs=st.sampled_from([1, 3])
)
def test_every_point_once_first_write_wins_through_merges(ops, step, maxs) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ec, "_MERGE_MAX_POINTS", 8)
        mp.setattr(ec, "_PACK_MAX_POINTS", 10)
        mp.setattr(ec, "_MERGE_PASS_WINDOWS", 2)
        mp.setattr(ec, "_PACK_AT_FLUSH", 3)
        run(ops, step, maxs)
