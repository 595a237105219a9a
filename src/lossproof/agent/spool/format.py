"""On-disk format of the agent spool: segment files of CRC-checked report records.

Directory layout::

    SPOOL/lock                       flock'd by the one agent using this spool (two would reuse seqs)
    SPOOL/seq                        durable seq high-water mark (see counter.py)
    SPOOL/state                      acked / dropped / floor (see state.py), replaced atomically
    SPOOL/segments/{id:010d}.seg     report records, append-only; deleted only as whole files

Record: a :mod:`lossproof.segments.framing` frame with magic ``b"LPAR"`` (little-endian, 32-byte
header then payload; byte for byte the format written before that module existed)::

    0   4  magic       b"LPAR"
    4   4  crc         zlib.crc32 over header bytes 8..32, then the payload
    8   4  length      payload bytes
    12  1  encoding    (the frame's ``aux``) 0 = msgpack, 1 = zstd-compressed msgpack
    13  3  reserved    zero
    16  8  seq         u64, the report's seq (the frame's ``number``)
    24  8  created_ms  i64, when the report was made (unix ms)
    32  .  payload     the report ``{"seq", "time", "points"}`` exactly as it goes on the wire

Seqs inside one segment are consecutive as written. A scan (:func:`scan_segment`) walks the run
of valid records; at a record that is short, has a bad magic or CRC, or breaks the run of seqs, it
searches the rest of the file for the next valid record with a higher seq (:meth:`Framing.find_valid_after`)
and goes on from there: the bytes between are *damage*, and the seqs they held are lost, but the
records after them are intact and kept (one bad sector must not cost the rest of an 8 MiB file of
reports never sent). Bad bytes with no valid record after them are a *torn tail* (a crash
mid-append, or damage to the end) and are cut off on recovery: the spool has no durable mark past
its records, so nothing in a segment is vouched for but the records themselves (see
:func:`lossproof.segments.framing.verdict`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zstandard

from lossproof.segments.framing import FRAME, HEADER_SIZE, MAX_PAYLOAD, FileWindow, Framing
from lossproof.segments.names import SegmentNames

__all__ = ["FRAMING", "HEADER_SIZE", "MAGIC", "MAX_PAYLOAD", "Codec", "RecordInfo", "Scan"]

MAGIC = b"LPAR"

RAW = 0
ZSTD = 1
# Below this a zstd frame saves nothing worth the CPU.
COMPRESS_MIN = 512


def _check_encoding(aux: int, length: int) -> str | None:
    return None if aux in (RAW, ZSTD) else f"unknown encoding {aux}"


FRAMING = Framing(MAGIC, max_payload=MAX_PAYLOAD, check_aux=_check_encoding)

SEGMENT_DIR = "segments"
_NAMES = SegmentNames(10, ".seg", SEGMENT_DIR)


def segment_path(directory: Path, seg_id: int) -> Path:
    return _NAMES.path(directory, seg_id)


def list_segments(directory: Path) -> list[int]:
    return _NAMES.list(directory)


class Codec:
    """zstd contexts are costly to create and not thread-safe: one per spool, used under its lock."""

    def __init__(self) -> None:
        self._c = zstandard.ZstdCompressor(level=1)
        self._d = zstandard.ZstdDecompressor()

    def encode(self, seq: int, created_ms: int, report: bytes) -> bytes:
        payload, enc = report, RAW
        if len(report) >= COMPRESS_MIN:
            packed = self._c.compress(report)
            if len(packed) < len(report):
                payload, enc = packed, ZSTD
        return FRAMING.encode(seq, created_ms, enc, payload)

    def decode_payload(self, record: bytes) -> bytes:
        """The report bytes of a whole record read back from a segment (already CRC-checked)."""
        _, _, length, enc, _, _ = FRAME.unpack_from(record)
        payload = record[HEADER_SIZE : HEADER_SIZE + length]
        if enc == ZSTD:
            return self._d.decompress(payload)
        return bytes(payload)


@dataclass(frozen=True, slots=True)
class RecordInfo:
    seq: int
    pos: int
    size: int  # header + payload
    created_ms: int


@dataclass(slots=True)
class Scan:
    records: list[RecordInfo]  # seqs ascending; a gap where damage was skipped
    valid_end: int  # end of the last valid record: what follows is a torn tail
    file_size: int
    damaged: list[tuple[int, int]]  # (position, bytes) of each stretch of damage skipped


def check_record(data: bytes | memoryview, pos: int) -> RecordInfo | None:
    """The record at ``pos`` of ``data`` if it is whole and its CRC matches, else None."""
    h = FRAMING.check(data, pos)
    return None if h is None else RecordInfo(h.number, h.pos, h.size, h.ts_ms)


def scan_segment(path: Path, max_seq: int | None = None) -> Scan:
    """Every valid record of a segment, in order, past any damage (see the module docstring).
    ``max_seq``: a record found past damage with a higher seq is not this spool's (the file system
    showed stale bytes): the search for records stops there, as at a torn tail."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        win = FileWindow(fd)
        s = FRAMING.scan(win, consecutive=True, collect=True)
        headers = list(s.records)
        damaged: list[tuple[int, int]] = []
        while s.bad_pos is not None and s.valid_after is not None:
            found = s.valid_after
            if max_seq is not None and found.number > max_seq:
                break
            damaged.append((s.bad_pos, found.pos - s.bad_pos))
            s = FRAMING.scan(win, start=found.pos, after=found.number - 1, consecutive=True, collect=True)
            headers += s.records
        records = [RecordInfo(h.number, h.pos, h.size, h.ts_ms) for h in headers]
        return Scan(records, s.end_pos, s.file_size, damaged)
    finally:
        os.close(fd)


def read_all(directory: Path) -> list[tuple[int, RecordInfo, bytes]]:
    """(segment id, record, report bytes) of every valid record on disk, for tests and forensics.

    Reads the files as they are (no recovery, no lock): call it while no agent writes the spool."""
    codec = Codec()
    out: list[tuple[int, RecordInfo, bytes]] = []
    for seg_id in list_segments(directory):
        path = segment_path(directory, seg_id)
        data = path.read_bytes()
        for rec in scan_segment(path).records:
            out.append((seg_id, rec, codec.decode_payload(data[rec.pos : rec.pos + rec.size])))
    return out
