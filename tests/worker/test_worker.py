"""The worker against the real embedded log and store, in-process: poison data never stops it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from lossproof.log.embedded import EmbeddedLogReader, EmbeddedLogWriter
from lossproof.protocol import native
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
