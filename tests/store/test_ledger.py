"""Ledger range arithmetic against a set-based model (hypothesis)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof.store import ledger as lg
from lossproof.store.base import Ledger

seqs = st.integers(min_value=1, max_value=80)
seq_sets = st.sets(seqs, max_size=40)
raw_ranges = st.lists(st.tuples(seqs, seqs).map(lambda r: (min(r), max(r))), max_size=8)
tags = st.sampled_from(["a", "b", "c"])


def expand(ranges: Iterable[tuple[int, int]]) -> set[int]:
    return {s for a, b in ranges for s in range(a, b + 1)}


def expand_tagged(ranges: Iterable[tuple[int, int, object]]) -> dict[int, object]:
    out: dict[int, object] = {}
    for a, b, tag in ranges:
        for s in range(a, b + 1):
            assert s not in out, "tagged ranges overlap"
            out[s] = tag
    return out


def assert_normalized(ranges: list[tuple[int, int]]) -> None:
    for a, b in ranges:
        assert a <= b
    for (_, b1), (a2, _) in itertools.pairwise(ranges):
        assert a2 > b1 + 1, f"not merged: {ranges}"


def assert_tagged_normalized(ranges: list[tuple[int, int, object]]) -> None:
    for a, b, _ in ranges:
        assert a <= b
    for (_, b1, t1), (a2, _, t2) in itertools.pairwise(ranges):
        assert a2 > b1, f"overlap or unsorted: {ranges}"
        assert not (a2 == b1 + 1 and t1 == t2), f"adjacent equal tags not merged: {ranges}"


def tagged_from(d: dict[int, object]) -> list[tuple[int, int, object]]:
    return lg.merge_tagged((s, s, t) for s, t in d.items())


@given(raw_ranges)
def test_normalize(rs: list[tuple[int, int]]) -> None:
    out = lg.normalize(rs)
    assert_normalized(out)
    assert expand(out) == expand(rs)
    assert lg.count(out) == len(expand(rs))


@given(seq_sets)
def test_from_seqs(s: set[int]) -> None:
    out = lg.from_seqs(s)
    assert_normalized(out)
    assert expand(out) == s


@given(seq_sets, seq_sets)
def test_subtract_intersect(a: set[int], b: set[int]) -> None:
    ra, rb = lg.from_seqs(a), lg.from_seqs(b)
    sub = lg.subtract(ra, rb)
    assert_normalized(sub)
    assert expand(sub) == a - b
    inter = lg.intersect(ra, rb)
    assert_normalized(inter)
    assert expand(inter) == a & b


@given(seq_sets, seqs)
def test_contains(a: set[int], s: int) -> None:
    assert lg.contains(lg.from_seqs(a), s) == (s in a)


@given(seq_sets, seq_sets)
def test_holes(stored: set[int], lost: set[int]) -> None:
    out = lg.holes(lg.from_seqs(stored), lg.from_seqs(lost))
    assert_normalized(out)
    known = stored | lost
    assert expand(out) == (set(range(1, max(known) + 1)) - known if known else set())


@given(st.dictionaries(seqs, tags, max_size=40), seq_sets)
def test_tagged_subtract_intersect(d: dict[int, object], remove: set[int]) -> None:
    tr = tagged_from(d)
    assert_tagged_normalized(tr)
    assert expand_tagged(tr) == d
    rr = lg.from_seqs(remove)
    assert expand_tagged(lg.subtract_tagged(tr, rr)) == {s: t for s, t in d.items() if s not in remove}
    assert expand_tagged(lg.intersect_tagged(tr, rr)) == {s: t for s, t in d.items() if s in remove}
    assert lg.untag(tr) == lg.from_seqs(d)


@given(
    st.dictionaries(seqs, tags, max_size=40),
    st.lists(st.tuples(seqs, seqs, tags).map(lambda r: (min(r[:2]), max(r[:2]), r[2])), max_size=6),
)
def test_union_tagged_earlier_wins(d: dict[int, object], added: list[tuple[int, int, object]]) -> None:
    out = lg.union_tagged(tagged_from(d), added)
    assert_tagged_normalized(out)
    model = dict(d)
    for a, b, tag in added:
        for s in range(a, b + 1):
            model.setdefault(s, tag)
    assert expand_tagged(out) == model


@given(seq_sets, st.dictionaries(seqs, st.integers(0, 3), max_size=40), st.integers(10, 12))
def test_retag(ranges: set[int], old: dict[int, object], default: int) -> None:
    out = lg.retag(lg.from_seqs(ranges), tagged_from(old), default)
    assert_tagged_normalized(out)
    assert expand_tagged(out) == {s: old.get(s, default) for s in ranges}


# --- advance: a sequence of batches against a model --------------------------------------------

step = st.tuples(
    st.sets(seqs, max_size=10),  # seqs stored in this batch
    st.lists(st.tuples(st.integers(-2, 80), seqs, st.sampled_from(["spool", "disk"])), max_size=3),
)


@settings(max_examples=300)
@given(st.lists(step, min_size=1, max_size=8))
def test_advance_matches_model(steps: list[tuple[set[int], list[tuple[int, int, str]]]]) -> None:
    ledger = lg.EMPTY
    stored: set[int] = set()
    lost: dict[int, object] = {}
    missing: dict[int, object] = {}
    for now, (new, lost_ranges) in enumerate(steps, start=1000):
        ledger = lg.advance(ledger, lg.from_seqs(new), lost_ranges, now)
        # the model
        stored |= new
        lost = {s: r for s, r in lost.items() if s not in stored}
        for a, b, why in lost_ranges:
            for s in range(max(a, 1), b + 1):
                if s not in stored:
                    lost.setdefault(s, why)
        top = max(stored | set(lost), default=0)
        missing = {s: missing.get(s, now) for s in range(1, top + 1) if s not in stored and s not in lost}
        # compare
        assert_normalized(ledger.stored)
        assert_tagged_normalized(list(ledger.lost))
        assert_tagged_normalized(list(ledger.missing))
        assert expand(ledger.stored) == stored
        assert expand_tagged(ledger.lost) == lost
        assert expand_tagged(ledger.missing) == missing


def test_advance_examples() -> None:
    # seq 1 missing from the start; a new hole gets now, an old hole keeps its time
    led = lg.advance(lg.EMPTY, [(2, 3)], [], 100)
    assert led == Ledger(stored=[(2, 3)], missing=[(1, 1, 100)], lost=[])
    led = lg.advance(led, [(6, 6)], [], 200)
    assert led.missing == [(1, 1, 100), (4, 5, 200)]
    # filling a hole, giving up on another, then the lost report arrives after all
    led = lg.advance(led, [(1, 1)], [(4, 4, "spool full")], 300)
    assert led == Ledger(stored=[(1, 3), (6, 6)], missing=[(5, 5, 200)], lost=[(4, 4, "spool full")])
    led = lg.advance(led, [(4, 5)], [], 400)
    assert led == Ledger(stored=[(1, 6)], missing=[], lost=[])
    # a lost range beyond everything stored raises the top without creating holes inside it
    led = lg.advance(led, [], [(7, 9, "disk")], 500)
    assert led == Ledger(stored=[(1, 6)], missing=[], lost=[(7, 9, "disk")])
