"""What the embedded (SQLite) store's modules share: the schema, the SQL, limits and type names."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from lossproof.obs.logging import get
from lossproof.store import chunks
from lossproof.store import ledger as lg

log = get("lossproof.store.sqlite")  # one logger name for the whole backend, as before the split

# Version 5: chunks of kind PENDING (chunks.PENDING), which a lossproof of version 4 cannot read:
# it refuses the store, saying so, rather than calling every such chunk damage. Version 6: sealed
# chunks and parts (chunks.py, "Sealed"), the same for a lossproof of version 5, whose writer would
# otherwise set every sealed row aside as damaged.
SCHEMA_VERSION = 6
# The oldest schema a reader works with as it is (version 4 only adds report times, which a reader
# of version 3 does without; versions 5 and 6 only chunk kinds).
READABLE_FROM = 3
REPORT_TIMES_FROM = 4  # the schema that keeps each report's time
APPLICATION_ID = 0x4C505346  # "LPSF": marks the file as a lossproof store

# Metric metadata, one row per (tenant, metric); the last write wins. Also created in a store written
# before it existed (same schema version: an added table, nothing else changes).
METADATA_TABLE = """
CREATE TABLE IF NOT EXISTS metadata (
    tenant TEXT NOT NULL,
    metric TEXT NOT NULL,
    type   TEXT NOT NULL,
    help   TEXT NOT NULL,
    unit   TEXT NOT NULL,
    PRIMARY KEY (tenant, metric)
) STRICT, WITHOUT ROWID
"""
# Damaged chunks and parts set aside by a writer or compaction (store/quarantine.py), byte for byte
# with their key columns. Created by the writer in a store written before it existed (same schema
# version, as ``metadata``: an added table, which an older lossproof leaves alone; a read-only handle
# never needs it). Rows stay until an operator removes them.
QUARANTINE_TABLE = """
CREATE TABLE IF NOT EXISTS damaged_chunks (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: writers watch its sequence
    source         TEXT NOT NULL CHECK (source IN ('chunks', 'parts')),
    source_id      INTEGER NOT NULL,  -- its id in that table
    series_id      INTEGER,           -- a chunk's series; NULL for a part (many series)
    t_min          INTEGER NOT NULL,
    t_max          INTEGER NOT NULL,
    n              INTEGER NOT NULL,
    at_ms          INTEGER,           -- a part's batch time; NULL for a chunk
    data           BLOB NOT NULL,
    reason         TEXT NOT NULL,
    quarantined_ms INTEGER NOT NULL
) STRICT
"""
_QUARANTINE_FROM = {
    "chunks": "'chunks', id, series_id, t_min, t_max, n, NULL, data, ?, ? FROM chunks WHERE id = ?",
    "parts": "'parts', id, NULL, t_min, t_max, n, at_ms, data, ?, ? FROM parts WHERE id = ?",
}
# An unchanged row is not rewritten (senders repeat their metadata every minute or so).
_UPSERT_METADATA = (
    "INSERT INTO metadata VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, metric) DO UPDATE"
    " SET type = excluded.type, help = excluded.help, unit = excluded.unit"
    " WHERE type != excluded.type OR help != excluded.help OR unit != excluded.unit"
)

# The per-agent tables, keyed by incarnation since schema version 2 (see base.py, "Incarnations").
# Version 1 files are rebuilt into these by _upgrade_v1 (their rows get incarnation '').
AGENTS_TABLE = """
CREATE TABLE agents (
    tenant          TEXT NOT NULL,
    agent           TEXT NOT NULL,
    incarnation     TEXT NOT NULL DEFAULT '',  -- '' = an agent that sends none
    max_seq         INTEGER NOT NULL,
    stored_reports  INTEGER NOT NULL,
    missing_reports INTEGER NOT NULL,
    lost_reports    INTEGER NOT NULL,
    last_stored_ms  INTEGER NOT NULL,
    delayed_reports INTEGER NOT NULL DEFAULT 0,
    -- the last SpoolState the agent reported, spool_reported_ms 0 = never
    spool_pending_reports INTEGER NOT NULL DEFAULT 0,
    spool_pending_bytes   INTEGER NOT NULL DEFAULT 0,
    spool_oldest_ms       INTEGER NOT NULL DEFAULT 0,
    spool_first_pending   INTEGER NOT NULL DEFAULT 0,
    spool_last_seq        INTEGER NOT NULL DEFAULT 0,
    spool_reported_ms     INTEGER NOT NULL DEFAULT 0,
    first_seq        INTEGER NOT NULL DEFAULT 1,  -- where the incarnation's seq space starts
    first_seen_ms    INTEGER NOT NULL DEFAULT 0,
    conflict_reports INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, agent, incarnation)
) STRICT, WITHOUT ROWID
"""
LEDGER_TABLE = """
CREATE TABLE ledger (
    tenant      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    incarnation TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL CHECK (kind IN ('stored', 'missing', 'lost', 'delayed')),
    first       INTEGER NOT NULL,
    last        INTEGER NOT NULL,
    since_ms    INTEGER,  -- missing: when the hole was first seen, delayed: oldest pending in the agent
    reason      TEXT,     -- lost: why
    PRIMARY KEY (tenant, agent, incarnation, kind, first)
) STRICT, WITHOUT ROWID
"""
# One row per stored report: its content digest, which tells a resend from a reused seq, and its time.
REPORTS_TABLE = """
CREATE TABLE reports (
    tenant      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    digest      BLOB NOT NULL,
    time_ms     INTEGER NOT NULL DEFAULT 0,  -- when the agent made it (0: unknown), see report_times_around
    PRIMARY KEY (tenant, agent, incarnation, seq)
) STRICT, WITHOUT ROWID
"""
# Reports whose seq was already stored with other content, kept whole (canonical msgpack points).
CONFLICTS_TABLE = """
CREATE TABLE conflicts (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    digest      BLOB NOT NULL,
    points      BLOB NOT NULL,
    n_points    INTEGER NOT NULL,
    detected_ms INTEGER NOT NULL,
    applied_ms  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (tenant, agent, incarnation, seq, digest)  -- a re-read report is kept once
) STRICT
"""
AGENT_TABLES = ";".join([AGENTS_TABLE, LEDGER_TABLE, REPORTS_TABLE, CONFLICTS_TABLE]) + ";"
_AGENT_COLUMNS = (
    "tenant, agent, incarnation, max_seq, stored_reports, missing_reports, lost_reports,"
    " last_stored_ms, delayed_reports, spool_pending_reports, spool_pending_bytes, spool_oldest_ms,"
    " spool_first_pending, spool_last_seq, spool_reported_ms, first_seq, first_seen_ms, conflict_reports"
)
_V1_AGENT_COLUMNS = (
    "tenant, agent, max_seq, stored_reports, missing_reports, lost_reports, last_stored_ms,"
    " delayed_reports, spool_pending_reports, spool_pending_bytes, spool_oldest_ms,"
    " spool_first_pending, spool_last_seq, spool_reported_ms"
)
_SUMMARY = (
    "last_stored_ms, spool_pending_reports, spool_pending_bytes, spool_oldest_ms,"
    " spool_first_pending, spool_last_seq, spool_reported_ms, first_seq, first_seen_ms, conflict_reports"
)

# Batches land in ``parts`` (one row each, every series of the batch); compaction turns them into
# ``chunks``, one row per series per compaction, then one per series per window. See chunks.py.
CHUNKS_TABLE = """
CREATE TABLE IF NOT EXISTS chunks (
    id        INTEGER PRIMARY KEY,  -- write order: of two points with one (series, t) the lower id wins
    series_id INTEGER NOT NULL,
    t_min     INTEGER NOT NULL,
    t_max     INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    data      BLOB NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS chunks_by_series ON chunks (series_id, t_max, t_min);
CREATE TABLE IF NOT EXISTS parts (
    -- never reused (AUTOINCREMENT): ids order the parts, and readers cache directories by id
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    t_min INTEGER NOT NULL,
    t_max INTEGER NOT NULL,
    n     INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,     -- the batch's now_ms: compaction turns old parts into chunks
    data  BLOB NOT NULL
) STRICT;
"""

SCHEMA = f"""
CREATE TABLE series (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT NOT NULL,
    metric      TEXT NOT NULL,
    labels_json TEXT NOT NULL,  -- canonical: sorted keys, compact
    UNIQUE (tenant, metric, labels_json)
) STRICT;

{CHUNKS_TABLE}

{AGENT_TABLES}

CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY,
    partition  INTEGER NOT NULL,
    log_offset INTEGER NOT NULL,
    tenant     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    payload    BLOB NOT NULL,
    at_ms      INTEGER NOT NULL,
    UNIQUE (partition, log_offset)  -- a re-read record is dead-lettered once
) STRICT;

