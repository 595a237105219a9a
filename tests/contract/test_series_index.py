"""The read side's series index (``lossproof/store/series_index.py``) against a model, on every backend.

What a selector, ``/api/v1/series``, ``/api/v1/labels`` and ``/api/v1/label/<name>/values`` see must
be what the series table says, read and matched one series at a time (``matches_all``, sorted by metric
then labels: what the stores did before the index): random series sets, random matchers (``=``, ``!=``,
``=~``, ``!~``, on the metric name and on labels, missing labels and stored empty values included),
and series added after the index was built, by another handle (connection) and by another process.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import pytest

from lossproof.store import series_index
from lossproof.store.base import Matcher, SeriesSamples, Store, StoreWouldWait, WriteBatch, matches_all
from lptest import subprocess_env
from lptest.store_backends import BACKENDS, PostgresBackend, SqliteBackend, StoreBackend

T0 = 1_700_000_000_000
Model = dict[str, list[tuple[str, dict[str, str]]]]  # tenant -> (metric, labels), every series

METRICS = ["m1", "m2", "cpu.user", "M1"]
NAMES = ["a", "b", "host", "le"]
VALUES = ["", "x", "y", "xy", "1", "h1", "h10", "Y"]
REGEXES = ["", ".*", ".+", "x.*", "x|y", "h1.*", "[xy]+", "y?", "(?i)y", "m.", "cpu\\.user", "h1|h10|"]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    b: StoreBackend = BACKENDS[request.param](tmp_path)
    yield b
    b.close_all()


def random_series(rng: random.Random, n: int) -> list[tuple[str, str, dict[str, str]]]:
    out = []
    for _ in range(n):
        labels = {k: rng.choice(VALUES) for k in rng.sample(NAMES, rng.randint(0, len(NAMES)))}
        out.append((rng.choice(["t1", "t1", "t2"]), rng.choice(METRICS), labels))
    return out


def write(store: Store, series: Sequence[tuple[str, str, dict[str, str]]], model: Model) -> None:
    seen = {(t, m, msgspec.json.encode(sorted(lab.items()))) for t, ss in model.items() for m, lab in ss}
    store.write_batch(
        WriteBatch(series=[(t, SeriesSamples(m, lab, [T0], [1.0])) for t, m, lab in series], now_ms=T0)
    )
    for t, m, lab in series:
        key = (t, m, msgspec.json.encode(sorted(lab.items())))
        if key not in seen:
            seen.add(key)
            model.setdefault(t, []).append((m, lab))


def random_matcher(rng: random.Random) -> Matcher:
    name = rng.choice(["__name__", *NAMES, "zz"])
    op = rng.choice(["=", "!=", "=~", "!~"])
    value = rng.choice(REGEXES + METRICS if op in ("=~", "!~") else VALUES + METRICS)
    return Matcher(name, op, value)


def model_series(model: Model, tenant: str, matchers: Sequence[Matcher]) -> list[tuple[str, dict[str, str]]]:
    found = [(m, lab) for m, lab in model.get(tenant, []) if matches_all(matchers, m, lab)]
    return sorted(found, key=lambda r: (r[0], sorted(r[1].items())))


def model_of(
    model: Model, tenant: str, selectors: Sequence[Sequence[Matcher]] | None
) -> list[tuple[str, dict[str, str]]]:
    if selectors is None:
        return model.get(tenant, [])
    return [x for ms in selectors for x in model_series(model, tenant, ms)]


def check(store: Store, model: Model, rng: random.Random, rounds: int = 60) -> None:
    for _ in range(rounds):
        tenant = rng.choice(["t1", "t2", "t3"])
        matchers = [random_matcher(rng) for _ in range(rng.randint(0, 3))]
        got = store.series(tenant, matchers)
        assert got == model_series(model, tenant, matchers), (tenant, matchers)
        assert [list(lab) for _, lab in got] == [sorted(lab) for _, lab in got]  # labels in name order
        selectors = None if rng.random() < 0.3 else [[random_matcher(rng)] for _ in range(rng.randint(0, 2))]
        found = model_of(model, tenant, selectors)
        names = {k for _, lab in found for k in lab} | ({"__name__"} if found else set())
        assert store.label_names(tenant, selectors) == sorted(names), (tenant, selectors)
        name = rng.choice(["__name__", *NAMES, "zz"])
        if name == "__name__":
            values = {m for m, _ in found}
        else:
            values = {lab[name] for _, lab in found if name in lab}
        assert store.label_values(tenant, name, selectors) == sorted(values), (tenant, name, selectors)
    assert store.metric_names("t1") == sorted({m for m, _ in model.get("t1", [])})


@pytest.mark.parametrize("seed", range(4))
def test_index_agrees_with_the_series_table(backend: StoreBackend, seed: int) -> None:
    rng = random.Random(seed)
    writer, reader = backend.open(), backend.open(readonly=True)
    model: Model = {}
    write(writer, random_series(rng, rng.randint(1, 60)), model)
    check(reader, model, rng)  # the index is built
    # series stored after it was built, through another handle (its own connection): seen at once
    other = backend.open()
    write(other, random_series(rng, rng.randint(1, 60)), model)
    check(reader, model, rng)
    check(writer, model, rng, rounds=10)
    # many at once: results ordered by the index's rank rather than one by one
    many = [("t1", "bulk", {"i": f"{i:04d}", "a": rng.choice(VALUES)}) for i in range(700)]
    write(other, many, model)
    check(reader, model, rng, rounds=20)
    assert len(reader.series("t1", [Matcher("__name__", "=", "bulk")])) == 700
    # a few more once the rank is made: each put in its place among the others
    write(other, [("t1", "bulk", {"i": f"{rng.randrange(700):04d}x"}) for _ in range(5)], model)
    check(reader, model, rng, rounds=10)
    got = reader.series("t1", [Matcher("__name__", "=", "bulk")])
    assert got == model_series(model, "t1", [Matcher("__name__", "=", "bulk")]) and len(got) > 700
    # the rank current again: small results ordered by it too
    check(reader, model, rng, rounds=20)


def test_index_disabled_past_its_limit_reads_the_table(
    backend: StoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past INDEX_MAX_SERIES the stores answer from the series table: the same answers."""
    monkeypatch.setattr(series_index, "INDEX_MAX_SERIES", 10)
    rng = random.Random(7)
    store = backend.open()
    model: Model = {}
    write(store, random_series(rng, 40), model)
    check(store, model, rng, rounds=30)
    assert store._index.disabled  # type: ignore[attr-defined]


