"""The log contract (see ``lossproof/log/base.py``), run against every backend harness.

Everything backend-specific is behind ``log_harness.LogHarness``; these tests only use the
``LogWriter`` / ``LogReader`` interface plus the harness.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lossproof.log.base import LogCorrupt, Position
from lptest.log_harness import HARNESSES, LogHarness, gap_offsets, make_value, read_all, run


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogHarness]:
    h = HARNESSES[request.param](tmp_path)
    yield h
    h.close()


class Written(dict[int, tuple[bytes, bytes]]):
    """{offset: (key, value)} of records appended by one writer, all in partition ``partition``."""

    partition: int = 0


async def append_seq(h: LogHarness, n: int, *, start_tag: str = "", size: int = 100, **opts: bool) -> Written:
    """Append ``n`` records one after the other; returns {offset: (key, value)}."""
    w = h.writer(**opts)
    await w.start()
    out = Written()
    try:
        for i in range(n):
            key, value = f"k{i % 7}".encode(), make_value(f"{start_tag}{i}", size)
            pos = await w.append(key, value)
            out[pos.offset] = (key, value)
            out.partition = pos.partition
    finally:
        await w.close()
    return out


def test_append_then_read_back_in_order(harness: LogHarness) -> None:
    items = [
        (b"", b""),
        (b"agent-1", b"\x00\x01\x02"),
        (b"k" * 300, make_value("big", 200_000)),
        *((f"key{i}".encode(), make_value(str(i), i * 37)) for i in range(60)),
    ]

    async def main() -> list[Position]:
        w = harness.writer()
        await w.start()
        assert w.healthy() == (True, "")
        positions = [await w.append(k, v) for k, v in items]
        await w.close()
        return positions

    positions = run(main())
    offsets = [p.offset for p in positions]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    r = harness.reader()
    records, gaps = read_all(r)
    r.close()
    assert not gaps
    assert [(x.partition, x.offset) for x in records] == [(p.partition, p.offset) for p in positions]
    assert [(x.key, x.value) for x in records] == items
    now = time.time() * 1000
    assert all(now - 60_000 < x.timestamp_ms <= now + 1000 for x in records)


def test_commit_and_resume_without_skip_or_reread(harness: LogHarness) -> None:
    written = run(append_seq(harness, 40))
    offsets = sorted(written)
    r = harness.reader("g1")
    first = r.poll(15, 2.0)
    second = r.poll(10, 2.0)
    got = first.records + second.records
    assert [x.offset for x in got] == offsets[: len(got)]
    r.commit(first.next_offsets())  # second batch read but not committed: must be re-read
    r.close()

    r2 = harness.reader("g1")
    records, gaps = read_all(r2)
    assert not gaps
    assert [x.offset for x in records] == offsets[len(first.records) :]
    assert all((x.key, x.value) == written[x.offset] for x in records)
    r2.commit({written.partition: offsets[-1] + 1})
    assert r2.lag().records == 0
    r2.close()

    r3 = harness.reader("g1")
    assert r3.poll(10, 0.2).records == []  # everything committed: nothing is read again
    r3.close()

    other = harness.reader("another-group")  # groups are independent
    records, _ = read_all(other)
    other.close()
    assert [x.offset for x in records] == offsets


def test_readers_of_one_group_never_read_a_record_twice(harness: LogHarness) -> None:
    """Two readers of one group share its partitions (or one stands by); once one closes, the other
    carries on from its last commit: every record read exactly once, as each batch was committed."""
    written = run(append_seq(harness, 30))
    r1 = harness.reader("solo")
    r2 = harness.reader("solo")
    seen: list[tuple[int, int]] = []
    for r in (r1, r2, r1, r2):
        res = r.poll(10, 0.5)
        seen += [(x.partition, x.offset) for x in res.records]
        r.commit(res.next_offsets())
    r1.close()
    deadline = time.monotonic() + 20
    while len(seen) < len(written) and time.monotonic() < deadline:
        res = r2.poll(100, 0.2)
        seen += [(x.partition, x.offset) for x in res.records]
        r2.commit(res.next_offsets())
    r2.close()
    assert sorted(seen) == [(written.partition, o) for o in sorted(written)]


@pytest.mark.process
def test_acknowledged_appends_survive_kill9(harness: LogHarness) -> None:
    acked = []
    for round_ in range(2):
        proc = harness.spawn_appender(concurrency=16, value_size=300)
        proc.wait_acks(300 + 150 * round_)
        time.sleep(random.uniform(0.0, 0.15))
        acked += proc.kill9()

    async def after_restart() -> Position:
        w = harness.writer()
        await w.start()
        pos = await w.append(b"after", b"restart")
        await w.close()
        return pos

    pos = run(after_restart())
    offsets = [a.offset for a in acked]
    assert len(set(offsets)) == len(offsets), "an offset was handed out twice"
    assert pos.offset > max(offsets), "an offset was reused after kill -9"
    r = harness.reader()
    records, gaps = read_all(r, batch=1000)
    r.close()
    assert not gaps
    by_offset = {x.offset: x for x in records}
    missing = [a.offset for a in acked if a.offset not in by_offset]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    for a in acked:
        assert (by_offset[a.offset].key, by_offset[a.offset].value) == (a.key, a.value)
    assert (by_offset[pos.offset].key, by_offset[pos.offset].value) == (b"after", b"restart")


def test_concurrent_appends_share_durability_round_trips(harness: LogHarness) -> None:
    async def main() -> tuple[list[Position], float | None]:
        w = harness.writer()
        await w.start()
        positions = await asyncio.gather(
            *(w.append(f"a{i % 10}".encode(), make_value(str(i), 500)) for i in range(200))
        )
        fsyncs = harness.fsync_count(w)
        await w.close()
        return list(positions), fsyncs

    positions, fsyncs = run(main())
    assert len({p.offset for p in positions}) == 200
    if fsyncs is not None:
        assert 1 <= fsyncs <= 20, f"{fsyncs} fsyncs for 200 concurrent appends: no group commit"
    r = harness.reader()
    records, gaps = read_all(r, batch=500)
    r.close()
    assert not gaps and len(records) == 200
    by_key: dict[bytes, list[int]] = {}
    for x in records:
        by_key.setdefault(x.key, []).append(int(x.value.split(b">")[0][1:]))
    for seq in by_key.values():  # same key: append order kept
        assert seq == sorted(seq)


def test_retention_never_deletes_uncommitted_data(harness: LogHarness) -> None:
    async def main() -> None:
        w = harness.writer(small_segments=True, retention=True)
        await w.start()
        written = {}
        for i in range(60):
            value = make_value(str(i), 200)
            pos = await w.append(b"k", value)
            written[pos.offset] = value
        offsets = sorted(written)
        r = harness.reader("ret")
        res = r.poll(40, 2.0)
        assert len(res.records) == 40
        r.poll(10, 1.0)  # read further without committing
        commit_at = offsets[25]
        r.commit({pos.partition: commit_at})
        r.close()
        # keep appending (segments roll, retention runs) until committed segments are gone
        deadline = time.monotonic() + 10
        while True:
            written[(await w.append(b"k", b"more")).offset] = b"more"
            earliest = harness.earliest_offset()
            if earliest is None or earliest > offsets[0] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        await w.close()
        if earliest is not None:
            assert earliest > offsets[0], "committed segments were never deleted"
            assert earliest <= commit_at, "retention deleted uncommitted data"
        r2 = harness.reader("ret")
        records, gaps = read_all(r2)
        r2.close()
        assert not gaps
        assert [x.offset for x in records] == [o for o in sorted(written) if o >= commit_at]
        assert all(x.value == written[x.offset] for x in records)

    run(main())


def test_missing_data_is_reported_as_gap_not_raised(harness: LogHarness) -> None:
    written = run(append_seq(harness, 40, small_segments=True))
    part = written.partition
    offsets = sorted(written)
    r = harness.reader("g")
    r.commit({part: offsets[3]})
    r.close()
    lost = set(offsets[10:25])
    harness.lose(offsets[10], offsets[24])
    later = run(append_seq(harness, 3, start_tag="later", small_segments=True))  # the writer still starts
    assert min(later) > max(offsets)

    r = harness.reader("g")
    records, gaps = read_all(r)
    r.close()
    got = [x.offset for x in records]
    assert got == [o for o in offsets[3:] if o not in lost] + sorted(later)
    assert lost <= gap_offsets(gaps), "lost records were skipped silently"
    assert not gap_offsets(gaps) & set(got)
    assert all(g.reason and g.partition == part and g.detected_ms > 0 for g in gaps)

    # committed position below the earliest record that still exists
    r = harness.reader("h")
    r.commit({part: offsets[2]})
    r.close()
    harness.lose(0, offsets[8])
    r = harness.reader("h")
    records, gaps = read_all(r)
    r.close()
    assert set(range(offsets[2], offsets[8] + 1)) <= gap_offsets(gaps)
    assert records and records[0].offset == offsets[9]


def test_torn_tail_is_truncated_on_recovery(harness: LogHarness) -> None:
    written = run(append_seq(harness, 20))
    harness.tear_tail()

    async def main() -> tuple[Position, float | None]:
        w = harness.writer()
        await w.start()
        truncated = harness.recovery_truncated_bytes(w)
        pos = await w.append(b"new", b"after-torn-tail")
        await w.close()
        return pos, truncated

    pos, truncated = run(main())
    assert pos.offset > max(written)
    if truncated is not None:
        assert truncated > 0
    r = harness.reader()
    records, gaps = read_all(r)
    r.close()
    assert not gaps
    assert {x.offset: (x.key, x.value) for x in records} == {
        **written,
        pos.offset: (b"new", b"after-torn-tail"),
    }


@pytest.mark.parametrize("which", ["early", "late"])
def test_corruption_in_the_middle_is_detected(harness: LogHarness, which: str) -> None:
    written = run(append_seq(harness, 30, small_segments=True))
    offsets = sorted(written)
    victim = offsets[3] if which == "early" else offsets[-3]
    name = harness.corrupt(victim)

    async def start() -> LogCorrupt | None:
        w = harness.writer(small_segments=True)
        try:
            await w.start()
        except LogCorrupt as e:
            return e
        await w.close()
        return None

    refused = run(start())
    if refused is not None:
        assert name in str(refused) and "byte" in str(refused)
    r = harness.reader()
    records, gaps = read_all(r)  # reading never raises on damage, whether or not the writer refused
    r.close()
    for x in records:
        assert (x.key, x.value) == written[x.offset], "corrupted data returned as valid"
    got = {x.offset for x in records}
    assert victim not in got
    assert victim in gap_offsets(gaps), "corruption skipped silently"
    assert set(offsets) - {victim} <= got
    assert any(name in g.reason for g in gaps)
