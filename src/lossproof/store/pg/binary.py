"""Binary COPY and binary array parameters for the PostgreSQL store, built and read with numpy: no
Python object per row or element."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

from lossproof.native_ext import _native
from lossproof.store import chunks
from lossproof.store.base import (
    StoreError,
)
from lossproof.store.pg.common import (
    _COPY_CHUNKS,
)

# The head of a chunk row in binary COPY: field count, then each field's length and value
# (big-endian), up to the data's first byte, its kind (RAW, sealed); then the timestamps, the values
# and the checksum (chunks: "Sealed").
_CHUNK_ROW_HEAD = np.dtype(
    [
        ("nf", ">i2"),
        ("l1", ">i4"),
        ("s", ">i8"),
        ("l2", ">i4"),
        ("a", ">i8"),
        ("l3", ">i4"),
        ("b", ">i8"),
        ("l4", ">i4"),
        ("n", ">i4"),
        ("l5", ">i4"),
        ("kind", "u1"),
    ]
)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00"
_COPY_TRAILER = b"\xff\xff"


def chunk_rows(sids: chunks.I64, ts: chunks.I64, vs: chunks.F64) -> bytes:
    """The binary COPY data of one RAW chunk row per series, for columns sorted by (series, t)
    without duplicates: the rows of :func:`chunks.encode_batch`, built with numpy, with no Python
    object per row (a batch of one point per series has as many rows as points). Rows of equal
    length are built together, so they come grouped by length: that order does not matter, a batch
    has one chunk per series."""
    starts, ends = chunks.series_bounds(sids)
    n = ends - starts
    head = np.empty(len(starts), dtype=_CHUNK_ROW_HEAD)
    head["nf"] = 5
    head["l1"] = head["l2"] = head["l3"] = 8
    head["l4"] = 4
    head["s"] = sids[starts]
    head["a"] = ts[starts]
    head["b"] = ts[ends - 1]
    head["n"] = n
    head["l5"] = 1 + 16 * n + 4
    head["kind"] = chunks.RAW | chunks.SEALED
    tl = ts.astype("<i8", copy=False)
    vl = vs.astype("<f8", copy=False)
    sums = np.frombuffer(
        _native.raw_sums(
            tl.tobytes(), vl.tobytes(), starts.astype(np.int64).tobytes(), ends.astype(np.int64).tobytes()
        ),
        dtype=np.uint8,
    ).reshape(len(starts), 4)
    parts = [_COPY_HEADER, bytes(8)]  # flags, header extension length
    order = np.argsort(n, kind="stable")
    sizes = n[order]
    cuts = np.flatnonzero(np.diff(sizes)) + 1
    for rows in np.split(order, cuts):
        k = int(n[rows[0]]) if len(rows) else 0
        if not k:
            continue
        idx = starts[rows][:, None] + np.arange(k)
        block = np.hstack(
            (
                head[rows].view(np.uint8).reshape(len(rows), _CHUNK_ROW_HEAD.itemsize),
                tl[idx].view(np.uint8).reshape(len(rows), 8 * k),
                vl[idx].view(np.uint8).reshape(len(rows), 8 * k),
                sums[rows],
            )
        )
        parts.append(block.tobytes())
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def copy_chunks(cur: psycopg.Cursor[Any], sids: chunks.I64, ts: chunks.I64, vs: chunks.F64) -> None:
    """Insert one RAW chunk per series of the columns (sorted by (series, t), no duplicates)."""
    with cur.copy(_COPY_CHUNKS) as copy:
        copy.write(chunk_rows(sids, ts, vs))


_INT8_OID = 20


class Int8Array:
    """A bigint[] query parameter (``%b``) in PostgreSQL's binary array format, built with numpy:
    a list of ints would be dumped one element at a time in Python."""

    __slots__ = ("data",)

    def __init__(self, values: npt.ArrayLike) -> None:
        a = np.asarray(values, dtype=np.int64)
        if not len(a):
            self.data = struct.pack(">iii", 0, 0, _INT8_OID)
            return
        body = np.empty(len(a), dtype=[("len", ">i4"), ("v", ">i8")])
        body["len"] = 8
        body["v"] = a
        self.data = struct.pack(">iiiii", 1, 0, _INT8_OID, len(a), 1) + body.tobytes()


class _Int8ArrayDumper(Dumper):
    format = Format.BINARY
    oid = 1016  # bigint[]

    def dump(self, obj: Any) -> bytes:
        return bytes(obj.data)


psycopg.adapters.register_dumper(Int8Array, _Int8ArrayDumper)


# A row of ``COPY (SELECT series_id, t, v ...) TO STDOUT (FORMAT BINARY)``: field count, then
# each field's length and value, big-endian (none is NULL: the columns are NOT NULL).
_POINT_ROW = np.dtype(
    [("nf", ">i2"), ("l1", ">i4"), ("s", ">i8"), ("l2", ">i4"), ("t", ">i8"), ("l3", ">i4"), ("v", ">f8")]
)


def _copy_out(cur: psycopg.Cursor[Any], query: sql.Composable, row: np.dtype[Any]) -> npt.NDArray[Any]:
    """The rows of a query whose columns are all fixed-size and NOT NULL, read as binary COPY
    straight into a numpy array of ``row`` (field count and lengths included, big-endian)."""
    with cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)) as copy:
        data = b"".join(bytes(block) for block in copy)
    if not data.startswith(_COPY_HEADER):
        raise StoreError("unexpected binary COPY output")
    head = len(_COPY_HEADER) + 4
    head += 4 + int.from_bytes(data[head : head + 4], "big")  # header extension
    count = (len(data) - head - 2) // row.itemsize
    return np.frombuffer(data, dtype=row, count=count, offset=head)


def _read_points(
    cur: psycopg.Cursor[Any], query: sql.Composable
) -> tuple[chunks.I64, chunks.I64, chunks.F64]:
    """(series ids, times, values) of a query over ``points``, read as binary COPY into numpy."""
    rows = _copy_out(cur, query, _POINT_ROW)
    return rows["s"].astype(np.int64), rows["t"].astype(np.int64), rows["v"].astype(np.float64)


# (id, series_id, t_min, t_max) of a chunk, as binary COPY sends it
_CHUNK_META = np.dtype(
    [("nf", ">i2"), ("l1", ">i4"), ("id", ">i8"), ("l2", ">i4"), ("s", ">i8"), ("l3", ">i4"), ("a", ">i8"),
     ("l4", ">i4"), ("b", ">i8")]
)  # fmt: skip
