"""One request for several journal records of one agent: how ``lossproof replay`` sends a backlog in
fewer, larger requests.

The fallback journals each request as its agent sent it: a 10-minute outage of 100 agents that
report every second is 60,000 requests of one report each. The main ingest's cost is mostly per
request (HTTP, the log's group commit, the answer), so the replay merges the records of one agent
that it reads together into one native request, as the agent itself does when it catches up from
its spool (``reports`` of many seqs in one body), up to a number of points.

Records merge only when nothing but their reports could differ in meaning: the same tenant, agent,
Content-Type and Content-Encoding (the group's key) and, in the body, byte for byte the same fields
other than ``reports``, ``dropped`` and ``spool`` (``agent``, ``incarnation``, ``first_seq``, and any
field this version does not know). The merged body holds every record's reports and dropped ranges
in journal order (a dropped range repeated, once) and the spool of the last record that has one
(a null spool is none): what the main ingest would hold
had it received the records one after the other, each acknowledged before the next (the fallback
acknowledged each in that order). Reports are copied as encoded (``msgspec.Raw``): never decoded,
so never changed.

A merged request that the main ingest refuses with a 4xx is not rejected as a whole: the replay
then sends its records one by one, and each gets its own answer (see :mod:`lossproof.fallback.replay`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import msgspec
import zstandard

from lossproof.fallback import journal as jn
from lossproof.protocol import native
from lossproof.protocol.compression import BadEncoding, TooLarge, decompress

MAX_BATCH_BYTES = 2**20  # bodies as stored (compressed) a merged request holds at most
MAX_RECORDS = 1000  # records a merged request holds at most
MAX_DECODED = 32 * 2**20  # decoded body bytes a merged request holds at most (ingest: 64 MiB)

_MERGED = ("reports", "dropped", "spool")
_NULLS = (b"null", b"\xc0")  # JSON's and msgpack's
_Fields = dict[str, msgspec.Raw]
_decoders: dict[str, msgspec.json.Decoder[_Fields] | msgspec.msgpack.Decoder[_Fields]] = {
    native.JSON: msgspec.json.Decoder(_Fields),
    native.MSGPACK: msgspec.msgpack.Decoder(_Fields),
}
_Raws = list[msgspec.Raw]
_list_decoders: dict[str, msgspec.json.Decoder[_Raws] | msgspec.msgpack.Decoder[_Raws]] = {
    native.JSON: msgspec.json.Decoder(_Raws),
    native.MSGPACK: msgspec.msgpack.Decoder(_Raws),
}
_spool_decoders: dict[str, msgspec.json.Decoder[native.SpoolIn] | msgspec.msgpack.Decoder[native.SpoolIn]] = {
    native.JSON: msgspec.json.Decoder(native.SpoolIn),
    native.MSGPACK: msgspec.msgpack.Decoder(native.SpoolIn),
}
_encoders: dict[str, msgspec.json.Encoder | msgspec.msgpack.Encoder] = {
    native.JSON: msgspec.json.Encoder(),
    native.MSGPACK: msgspec.msgpack.Encoder(),
}
_local = threading.local()


def group_key(entry: jn.Entry) -> tuple[str, str, str, str] | None:
    """Records with one key may be merged; None: this record is always sent alone."""
    if not entry.agent or entry.content_type not in _decoders or entry.encoding not in ("", "zstd"):
        return None
    return entry.tenant, entry.agent, entry.content_type, entry.encoding


def batches(records: Sequence[jn.Record], max_points: int) -> list[list[int]]:
    """``records`` (in journal order) as batches of their indices: each batch the records of one
    group key, in journal order, of at most ``max_points`` points (a record of more: alone), at
    most :data:`MAX_BATCH_BYTES` of bodies as stored and :data:`MAX_RECORDS` records; a record
    without a key alone. Batches come in the order of their first record. ``max_points`` 0:
    every record alone."""
    out: list[list[int]] = []
    open_: dict[tuple[str, str, str, str], tuple[list[int], int, int]] = {}
    for i, rec in enumerate(records):
        key = group_key(rec.entry) if max_points > 0 else None
        if key is None:
            out.append([i])
            continue
        points, size = rec.entry.points, len(rec.entry.body)
        held = open_.get(key)
        if held is not None:
            batch, p, b = held
            if p + points <= max_points and b + size <= MAX_BATCH_BYTES and len(batch) < MAX_RECORDS:
                batch.append(i)
                open_[key] = (batch, p + points, b + size)
                continue
        batch = [i]
        out.append(batch)  # (its place: that of its first record)
        open_[key] = (batch, points, size)
    return out


class CannotMerge(Exception):
    """These records are to be sent one by one (the message says why)."""


def merge(entries: Sequence[jn.Entry], max_decoded: int) -> bytes:
    """The body of one request carrying every report and dropped range of ``entries`` (records of
    one :func:`group_key`, in journal order), encoded as they were (Content-Type and -Encoding of
    the first). Raises :class:`CannotMerge` where they may not be merged: a body that does not
    decode, fields that differ, more than ``max_decoded`` bytes decoded."""
    key = group_key(entries[0])
    if key is None or any(group_key(e) != key for e in entries):
        raise CannotMerge("records of different agents or encodings")
    ctype, encoding = key[2], key[3]
    decode, decode_list = _decoders[ctype], _list_decoders[ctype]
    fields: _Fields | None = None  # the first record's fields but the merged ones
    reports: list[msgspec.Raw] = []
    dropped: dict[bytes, msgspec.Raw] = {}  # (an agent repeats a range until a request with it is acked)
    spool: msgspec.Raw | None = None
    left = max_decoded
    for e in entries:
        try:
            raw = decompress(e.body, e.encoding, left)
            body = decode.decode(raw)
            if "reports" not in body:
                raise CannotMerge("a record without reports")  # (refused alone: 400)
            got = decode_list.decode(body["reports"])
            some = decode_list.decode(body["dropped"]) if "dropped" in body else []
            if "spool" in body and bytes(body["spool"]).strip() not in _NULLS:
                # (a null spool is no spool: it changes nothing in the ledger.) Only the last
                # one is sent: each is checked here as the main ingest would check it alone
                spool = body["spool"]
                native.check_spool(_spool_decoders[ctype].decode(spool))
            elif not got and not some:
                raise CannotMerge("a record with nothing to do")  # (refused alone: 400)
        except (BadEncoding, TooLarge, msgspec.DecodeError, RecursionError, native.BadRequest) as exc:
            raise CannotMerge(str(exc) or type(exc).__name__) from None
        reports += got
        for d in some:
            dropped.setdefault(bytes(d), d)
        left -= len(raw)
        rest = {k: v for k, v in body.items() if k not in _MERGED}
        if fields is None:
            fields = rest
        elif {k: bytes(v) for k, v in rest.items()} != {k: bytes(v) for k, v in fields.items()}:
            raise CannotMerge("fields other than reports, dropped and spool differ")
    assert fields is not None
    encode = _encoders[ctype].encode
    out: _Fields = {**fields, "reports": msgspec.Raw(encode(reports))}
    if dropped:
        out["dropped"] = msgspec.Raw(encode(list(dropped.values())))
    if spool is not None:
        out["spool"] = spool
    body_out = encode(out)
    if encoding == "zstd":
        cctx = getattr(_local, "zstd", None)
        if cctx is None:
            # level 1: the records were compressed by their agents; this is only the way back
            # to the main ingest, where a higher level's CPU would be the replay's cost
            cctx = _local.zstd = zstandard.ZstdCompressor(level=1)
        body_out = cctx.compress(body_out)
    return body_out