CHILD = """
import sys
from lossproof.store.base import SeriesSamples, WriteBatch
from lptest.store_backends import store_in_child

store = store_in_child(sys.argv[1:])
store.write_batch(WriteBatch(series=[
    ("t1", SeriesSamples("child", {"n": str(i), "host": "h1"}, [T0], [1.0])) for i in range(25)
], now_ms=T0))
print("written", flush=True)
""".replace("T0", str(T0))


@pytest.mark.process
def test_index_sees_series_another_process_stored(backend: StoreBackend, tmp_path: Path) -> None:
    rng = random.Random(11)
    reader = backend.open()
    model: Model = {}
    write(reader, random_series(rng, 30), model)
    check(reader, model, rng, rounds=10)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *backend.child_args()],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "written" in done.stdout, done.stderr
    for i in range(25):
        model.setdefault("t1", []).append(("child", {"host": "h1", "n": str(i)}))
    check(reader, model, rng)
    assert len(reader.series("t1", [Matcher("__name__", "=", "child"), Matcher("host", "=~", "h1")])) == 25


def test_handles_of_one_store_share_one_index_that_goes_with_them(backend: StoreBackend) -> None:
    """One index per store per process (the query process opens a handle per read thread), and none
    kept once every handle is gone (a test run opens thousands of stores)."""
    import gc
    import weakref

    a, b = backend.open(), backend.open(readonly=True)
    index = weakref.ref(a._index)  # type: ignore[attr-defined]
    assert b._index is index()  # type: ignore[attr-defined]
    assert index() in series_index._REGISTRY.values()
    backend.close_all()
    del a, b
    gc.collect()
    assert index() is None


def test_values_of_labels_no_series_has_are_not_kept(backend: StoreBackend) -> None:
    """``/api/v1/label/<name>/values`` for names no series has (any client can send any name): the
    sorted values kept per label must not gain an entry for each, or the query process grows
    without bound."""
    store = backend.open()
    write(store, [("t1", "m1", {"a": "x"})], {})
    assert store.label_values("t1", "a") == ["x"]
    for i in range(3000):
        assert store.label_values("t1", f"no_such_label_{i}") == []
    assert store.label_values("t1", "a") == ["x"]
    t = store._index.tenants["t1"]  # type: ignore[attr-defined]
    assert len(t._sorted) <= 2


