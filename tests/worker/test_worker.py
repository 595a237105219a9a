"""The worker against the real embedded log and store, in-process: poison data never stops it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from lossproof.log.embedded import EmbeddedLogReader, EmbeddedLogWriter
from lossproof.protocol import native
from lossproof.store.base import StoreUnavailable
from lossproof.store.sqlite import SqliteStore
from lossproof.worker.loop import Worker


def _record(agent: str, seq: int, t: int) -> bytes:
    body = json.dumps(
        {
            "agent": agent,
            "reports": [{"seq": seq, "points": [{"metric": "m", "labels": {}, "t": t, "v": 1.0}]}],
        }
    ).encode()
    env = native.Envelope(1, "default", "native", native.JSON, "", 0, agent, [(seq, seq)], body)
    return native.encode_envelope(env)


def _append_all(log_dir: Path, values: list[bytes]) -> None:
    async def go() -> None:
        w = EmbeddedLogWriter(log_dir)
        await w.start()
        for v in values:
            await w.append(b"k", v)
        await w.close()

    asyncio.run(go())


def test_poison_records_are_dead_lettered_and_the_rest_stored(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    _append_all(
        log_dir,
        [
            _record("a", 1, 1000),
            b"\x00not an envelope",  # fails to decode
            _record("a", 2, 2**63 + 5),  # decodes, but no store can hold that timestamp
            _record("a", 3, 3000),
        ],
    )
    store = SqliteStore(tmp_path / "store.db")
    reader = EmbeddedLogReader(log_dir)
    worker = Worker(reader, store, CollectorRegistry())
    polled = reader.poll(100, 1.0)
    assert len(polled.records) == 4
    worker.process(polled)

    ledger = store.ledger("default", "a")
    assert ledger is not None
    assert ledger.stored == [(1, 1), (3, 3)]
    assert store.dead_letter_count() == 2
    assert [p[0] for s in store.query("default", "m", 0, 10_000, {}) for p in s.points] == [1000, 3000]
    # the position moved past everything: nothing is re-read, nothing blocks
    reader.close()
    reader = EmbeddedLogReader(log_dir)
    assert reader.poll(100, 0.2).records == []
    reader.close()
    store.close()


def _damage_root_page(db: Path, table: str) -> None:
    """Zero the b-tree header of ``table``'s root page: what a torn or rotted page reads as
    ("database disk image is malformed" on the next write that reaches it)."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    con.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(bytes(8))


def _cut_parts_short(db: Path) -> None:
    """Cut every part's blob after its directory: its columns gone (a torn write of its pages)."""
    con = sqlite3.connect(db)
    con.execute("UPDATE parts SET data = substr(data, 1, 72)")
    con.commit()
    con.close()


@pytest.mark.parametrize(("damage", "says"), [(lambda db: _damage_root_page(db, "parts"), "malformed")])
def test_a_damaged_store_keeps_the_records_instead_of_dead_lettering_them(
    tmp_path: Path, damage: Callable[[Path], None], says: str
) -> None:
    """A write that fails because the store is damaged (SQLite's "malformed" on a zeroed page) is
    the store's failure, not the records': before, the worker dead-lettered every record of every
    batch and committed past them, with the ledger saying nothing was missing."""
    log_dir, db = tmp_path / "log", tmp_path / "store.db"
    _append_all(log_dir, [_record("a", 1, 1000), _record("a", 2, 1050)])
    store = SqliteStore(db)
    reader = EmbeddedLogReader(log_dir)
    Worker(reader, store, CollectorRegistry()).process(reader.poll(100, 1.0))
    reader.close()
    store.close()
    damage(db)
    # older than the newest point stored: the write reads the stored points of the series
    _append_all(log_dir, [_record("a", 3, 1010), _record("a", 4, 1011)])

    store = SqliteStore(db)
    reader = EmbeddedLogReader(log_dir)
    polled = reader.poll(100, 1.0)
    assert [r.offset for r in polled.records] == [2, 3]
    with pytest.raises(StoreUnavailable, match=says):
        Worker(reader, store, CollectorRegistry()).process(polled)
    reader.close()
    reader = EmbeddedLogReader(log_dir)  # nothing committed past them: read again once repaired
    assert [r.offset for r in reader.poll(100, 1.0).records] == [2, 3]
    reader.close()
    assert store.dead_letter_count() == 0
    store.close()


def test_a_damaged_part_a_write_reads_is_set_aside_and_counted(tmp_path: Path) -> None:
    """A part whose columns are cut short, which a write reads to tell stored points apart: set
    aside into damaged_chunks, and the records stored (before: StoreUnavailable, the batch retried
    for as long as the part was there, the partition stopped), counted on the worker's /metrics."""
    log_dir, db = tmp_path / "log", tmp_path / "store.db"
    _append_all(log_dir, [_record("a", 1, 1000), _record("a", 2, 1050)])
    store = SqliteStore(db)
    reader = EmbeddedLogReader(log_dir)
    Worker(reader, store, CollectorRegistry()).process(reader.poll(100, 1.0))
    reader.close()
    store.close()
    _cut_parts_short(db)
    # older than the newest point stored: the write reads the stored points of the series
    _append_all(log_dir, [_record("a", 3, 1010), _record("a", 4, 1011)])

    store = SqliteStore(db)
    reader = EmbeddedLogReader(log_dir)
    registry = CollectorRegistry()
    Worker(reader, store, registry).process(reader.poll(100, 1.0))
    reader.close()
    assert registry.get_sample_value("lossproof_store_chunks_quarantined_total", {"by": "write"}) == 1
    assert registry.get_sample_value("lossproof_store_chunks_quarantined_total", {"by": "compaction"}) == 0
    ledger = store.ledger("default", "a")
    assert ledger is not None and ledger.stored == [(1, 4)]
    # the cut part's points (reports 1 and 2) are in the quarantine table, not answered
    assert [p[0] for s in store.query("default", "m", 0, 10_000, {}) for p in s.points] == [1010, 1011]
    con = sqlite3.connect(db)
    assert con.execute("SELECT source, n FROM damaged_chunks").fetchall() == [("parts", 2)]
    con.close()
    assert store.dead_letter_count() == 0
    store.close()
