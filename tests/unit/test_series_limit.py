"""The series limit's bookkeeping (ingest/series_limit.py) with a real SQLite store behind the real
read pool: requests in flight hold their series, a failed one gives back only what nobody else holds,
and a slow or failing store never holds answers up."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from lossproof.config import Config, ServerConfig
from lossproof.httputil import ApiError
from lossproof.ingest import series_limit
from lossproof.ingest.metrics import IngestMetrics
from lossproof.ingest.series_limit import SeriesLimit, series_key
from lossproof.store.access import StoreAccess
from lossproof.store.base import Point, Store, WriteBatch
from lossproof.store.sqlite import SqliteStore

S1, S2, S3 = (series_key("m", {"s": str(i)}) for i in (1, 2, 3))


class Slow:
    """A store whose series reads take ``delay`` seconds, or fail with ``error``."""

    def __init__(self, store: Store, delay: float = 0.0, error: Exception | None = None) -> None:
        self.store, self.delay, self.error = store, delay, error

    def series_after(self, *args: Any) -> Any:
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.store.series_after(*args)

    def close(self) -> None:
        self.store.close()


def limiter(tmp_path: Path, limit: int, refresh: float = 60, **slow: Any) -> tuple[SeriesLimit, StoreAccess]:
    path = tmp_path / "store.db"
    SqliteStore(path).close()
    access = StoreAccess(lambda: Slow(SqliteStore(path, readonly=True), **slow))  # type: ignore[arg-type,return-value]
    cfg = Config(server=ServerConfig(max_series_per_tenant=limit, series_limit_refresh_seconds=refresh))
    return SeriesLimit(cfg, access, IngestMetrics(CollectorRegistry())), access


def test_a_failed_request_gives_back_only_what_no_other_request_holds(tmp_path: Path) -> None:
    async def run() -> None:
        lim, access = limiter(tmp_path, 1)
        a = await lim.admit("t", {S1}, "native")
        b = await lim.admit("t", {S1}, "native")  # in flight together: S1 is held twice
        lim.release("t", a)  # A's append failed...
        with pytest.raises(ApiError, match="series limit"):
            await lim.admit("t", {S2}, "native")  # ...but B still holds S1
        lim.confirm("t", b)
        with pytest.raises(ApiError):
            await lim.admit("t", {S2}, "native")
        assert await lim.admit("t", {S1}, "native") == set()  # known, confirmed: nothing to hold
        access.close()

    asyncio.run(run())


def test_series_of_requests_never_acknowledged_do_not_count(tmp_path: Path) -> None:
    async def run() -> None:
        lim, access = limiter(tmp_path, 2)
        lim.release("t", await lim.admit("t", {S1, S2}, "native"))
        lim.confirm("t", await lim.admit("t", {S2, S3}, "native"))
        with pytest.raises(ApiError, match="has 2 series"):
            await lim.admit("t", {S1}, "native")
        access.close()

    asyncio.run(run())


def test_series_stored_by_others_count_once_read(tmp_path: Path) -> None:
    """Another ingest process' series count once the store has them: read in the background every
    refresh interval, and waited for before a refusal."""

    async def run() -> None:
        lim, access = limiter(tmp_path, 3, refresh=0.2)
        assert await lim.admit("t", {S1}, "native") == {S1}  # the store is empty yet
        writer = SqliteStore(tmp_path / "store.db")
        writer.write_batch(WriteBatch(samples=[("t", Point("m", {"s": "2"}, 1, 1.0))]))
        writer.close()
        await asyncio.sleep(0.3)
        assert await lim.admit("t", {S1}, "native") == {S1}  # starts a read, does not wait for it
        await asyncio.sleep(0.3)
        assert await lim.admit("t", {S2}, "native") == set()  # stored: known, nothing held
        writer = SqliteStore(tmp_path / "store.db")
        writer.write_batch(WriteBatch(samples=[("t", Point("m", {"s": "3"}, 1, 1.0))]))
        writer.close()
        await asyncio.sleep(series_limit.REFUSAL_READ_WAIT + 0.1)
        # S1 held, S2 and (read before refusing) S3 stored: no room for a fourth
        with pytest.raises(ApiError, match="has 3 series"):
            await lim.admit("t", {series_key("m", {"s": "4"})}, "native")
        access.close()

    asyncio.run(run())


def test_a_slow_store_does_not_serialize_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(series_limit, "FIRST_READ_WAIT", 0.2)

    async def run() -> None:
        lim, access = limiter(tmp_path, 100, delay=2.0)
        started = time.monotonic()
        await asyncio.gather(*(lim.admit("t", {series_key("m", {"s": str(i)})}, "native") for i in range(5)))
        # each waited at most FIRST_READ_WAIT for the one read in flight, none for another's
        assert time.monotonic() - started < 1.5
        access.close()

    asyncio.run(run())


def test_a_failing_store_leaves_the_limit_to_what_is_known(tmp_path: Path) -> None:
    async def run() -> None:
        lim, access = limiter(tmp_path, 1, error=sqlite3.OperationalError("database is locked"))
        assert await lim.admit("t", {S1}, "native") == {S1}  # no 500: the store could not be read
        with pytest.raises(ApiError):
            await lim.admit("t", {S2}, "native")
        access.close()

    asyncio.run(run())
