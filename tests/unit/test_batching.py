"""How `lossproof replay` merges one agent's journal records into one request (fallback/batching.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from lossproof.fallback import batching
from lossproof.fallback import journal as jn
from lossproof.protocol import native
from lossproof.protocol.compression import compress, decompress

SPOOL = {
    "pending_reports": 1,
    "pending_bytes": 10,
    "oldest_pending_ms": 5,
    "first_pending_seq": 2,
    "last_seq": 2,
}


def body_of(fields: dict[str, Any], ctype: str) -> bytes:
    return msgspec.msgpack.encode(fields) if ctype == native.MSGPACK else msgspec.json.encode(fields)


def entry(
    seqs: list[int],
    agent: str = "a",
    ctype: str = native.MSGPACK,
    enc: str = "zstd",
    tenant: str = "t",
    points: int = 2,
    raw: bytes | None = None,
    **extra: Any,
) -> jn.Entry:
    reports = [
        {
            "seq": s,
            "points": [{"metric": "m", "t": 1_767_225_600_000 + s, "v": s + i / 3} for i in range(points)],
        }
        for s in seqs
    ]
    data = raw if raw is not None else body_of({"agent": agent, "reports": reports, **extra}, ctype)
    ranges = [(s, s) for s in seqs]
    return jn.Entry(
        tenant,
        agent,
        ctype,
        "" if enc == "identity" else enc,
        ranges,
        len(seqs),
        points * len(seqs),
        compress(data, enc),
    )


def record(e: jn.Entry) -> jn.Record:
    return jn.Record(0, 0, 100 + len(e.body), 0, 0, e)


def decoded(body: bytes, ctype: str, enc: str) -> native.RequestIn:
    return native.decode(decompress(body, enc, 2**30), ctype)


@pytest.mark.parametrize("ctype", [native.MSGPACK, native.JSON])
@pytest.mark.parametrize("enc", ["zstd", "identity"])
def test_merged_body_holds_every_report_dropped_range_and_the_last_spool(ctype: str, enc: str) -> None:
    es = [
        entry([1, 2], ctype=ctype, enc=enc, incarnation="inc-1", first_seq=1),
        entry(
            [3], ctype=ctype, enc=enc, incarnation="inc-1", first_seq=1, spool=SPOOL, future_field=[1, "x"]
        ),
        entry(
            [4],
            ctype=ctype,
            enc=enc,
            incarnation="inc-1",
            first_seq=1,
            dropped=[{"first": 9, "last": 9, "reason": "r"}],
        ),
    ]
    with pytest.raises(batching.CannotMerge, match="differ"):
        batching.merge(es, 2**20)  # one has a field the others have not
    es[1] = entry([3], ctype=ctype, enc=enc, incarnation="inc-1", first_seq=1, spool=SPOOL)
    body = batching.merge(es, 2**20)
    got = decoded(body, ctype, enc)
    assert [r.seq for r in got.reports] == [1, 2, 3, 4]
    assert (got.agent, got.incarnation, got.first_seq) == ("a", "inc-1", 1)
    assert [(d.first, d.last, d.reason) for d in got.dropped] == [(9, 9, "r")]
    assert got.spool is not None and got.spool.first_pending_seq == 2  # the last one given
    for r, want in zip(got.reports, [1, 2, 3, 4], strict=True):
        assert [p.v for p in r.points] == [want + i / 3 for i in range(2)]
    assert body.startswith(b"\x28\xb5\x2f\xfd") == (enc == "zstd")  # zstd again, or as it was


def test_reports_are_copied_as_encoded() -> None:
    # JSON as an agent may write it: escapes, exponents, spacing; every byte of a report kept
    a = b'{"agent":"a","reports":[ {"seq":1,"points":[{"metric":"m\\u00e9","t":1767225600000,"v":1.0e-3}]} ]}'
    b = b'{"reports":[{"seq":2,"points":[{"metric":"n","t":1767225600001,"v":-0.0,"labels":{"k":"\\n"}}]}],'
    b += b'"agent":"a"}'
    es = [
        entry([1], ctype=native.JSON, enc="identity", raw=a),
        entry([2], ctype=native.JSON, enc="identity", raw=b),
    ]
    body = batching.merge(es, 2**20)
    assert b'{"seq":1,"points":[{"metric":"m\\u00e9","t":1767225600000,"v":1.0e-3}]}' in body
    assert b'{"seq":2,"points":[{"metric":"n","t":1767225600001,"v":-0.0,"labels":{"k":"\\n"}}]}' in body


@pytest.mark.parametrize(
    "second, why",
    [
        (entry([2], incarnation="other"), "differ"),
        (entry([2], first_seq=5), "differ"),
        (entry([2], raw=msgspec.msgpack.encode({"agent": "a", "dropped": []})), "without reports"),
        (jn.Entry("t", "a", native.MSGPACK, "zstd", [(2, 2)], 1, 1, b"\x28\xb5\x2f\xfd broken"), "zstd"),
        (entry([2], raw=b"\xc1"), "MessagePack"),  # not msgpack
        (entry([2], agent="b"), "agents"),
        (entry([2], enc="identity"), "agents or encodings"),
    ],
)
def test_records_that_may_not_be_merged_are_not(second: jn.Entry, why: str) -> None:
    with pytest.raises(batching.CannotMerge, match=why):
        batching.merge([entry([1]), second], 2**20)


@pytest.mark.parametrize(
    "field, a, b", [("incarnation", "x", "y"), ("first_seq", 1, 5), ("incarnation", "x", None)]
)
def test_records_whose_fields_have_other_values_are_not_merged(field: str, a: Any, b: Any) -> None:
    with pytest.raises(batching.CannotMerge, match="differ"):
        batching.merge([entry([1], **{field: a}), entry([2], **{field: b})], 2**20)
    batching.merge([entry([1], **{field: a}), entry([2], **{field: a})], 2**20)


def test_a_record_refused_alone_for_what_merging_hides_is_not_merged() -> None:
    # only the last spool is sent, so each other one is checked as the main ingest would; a record
    # with nothing to do (no reports, no dropped, no spool) is refused alone
    bad = {**SPOOL, "first_pending_seq": 9, "last_seq": 2}
    with pytest.raises(batching.CannotMerge, match="first_pending_seq 9 > last_seq 2"):
        batching.merge([entry([1], spool=bad), entry([2], spool=SPOOL)], 2**20)
    with pytest.raises(batching.CannotMerge, match="nothing to do"):
        batching.merge([entry([1]), entry([])], 2**20)
    batching.merge([entry([1]), entry([], spool=SPOOL)], 2**20)  # a spool alone is something


def test_a_merged_body_is_bounded() -> None:
    es = [entry([s], points=200) for s in range(1, 6)]
    one = len(decompress(es[0].body, "zstd", 2**30))
    batching.merge(es, 5 * one)
    with pytest.raises(batching.CannotMerge, match=r"limit|exceeds"):
        batching.merge(es, 5 * one - 1)


def test_batches_group_one_agent_s_records_in_journal_order_up_to_the_limits() -> None:
    recs = [
        record(entry([1], agent="a")),  # 0
        record(entry([1], agent="b")),  # 1
        record(entry([2], agent="a")),  # 2
        record(entry([1], agent="g", enc="gzip")),  # 3: never merged
        record(entry([2], agent="g", enc="gzip")),  # 4
        record(entry([3], agent="a", tenant="other")),  # 5: another tenant's a
        record(entry([4], agent="a")),  # 6
        record(entry([5], agent="a")),  # 7: over 6 points: a new batch
        record(entry([1], agent="j", ctype=native.JSON)),  # 8
        record(entry([1], agent="")),  # 9: no agent
        record(entry([6], agent="a", points=9)),  # 10: more points than a batch: alone
        record(entry([7], agent="a")),  # 11
    ]
    assert batching.batches(recs, 6) == [[0, 2, 6], [1], [3], [4], [5], [7], [8], [9], [10], [11]]
    assert batching.batches(recs, 0) == [[i] for i in range(len(recs))]
    # a record as stored larger than the bytes a batch may hold is alone too (and ends the batch
    # before it: batches keep their records' order)
    big = entry([8], agent="a", raw=b"x" * (batching.MAX_BATCH_BYTES + 1), enc="identity")
    small = entry([9], agent="a", enc="identity")
    assert batching.batches([record(small), record(big), record(small)], 10**6) == [[0], [1], [2]]


@pytest.mark.parametrize("ctype", [native.MSGPACK, native.JSON])
def test_a_null_spool_is_no_spool_and_a_repeated_dropped_range_goes_once(ctype: str) -> None:
    # an agent repeats a dropped range until a request with it is acknowledged; a null spool (a
    # client that writes absent fields as null) changes nothing in the ledger, sent alone or merged
    d = [{"first": 9, "last": 9, "reason": "spool_full"}]
    es = [
        entry([1], ctype=ctype, spool=SPOOL, dropped=d),
        entry([2], ctype=ctype, spool=None, dropped=d),
        entry([3], ctype=ctype, dropped=[{"first": 10, "last": 11, "reason": "x"}]),
    ]
    got = decoded(batching.merge(es, 2**20), ctype, "zstd")
    assert got.spool is not None and got.spool.first_pending_seq == 2
    es.insert(1, entry([4], ctype=ctype, spool={**SPOOL, "first_pending_seq": 4, "last_seq": 4}))
    got = decoded(batching.merge(es, 2**20), ctype, "zstd")
    assert got.spool is not None and got.spool.first_pending_seq == 4  # the last one given wins
    assert [(x.first, x.last) for x in got.dropped] == [(9, 9), (10, 11)]


def test_a_body_nested_too_deeply_is_not_merged() -> None:
    deep = b'{"agent":"a","reports":[],"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(batching.CannotMerge):
        batching.merge([entry([1], ctype=native.JSON), entry([2], ctype=native.JSON, raw=deep)], 2**24)
