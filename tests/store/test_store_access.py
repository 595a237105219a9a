"""#15: store reads of the query API run concurrently: a short query is not stuck behind a long one,
and the ledger look-ups of the ack path are not stuck behind either."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from lossproof.store.access import StoreAccess
from lossproof.store.sqlite import SqliteStore


def test_a_short_read_is_not_stuck_behind_a_long_one(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "s.db").close()
    access = StoreAccess(lambda: SqliteStore(tmp_path / "s.db", readonly=True), read_threads=2)
    release = threading.Event()

    def slow(s: object) -> str:
        release.wait(30)
        return "long"

    async def main() -> None:
        long = asyncio.ensure_future(access.run(slow))
        await asyncio.sleep(0)  # the long read is on a thread now
        assert await asyncio.wait_for(access.run(lambda s: s.metric_names("t1")), 10) == []
        assert await asyncio.wait_for(access.replay_wanted("t1", "a1", 10**15), 10) == []
        assert not long.done()
        release.set()
        assert await long == "long"

    try:
        asyncio.run(main())
    finally:
        release.set()
        access.close()


def test_each_read_thread_has_its_own_store_and_close_closes_them(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "s.db").close()
    opened: list[SqliteStore] = []

    def open_store() -> SqliteStore:
        opened.append(SqliteStore(tmp_path / "s.db", readonly=True))
        return opened[-1]

    access = StoreAccess(open_store, read_threads=3)
    barrier = threading.Barrier(3, timeout=10)

    def meet(s: SqliteStore) -> int:
        barrier.wait()  # three reads at once: three threads, so three handles
        return id(s)

    async def main() -> set[int]:
        return set(await asyncio.gather(*(access.run(meet) for _ in range(3))))

    assert len(asyncio.run(main())) == 3
    access.close()
    assert len(opened) == 3
    for s in opened:
        try:
            s.metric_names("t1")
        except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
            continue
        raise AssertionError("a store handle was left open")
