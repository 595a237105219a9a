"""On-disk format of the agent spool: segment files of CRC-checked report records.

Directory layout::

    SPOOL/lock                       flock'd by the one agent using this spool (two would reuse seqs)
    SPOOL/seq                        durable seq high-water mark (see counter.py)
    SPOOL/state                      acked / dropped / floor (see state.py), replaced atomically
    SPOOL/segments/{id:010d}.seg     report records, append-only; deleted only as whole files

Record (little-endian, 32-byte header then payload)::

    0   4  magic       b"LPAR"
    4   4  crc         zlib.crc32 over header bytes 8..32, then the payload
    8   4  length      payload bytes
    12  1  encoding    0 = msgpack, 1 = zstd-compressed msgpack
    13  3  reserved    zero
    16  8  seq         u64, the report's seq
    24  8  created_ms  i64, when the report was made (unix ms)
    32  .  payload     the report ``{"seq", "time", "points"}`` exactly as it goes on the wire

Seqs inside one segment are consecutive as written. A scan stops at the first record that is
short, has a bad magic or CRC, or breaks the run of seqs: everything from there on is a torn tail
(or damage) and is cut off on recovery.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import zstandard

MAGIC = b"LPAR"
HEADER = struct.Struct("<4sIIB3xQq")
HEADER_SIZE = HEADER.size  # 32
_CRC_PART = struct.Struct("<IB3xQq")
MAX_PAYLOAD = 256 * 2**20

RAW = 0
ZSTD = 1
# Below this a zstd frame saves nothing worth the CPU.
COMPRESS_MIN = 512

SEGMENT_DIR = "segments"
_SEGMENT_RE = re.compile(r"^(\d{10})\.seg$")


def segment_path(directory: Path, seg_id: int) -> Path:
    return directory / SEGMENT_DIR / f"{seg_id:010d}.seg"


def list_segments(directory: Path) -> list[int]:
    try:
        names = os.listdir(directory / SEGMENT_DIR)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _SEGMENT_RE.match(n)))


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
        part = _CRC_PART.pack(len(payload), enc, seq, created_ms)
        crc = zlib.crc32(payload, zlib.crc32(part))
        return MAGIC + struct.pack("<I", crc) + part + payload

    def decode_payload(self, record: bytes) -> bytes:
        """The report bytes of a whole record read back from a segment (already CRC-checked)."""
        _, _, length, enc, _, _ = HEADER.unpack_from(record)
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
    records: list[RecordInfo]
    valid_end: int  # bytes of the file holding whole, valid records
    file_size: int


def check_record(data: bytes | memoryview, pos: int) -> RecordInfo | None:
    """The record at ``pos`` of ``data`` if it is whole and its CRC matches, else None."""
    if len(data) - pos < HEADER_SIZE:
        return None
    magic, crc, length, enc, seq, created = HEADER.unpack_from(data, pos)
    if magic != MAGIC or length > MAX_PAYLOAD or enc not in (RAW, ZSTD):
        return None
    end = pos + HEADER_SIZE + length
    if end > len(data):
        return None
    if zlib.crc32(data[pos + HEADER_SIZE : end], zlib.crc32(data[pos + 8 : pos + HEADER_SIZE])) != crc:
        return None
    return RecordInfo(seq, pos, HEADER_SIZE + length, created)


def scan_segment(path: Path) -> Scan:
    """Every valid record of a segment, in order, up to the first bad byte or break in the seqs."""
    data = path.read_bytes()
    view = memoryview(data)
    out: list[RecordInfo] = []
    pos = 0
    while pos < len(data):
        rec = check_record(view, pos)
        if rec is None or (out and rec.seq != out[-1].seq + 1):
            break
        out.append(rec)
        pos += rec.size
    return Scan(out, pos, len(data))


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