CREATE TABLE log_gaps (
    partition   INTEGER NOT NULL,
    first       INTEGER NOT NULL,
    last        INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    detected_ms INTEGER NOT NULL,
    PRIMARY KEY (partition, first, last)
) STRICT, WITHOUT ROWID;
"""

_INSERT_CHUNK = "INSERT INTO chunks (series_id, t_min, t_max, n, data) VALUES (?, ?, ?, ?, ?)"
_INSERT_CHUNK_AT = "INSERT INTO chunks (id, series_id, t_min, t_max, n, data) VALUES (?, ?, ?, ?, ?, ?)"
# The chunks of each series of a JSON array ?1 that may hold points in [?2, ?3]: one statement, an
# index range from (series, ?2) on for each.
_SELECT_CHUNKS_OF = (
    "SELECT c.series_id, c.id, c.t_min, c.t_max, c.data FROM json_each(?1) j CROSS JOIN chunks c"
    " ON c.series_id = j.value AND c.t_max >= ?2 AND c.t_min <= ?3"
)
# The newest t stored of each series in a JSON array: one index seek each (max() of an index suffix).
_NEWEST = "SELECT value, (SELECT max(t_max) FROM chunks WHERE series_id = value) FROM json_each(?)"
# Unpacked chunks (their first byte, the encoding, ?2 to ?5: RAW or PENDING, unsealed or sealed) after
# ?1, in id order.
_SCAN_UNPACKED = (
    "SELECT id, series_id, t_min, t_max, n FROM chunks"
    " WHERE id > ?1 AND substr(data, 1, 1) IN (?2, ?3, ?4, ?5) ORDER BY id LIMIT ?6"
)
_SCAN_LIMIT = 200_000
_PACK_AGE_MS = 300_000
# No part written this long: the load stopped, pack what is left
# (compact.py, _pack_due). Longer than any scrape interval, or a light steady load (a batch every
# 15-60 s) would pack after each flush, rewriting every open window each time.
_PACK_IDLE_MS = 120_000
# The chunks to pack for a JSON array of [series, from, to]: an index range each.
_PACK_READ = (
    "SELECT c.id, c.series_id, c.t_min, c.t_max, c.data FROM json_each(?) j CROSS JOIN chunks c"
    " ON c.series_id = j.value ->> 0 AND c.t_max >= j.value ->> 1 AND c.t_min < j.value ->> 2"
)
# The chunks of each series of a JSON array ?1 that overlap [?2, ?3): their heads only.
_MERGE_HEADS = (
    "SELECT c.series_id, c.t_min, c.t_max, c.n FROM json_each(?1) j CROSS JOIN chunks c"
    " ON c.series_id = j.value AND c.t_max >= ?2 AND c.t_min < ?3"
)
# The positions in a JSON array of [series, from, to] of those where a chunk of the series holds a
# point in [from, to]: an index seek each.
_WINDOWS_TAKEN = (
    "SELECT j.key FROM json_each(?) j WHERE EXISTS (SELECT 1 FROM chunks c"
    " WHERE c.series_id = j.value ->> 0 AND c.t_max >= j.value ->> 1 AND c.t_min <= j.value ->> 2)"
)
# Parts are turned into chunks once there are this many, or this many points in them, or the oldest
# is this old: readers look into every part that overlaps their range, so there must be few.
_PART_FLUSH_COUNT = 8
_PART_FLUSH_POINTS = 2_000_000
_PART_FLUSH_AGE_MS = 30_000
# Points one flush takes at most (whole parts, one at least): held about three times over in memory
# (the parts, the merged columns, the rows' data), ~50 bytes a point in all. Each series' rows then
# hold more points: the flush and the packing after it cost per row as much as per point.
_FLUSH_MAX_POINTS = 1_200_000
_PACK_MAX_POINTS = 200_000
# A series with at least this many points in a flush is packed by the flush itself (a scrape of many
# samples per series per body: remote write's usual shape); fewer are written raw and packed later,
# eight flushes' worth together (a zstd frame of a few points compresses badly and costs more to
# open than it saves).
_PACK_AT_FLUSH = 128
# Once a _MERGE_WINDOW_MS window ended _MERGE_AFTER_MS ago (and every flush is packed), its
# chunks (one per series and COMPACT_WINDOW_MS window) are merged into one per series: a day
# of a series is then 2-3 rows, not 12-13, and a query over it reads and decodes that much less
# (a day-long histogram_quantile over 200 series: 15.4 -> 12.1 ms; a row costs more to read in
# Python than its points cost to decode). A window of more than _MERGE_MAX_POINTS points of a
# series keeps its chunks (a short query of old data would decode all of one).
_MERGE_WINDOW_MS = 12 * 3600 * 1000
_MERGE_AFTER_MS = 600_000
_MERGE_MAX_POINTS = 8192
_MERGE_PASS_WINDOWS = 14  # windows one pass merges at most
_PART_ORDER = 1 << 62  # a part's rank among a series' chunks when merging: after all of them
_NONE = -(1 << 63)  # "no point stored" in the newest-t cache
_NEWEST_MAX = 2_000_000  # series the writer's stored-times table knows, at most (then started over)
# (series, t) the writer remembers having stored, at most: the points out of time order that the
# write-time check answers from memory reach back about this far per series (further: a store read,
# which cost ~11-17 % of the worker under `bench compare`, 16 connections of 1,000 series, with
# 458,752 entries). An ascending array of int64 per series: 8 bytes an entry, 16 at most while an
# array grows, so ~14-28 MiB, plus ~40-50 bytes per series known (~100 MiB at the 2 M series
# limit); an array forgetting shrinks to twice what it keeps (the two hash-set generations of
# 458,752 entries before took ~9 MiB).
_STORED_MAX = 4 * 458_752
_V2_SHIFT_DEFAULT = 16

# The errors a write raises because of the batch's data, not the store: a value SQLite cannot bind
# (an int past 64 bits, a string with a lone surrogate), a constraint the data breaks, or a check of
# the store's own code on the data (ValueError: a chunk of columns that disagree). The worker
# dead-letters the record that causes one. Any other error is the store's: a damaged file
# ("database disk image is malformed" is a plain sqlite3.DatabaseError), SQLite's internal errors,
# no memory, or a bug in this code; dead-lettering on those threw away acknowledged records with a
# damaged store (every batch "rejected"). Those keep the batch, and the worker retries it.
_BATCH_ERRORS = (
    ValueError,
    OverflowError,
    TypeError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
)


def batch_error(e: BaseException) -> bool:
    """Whether a write's failure comes from the batch's data (see ``_BATCH_ERRORS``). A stored chunk
    that does not decode (ChunkError, a ValueError) is the store's damage, not the batch's."""
    return isinstance(e, _BATCH_ERRORS) and not isinstance(e, chunks.ChunkError)


_LABELS_DECODER = msgspec.json.Decoder(dict[str, str])

# in-memory key of a series: (tenant, metric, label items in the order the caller gave them)
_SeriesKey = tuple[Any, ...]  # (tenant, metric, *labels.items())
_LedgerRow = lg.LedgerRow
_AgentKey = tuple[str, str, str]  # (tenant, agent, incarnation)
