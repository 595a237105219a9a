"""Report digests made before ``DIGEST_KIND`` (16 bytes of BLAKE2b) still tell a resend from a reused
seq: a store written by an older lossproof holds them, and its agents resend what they were not
sure was stored after the upgrade. The worker's plan (``ledger.sort_reports``) and ingest's check
(``protocol.native.conflicting``) compare with either kind; here through a real embedded store
whose digests are made old (both stores), and through ingest's check."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lossproof.points import DIGEST_KIND, Point, encode_points, report_digest, same_report
from lossproof.protocol import native
from lossproof.protocol.decode import decode_report
from lossproof.store.base import ReportWrite, Store, WriteBatch, WriteResult
from lptest.store_backends import BACKENDS, StoreBackend

T0 = 1_767_225_600_000


def pts(v: float) -> list[Point]:
    return [Point("cpu", {"host": "h1"}, T0 + i, v) for i in range(3)]


def legacy(points: list[Point]) -> bytes:
    return hashlib.blake2b(encode_points(points), digest_size=16).digest()


def test_a_digest_names_its_kind_and_both_kinds_compare() -> None:
    d = report_digest(pts(1.0))
    assert len(d) == 17 and d[:1] == DIGEST_KIND
    # a native report decoded in Rust gets the very same digest
    raw = msgspec.msgpack.encode({"seq": 1, "points": pts(1.0)})
    _, _, block = decode_report(raw, native.MSGPACK)
    assert report_digest(block) == d
    for points in (pts(1.0), block):
        assert same_report(points, d) and same_report(points, legacy(pts(1.0)))
        assert not same_report(points, report_digest(pts(2.0)))
        assert not same_report(points, legacy(pts(2.0)))


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Store]]:
    b: StoreBackend = BACKENDS[request.param](tmp_path)
    yield request.param, b.open()
    b.close_all()


def make_old(kind: str, store: Any, table: str, digest: bytes) -> None:
    """Every digest of ``table`` replaced by ``digest``, as an older lossproof wrote it."""
    if kind == "sqlite":
        store._con.execute(f"UPDATE {table} SET digest = ?", (digest,))
    else:
        with store._conn() as conn, conn.transaction():
            conn.execute(f"UPDATE {table} SET digest = %s", (digest,))


def write(store: Store, v: float, now: int) -> WriteResult:
    return store.write_batch(WriteBatch(reports=[ReportWrite("t1", "a1", 1, pts(v))], now_ms=now))


def test_a_store_of_old_digests_tells_resends_from_conflicts_and_keeps_a_conflict_once(
    backend: tuple[str, Store],
) -> None:
    kind, store = backend
    write(store, 1.0, 1000)
    assert write(store, 2.0, 1500) == WriteResult(0, 0, 0, reports_conflict=1)
    make_old(kind, store, "reports", legacy(pts(1.0)))
    make_old(kind, store, "conflicts", legacy(pts(2.0)))
    assert store.stored_digests("t1", "a1", "", [(1, 1)]) == {1: legacy(pts(1.0))}

    assert write(store, 1.0, 2000) == WriteResult(points_written=0, reports_stored=0, reports_duplicate=1)
    # the conflict recorded before, read again (a worker re-reading its batch, a replay): kept once
    write(store, 2.0, 2500)
    assert [len(c.digest) for c in store.conflicts("t1")] == [16]
    assert store.agents("t1")[0].conflict_reports == 1
    # other content: a new conflict
    assert write(store, 3.0, 3000) == WriteResult(0, 0, 0, reports_conflict=1)
    old, new = store.conflicts("t1")
    assert old.digest == legacy(pts(2.0)) and new.digest == report_digest(pts(3.0))
    assert store.agents("t1")[0].conflict_reports == 2
    [series] = store.query("t1", "cpu", 0, 2 * T0, {})
    assert [v for _, v in series.points] == [1.0, 1.0, 1.0]  # the stored report untouched


def test_ingest_refuses_other_content_for_a_seq_stored_with_an_old_digest() -> None:
    req = native.RequestIn(
        "a1",
        [native.ReportIn(1, pts(1.0)), native.ReportIn(2, pts(2.0))],  # type: ignore[arg-type]
    )
    old = {1: legacy(pts(1.0)), 2: legacy(pts(1.0))}
    assert native.conflicting(req, old) == [(2, 2)]
    new = {1: report_digest(pts(1.0)), 2: report_digest(pts(1.0))}
    assert native.conflicting(req, new) == [(2, 2)]
