"""Report digests made before ``DIGEST_KIND`` (16 bytes of BLAKE2b) still tell a resend from a reused
seq: a store written by an older lossproof holds them, and its agents resend what they were not
sure was stored after the upgrade. The worker's plan (``ledger.sort_reports``) and ingest's check
(``protocol.native.conflicting``) compare with either kind; here through a real embedded store
whose digests are made old, and through ingest's check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec

from lossproof.points import DIGEST_KIND, Point, encode_points, report_digest, same_report
from lossproof.protocol import native
from lossproof.protocol.decode import decode_report
from lossproof.store.base import ReportWrite, WriteBatch, WriteResult
from lossproof.store.sqlite import SqliteStore

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


def test_a_store_of_old_digests_counts_a_resend_as_a_duplicate_and_other_content_as_a_conflict(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    try:
        store.write_batch(WriteBatch(reports=[ReportWrite("t1", "a1", 1, pts(1.0))], now_ms=1000))
        store._con.execute("UPDATE reports SET digest = ?", (legacy(pts(1.0)),))  # as an old store holds it
        assert store.stored_digests("t1", "a1", "", [(1, 1)]) == {1: legacy(pts(1.0))}

        again = store.write_batch(WriteBatch(reports=[ReportWrite("t1", "a1", 1, pts(1.0))], now_ms=2000))
        assert again == WriteResult(points_written=0, reports_stored=0, reports_duplicate=1)
        assert store.conflicts("t1") == []

        other = store.write_batch(WriteBatch(reports=[ReportWrite("t1", "a1", 1, pts(2.0))], now_ms=3000))
        assert other == WriteResult(0, 0, 0, reports_conflict=1)
        [c] = store.conflicts("t1")
        assert c.seq == 1 and c.digest == report_digest(pts(2.0))
    finally:
        store.close()


def test_ingest_refuses_other_content_for_a_seq_stored_with_an_old_digest() -> None:
    req = native.RequestIn(
        "a1",
        [native.ReportIn(1, pts(1.0)), native.ReportIn(2, pts(2.0))],  # type: ignore[arg-type]
    )
    old = {1: legacy(pts(1.0)), 2: legacy(pts(1.0))}
    assert native.conflicting(req, old) == [(2, 2)]
    new = {1: report_digest(pts(1.0)), 2: report_digest(pts(1.0))}
    assert native.conflicting(req, new) == [(2, 2)]
