"""count_values sets its value label on each series before the grouping key is computed (Prometheus'
engine.go, 2.42 and 3.x alike): a series' own value of that label never splits a group, ``by`` keeps
the value label whether it names it or not, and ``without`` naming it drops it (the group's series
are then counted whatever their values). Checked against answers of Prometheus 2.42."""

from __future__ import annotations

import pytest

from lossproof.query import promql
from lossproof.store.base import Point, WriteBatch
from lossproof.store.sqlite import SqliteStore

T0 = 1_700_000_000_000
STEP = 10_000

# gg: values per step (three steps); grp x has 1, 2, 2 at first, grp y 1, 3
GG = [
    ("x", [1.0, 1.0, 5.0]),
    ("x", [2.0, 1.0, 5.0]),
    ("x", [2.0, 2.0, 5.0]),
    ("y", [1.0, 1.0, 1.0]),
    ("y", [3.0, 1.0, 1.0]),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SqliteStore:
    s = SqliteStore(tmp_path_factory.mktemp("count-values") / "store.db")
    pts = []
    for i, (grp, vals) in enumerate(GG):
        for k, v in enumerate(vals):
            pts.append(("t", Point("gg", {"grp": grp, "inst": f"i{i}"}, T0 + k * STEP, v)))
    for z in ("a", "b", "c"):  # series that differ only in z, each with its own k
        pts.append(("t", Point("mc", {"k": f"own-{z}", "z": z}, T0, 5.0)))
    s.write_batch(WriteBatch(samples=pts, now_ms=T0))
    return s


Rows = dict[tuple[tuple[str, str], ...], list[float | None]]


def run(store: SqliteStore, query: str, steps: int = 1) -> Rows:
    g = promql.Grid(T0, T0 + (steps - 1) * STEP, STEP)
    v = promql.Evaluator(store, "t", g).eval(promql.parse(query))
    assert isinstance(v, promql.Vector)
    return {tuple(sorted(lab.items())): vals for lab, vals in v.rows()}


def test_without_the_value_label_counts_the_groups_series(store: SqliteStore) -> None:
    # Prometheus 2.42: {grp="x"} 3, {grp="y"} 2 (was: five series, each with inst=<value>)
    got = run(store, 'count_values without(inst)("inst", gg)')
    assert got == {(("grp", "x"),): [3.0], (("grp", "y"),): [2.0]}


def test_the_series_own_value_label_does_not_split_groups(store: SqliteStore) -> None:
    # Prometheus 2.42: {k="1"} 3 (was: 422, "vector cannot contain metrics with the same labelset")
    assert run(store, 'count_values without(z)("k", mc*0+1)') == {(("k", "1"),): [3.0]}
    assert run(store, 'count_values by(k)("k", mc)') == {(("k", "5"),): [3.0]}
    assert run(store, 'count_values("k", mc)') == {(("k", "5"),): [3.0]}


def test_by_keeps_the_value_label_named_or_not(store: SqliteStore) -> None:
    want = {(("inst", "1"),): [2.0], (("inst", "2"),): [2.0], (("inst", "3"),): [1.0]}
    assert run(store, 'count_values by(inst)("inst", gg)') == want
    assert run(store, 'count_values("inst", gg)') == want
    assert run(store, 'count_values by(grp, inst)("inst", gg)') == {
        (("grp", "x"), ("inst", "1")): [1.0],
        (("grp", "x"), ("inst", "2")): [2.0],
        (("grp", "y"), ("inst", "1")): [1.0],
        (("grp", "y"), ("inst", "3")): [1.0],
    }


def test_without_other_labels_keeps_the_value_label(store: SqliteStore) -> None:
    got = run(store, 'count_values without(inst)("grp", gg)')
    assert got == {(("grp", "1"),): [2.0], (("grp", "2"),): [2.0], (("grp", "3"),): [1.0]}


def test_range_query_groups_each_step_by_its_values(store: SqliteStore) -> None:
    assert run(store, 'count_values without(inst)("inst", gg)', steps=3) == {
        (("grp", "x"),): [3.0, 3.0, 3.0],
        (("grp", "y"),): [2.0, 2.0, 2.0],
    }
    assert run(store, 'count_values without(inst)("grp", gg)', steps=3) == {
        (("grp", "1"),): [2.0, 4.0, 2.0],
        (("grp", "2"),): [2.0, 1.0, None],
        (("grp", "3"),): [1.0, None, None],
        (("grp", "5"),): [None, None, 3.0],
    }