def test_index_past_its_limit_is_never_built_beyond_it(
    backend: StoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit bounds the query process's memory whatever the store holds: a store already past it
    when the index is first built (or a refresh that would take it past) must not be indexed whole
    and only then given up (3 M series: gigabytes at once, before the limit is looked at)."""
    monkeypatch.setattr(series_index, "INDEX_MAX_SERIES", 10)
    added: list[int] = []
    add = series_index.TenantIndex.add
    monkeypatch.setattr(series_index.TenantIndex, "add", lambda self, *a: added.append(1) or add(self, *a))
    rng = random.Random(8)
    store = backend.open()
    model: Model = {}
    write(store, [("t1", "m", {"i": str(i)}) for i in range(40)], model)
    check(store, model, rng, rounds=5)
    assert store._index.disabled  # type: ignore[attr-defined]
    assert len(added) <= 11


def test_sqlite_store_restored_in_place_is_read_again(tmp_path: Path) -> None:
    """A backup restored into the live file with SQLite's backup API (``sqlite3 store.db ".restore
    backup.db"``: same file, other contents), then more series stored before the query process reads
    again: the ids the index holds now name other series. It must not answer the old ones."""
    import sqlite3

    from lptest.store_backends import SqliteBackend

    b = SqliteBackend(tmp_path)
    try:
        writer, reader = b.open(), b.open(readonly=True)
        model: Model = {}
        write(writer, [("t1", "m", {"s": str(i)}) for i in range(2)], model)
        backup = tmp_path / "backup.db"
        with sqlite3.connect(tmp_path / "store.db") as src, sqlite3.connect(backup) as dst:
            src.backup(dst)
        write(writer, [("t1", "m", {"s": str(i)}) for i in range(2, 5)], model)
        assert len(reader.series("t1", [])) == 5  # the index has all five
        with sqlite3.connect(backup) as src, sqlite3.connect(tmp_path / "store.db") as dst:
            src.backup(dst)  # the restore: two series again
        model = {"t1": [("m", {"s": "0"}), ("m", {"s": "1"})]}
        write(b.open(), [("t1", "m", {"n": str(i)}) for i in range(4)], model)  # a worker started anew
        assert reader.series("t1", []) == model_series(model, "t1", [])
        assert reader.label_names("t1") == ["__name__", "n", "s"]
    finally:
        b.close_all()


def fresh(store: Store) -> Store:
    """``store`` with a new brief budget, as StoreAccess.run_brief starts one for each request."""
    store.brief_reads()
    return store


class Fresh:
    """A brief handle whose every read is a request of its own (a new budget each)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        return getattr(fresh(self._store), name)


def test_a_brief_handle_answers_as_a_normal_one(backend: StoreBackend) -> None:
    """A handle switched to brief reads (the query process's event loop's: StoreAccess.run_brief)
    answers the metadata reads as any other handle, series stored since by another handle included;
    every other read is refused, never made without its waits. PostgreSQL has no brief reads."""
    rng = random.Random(5)
    writer, brief = backend.open(), backend.open(readonly=True)
    if isinstance(backend, PostgresBackend):
        assert not brief.brief_reads()
        return
    assert brief.brief_reads() and brief.brief_reads()  # switching twice is harmless
    model: Model = {}
    write(writer, random_series(rng, 50), model)
    check(Fresh(brief), model, rng)
    write(backend.open(), random_series(rng, 50), model)
    check(Fresh(brief), model, rng)
    with pytest.raises(StoreWouldWait):
        fresh(brief).agents("t1")
    with pytest.raises(StoreWouldWait):
        fresh(brief).select_arrays("t1", [], T0, T0)


def _brief_sqlite(tmp_path: Path) -> tuple[StoreBackend, Store, Store, Model]:
    backend = SqliteBackend(tmp_path)
    writer, brief = backend.open(), backend.open(readonly=True)
    assert brief.brief_reads()
    model: Model = {}
    write(writer, [("t1", "m", {"i": str(i)}) for i in range(20)], model)
    assert len(fresh(brief).series("t1", [])) == 20
    return backend, writer, brief, model


def test_a_brief_read_hands_on_what_it_cannot_do_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever would make the event loop wait or work long is refused (StoreWouldWait), and the next
    brief read after a normal handle has done it is answered again."""
    from lossproof.store.embedded import read

    backend, writer, brief, model = _brief_sqlite(tmp_path)
    normal = backend.open(readonly=True)
    index = brief._index  # type: ignore[attr-defined]
    assert brief._brief.con.execute("PRAGMA busy_timeout").fetchone() == (0,)  # type: ignore[attr-defined]
    # the series index in use by a read thread (a long match, a long catch-up)
    with index.lock, pytest.raises(StoreWouldWait):
        fresh(brief).label_names("t1")
    assert fresh(brief).label_names("t1") == ["__name__", "i"]
    # many series new since the index caught up: reading them is a read thread's work
    monkeypatch.setattr(read, "BRIEF_MAX_NEW", 5)
    write(writer, [("t1", "m", {"i": f"n{i}"}) for i in range(8)], model)
    with pytest.raises(StoreWouldWait):
        fresh(brief).label_values("t1", "i")
    assert len(normal.series("t1", [])) == 28
    assert fresh(brief).label_values("t1", "i") == sorted(lab["i"] for _, lab in model["t1"])
    # a tenant too large to list on the event loop
    monkeypatch.setattr(read, "BRIEF_MAX_SERIES", 27)
    with pytest.raises(StoreWouldWait):
        fresh(brief).series("t1", [Matcher("i", "=", "1")])
    assert fresh(brief).metric_names("t2") == []  # another, small tenant still is
    # work past the read's budget (~1 us a unit): refused before it is done
    monkeypatch.setattr(read, "BRIEF_MAX_SERIES", 20_000)
    monkeypatch.setattr(read, "BRIEF_BUDGET", 40)
    with pytest.raises(StoreWouldWait):
        fresh(brief).series("t1", [])  # 28 series listed: 56 units
    with pytest.raises(StoreWouldWait):
        fresh(brief).label_values("t1", "i", [[Matcher("i", "=~", "n.*")]])  # 28 values matched: 84
    assert normal.label_values("t1", "i", [[Matcher("i", "=~", "n.*")]]) == [f"n{i}" for i in range(8)]
    assert len(fresh(brief).series("t1", [Matcher("i", "=~", "n.*")])) == 8  # matched by normal: 16 units
    monkeypatch.setattr(read, "BRIEF_BUDGET", 2_000)
    # SQLite busy (a WAL being recovered): refused at once, not waited for
    real = brief._brief.con  # type: ignore[attr-defined]

    class Busy:
        def execute(self, *args: object) -> None:
            raise sqlite3.OperationalError("database is locked")

    brief._brief.con = Busy()  # type: ignore[attr-defined]
    write(writer, [("t1", "m", {"i": "late"})], model)
    with pytest.raises(StoreWouldWait):
        fresh(brief).series("t1", [])
    brief._brief.con = real  # type: ignore[attr-defined]
    assert len(fresh(brief).series("t1", [])) == 29


def test_a_brief_request_has_one_budget_for_all_its_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget is the request's (StoreAccess.run_brief starts one), not each read's: a request of
    256 selectors made 256 reads of a budget each and held the event loop for seconds. Work its
    caller does with what the store handed it (a regex over every metric name) is charged too."""
    from lossproof.query.promapi import PromApi, _selector
    from lossproof.store.embedded import read

    backend, writer, brief, model = _brief_sqlite(tmp_path)
    write(writer, [("t1", f"name_{i}", {}) for i in range(200)], model)
    assert len(fresh(brief).metric_names("t1")) == 201
    monkeypatch.setattr(read, "BRIEF_BUDGET", 100)
    fresh(brief)
    with pytest.raises(StoreWouldWait):
        for i in range(200):  # a few units each
            brief.label_names("t1", [[Matcher("i", "=", str(i % 20))]])
    assert fresh(brief).label_names("t1", [[Matcher("i", "=", "1")]]) == ["__name__", "i"]
    monkeypatch.setattr(read, "BRIEF_BUDGET", 1_000)
    selectors = [_selector(f'{{__name__=~"x{i}.*"}}') for i in range(10)]  # 10 x 201 names, 3 units each
    with pytest.raises(StoreWouldWait):
        PromApi._matcher_sets(fresh(brief), "t1", selectors)
    assert PromApi._matcher_sets(backend.open(readonly=True), "t1", selectors) == []
