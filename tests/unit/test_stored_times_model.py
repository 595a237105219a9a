"""Review s9-revA: StoredTimes never says STORED for a point not stored, nor NEW for one stored."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof import _native

NONE = -(1 << 63)

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.lists(st.tuples(st.integers(0, 3), st.integers(-5, 40)), min_size=1, max_size=12),
        ),
        st.tuples(
            st.just("check"),
            st.lists(st.tuples(st.integers(0, 4), st.integers(-5, 45)), min_size=1, max_size=12),
        ),
        st.just(("clear", None)),
    ),
    max_size=40,
)


@settings(max_examples=600, deadline=None)
@given(ops=ops, capacity=st.integers(1, 12))
def test_stored_times_agrees_with_a_model_store(ops, capacity):
    tbl = _native.StoredTimes(capacity)
    store: set[tuple[int, int]] = set()
    for op, arg in ops:
        if op == "clear":
            tbl.clear()
            continue
        pts = sorted(set(arg))
        sids = np.array([s for s, _ in pts], dtype=np.int64)
        ts = np.array([t for _, t in pts], dtype=np.int64)
        # as _write_points: learn unknown series with the store's newest t
        starts = np.unique(sids)
        missing = np.frombuffer(tbl.unknown(starts.tobytes()), dtype=np.int64)
        top = np.array([max((t for s, t in store if s == m), default=NONE) for m in missing], dtype=np.int64)
        tbl.learn(missing.tobytes(), top.tobytes())
        verdict = np.frombuffer(tbl.check(sids.tobytes(), ts.tobytes()), dtype=np.uint8)
        for (s, t), v in zip(pts, verdict, strict=True):
            if v == 1:
                assert (s, t) in store, ("STORED but not stored", s, t)
            elif v == 0:
                assert (s, t) not in store, ("NEW but stored", s, t)
        if op == "add":
            new = [
                (s, t)
                for (s, t), v in zip(pts, verdict, strict=True)
                if v == 0 or (v == 2 and (s, t) not in store)
            ]
            store.update(new)
            if new:
                # a series' run unsorted, with duplicates (allowed by add)
                new = sorted(new + new[: len(new) // 2], key=lambda x: (x[0], -x[1]))
                tbl.add(
                    np.array([s for s, _ in new], dtype=np.int64).tobytes(),
                    np.array([t for _, t in new], dtype=np.int64).tobytes(),
                )
        assert len(tbl) <= capacity
