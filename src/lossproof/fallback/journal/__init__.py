"""The fallback receiver's journal: append-only, CRC-checked segment files of received requests.

A request is answered 200 only after its record is written *and* fdatasync'd (group commit: one
write + one fsync for every request that arrived while the previous fsync ran). Nothing here knows
about a log, a store or a worker: the journal is the fallback's only state.

Layout of ``D/journal``::

    writer.lock          flock'd (exclusive) by the one receiver writing the journal; holds its pid
    durable              durable watermark: (segment base, byte position) fsync'd so far
    {base:020d}.jnl      segment: header, then records; ``base`` is the index of its first record

All integers are little-endian.

Segment header (32 bytes, a :mod:`lossproof.segments.state` cell)::

    0   4  magic     b"LPFS"
    4   4  crc       zlib.crc32 over bytes 8..32
    8   4  version   1
    12  4  reserved  0
    16  8  base      index of the first record of this segment
    24  8  prev_end  bytes of the *previous* segment that hold durable records (NO_PREV if none)

Record: a :mod:`lossproof.segments.framing` frame with magic ``b"LPFR"`` (``aux`` 0, ``number`` the
index; byte for byte the format written before that module existed)::

    0   4  magic        b"LPFR"
    4   4  crc          zlib.crc32 over bytes 8..32 of the header, then the payload
    8   4  length       payload length
    12  4  reserved     0
    16  8  index        u64, strictly increasing inside a segment (gaps only after failed writes)
    24  8  received_ms  i64, when the receiver got the request (unix ms)
    32  .  payload      msgpack array: [tenant, agent, content_type, encoding, seqs, reports, points,
                        body] — ``body`` is the request body exactly as received (still compressed)

Durable watermark (``durable``, 24 bytes, a :mod:`lossproof.segments.state` cell rewritten in place
after every fsync, itself not fsync'd)::

    0   4  magic b"LPFW"    4  4  crc over 8..24    8  8  segment base    16  8  position

Which bytes are trusted
    A segment is created with its header written to a temporary file, fsync'd, renamed into place
    and the directory fsync'd, so every segment file starts with a valid header. The writer leaves
    a segment (rolls) when it is full, after a failed write or fsync, and on every start; the new
    segment's ``prev_end`` says how many bytes of the previous one hold durable records. Bytes after
    ``prev_end`` (a write that failed, a torn tail) are never read. (A segment that holds no record
    yet is not left after a failed write but cut back to its header and written again, so a full
    disk does not get a new file per refused request: ``JournalWriter._after_failed_write``.) So
    for every segment but the last, ``[32, prev_end)`` must hold valid records only: anything else
    there is corruption of acknowledged data, and readers refuse with :class:`JournalCorrupt` naming
    the file and byte.

    The last segment has no successor to vouch for it. While the receiver runs (its lock is held)
    readers read it up to the durable watermark only, i.e. only what was fsync'd. After a crash,
    its records are read up to the first one that is not valid (a torn tail: records written but
    not fsync'd when the process or machine died; they were never acknowledged). A bad record
    *before* the watermark is corruption, never a torn tail. The watermark is written after the
    fsync, so it never claims more than was durable; after a power loss it may claim less.

Positions
    A :class:`Position` is (segment base, byte offset). Replay progress is a position, so it stays
    meaningful whatever indices a restart hands out.
"""

from __future__ import annotations

from lossproof.fallback.journal.format import (
    FRAMING,
    HEADER_SIZE,
    JOURNAL_DIR,
    LOCK_FILE,
    MAX_PAYLOAD,
    NO_PREV,
    READ_CHUNK,
    RECORD_MAGIC,
    SEGMENT_MAGIC,
    SEGMENT_SUFFIX,
    VERSION,
    WATERMARK_FILE,
    WATERMARK_MAGIC,
    Boundary,
    Entry,
    Item,
    JournalCorrupt,
    JournalError,
    JournalLocked,
    JournalUnavailable,
    Position,
    Record,
    Skipped,
    TailScan,
    acquire_writer_lock,
    check_segment_header,
    decode_entry,
    encode_entry,
    encode_record,
    encode_segment_header,
    encode_watermark,
    journal_dir,
    list_segments,
    read_segment_header,
    read_watermark,
    scan_tail,
    segment_path,
    watermark_cell,
    writer_live,
)
from lossproof.fallback.journal.reader import (
    JournalReader,
    SegmentView,
    journal_bytes,
    read_all,
    snapshot,
)
from lossproof.fallback.journal.writer import (
    JournalWriter,
)

__all__ = [
    "FRAMING",
    "HEADER_SIZE",
    "JOURNAL_DIR",
    "LOCK_FILE",
    "MAX_PAYLOAD",
    "NO_PREV",
    "READ_CHUNK",
    "RECORD_MAGIC",
    "SEGMENT_MAGIC",
    "SEGMENT_SUFFIX",
    "VERSION",
    "WATERMARK_FILE",
    "WATERMARK_MAGIC",
    "Boundary",
    "Entry",
    "Item",
    "JournalCorrupt",
    "JournalError",
    "JournalLocked",
    "JournalReader",
    "JournalUnavailable",
    "JournalWriter",
    "Position",
    "Record",
    "SegmentView",
    "Skipped",
    "TailScan",
    "acquire_writer_lock",
    "check_segment_header",
    "decode_entry",
    "encode_entry",
    "encode_record",
    "encode_segment_header",
    "encode_watermark",
    "journal_bytes",
    "journal_dir",
    "list_segments",
    "read_all",
    "read_segment_header",
    "read_watermark",
    "scan_tail",
    "segment_path",
    "snapshot",
    "watermark_cell",
    "writer_live",
]
