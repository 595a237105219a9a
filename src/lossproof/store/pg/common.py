"""What the PostgreSQL store's modules share: connections and their errors, the SQL the write, read
and compaction paths share, and the names of their types."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict

from lossproof.obs.logging import get
from lossproof.store import ledger as lg
from lossproof.store import pg_migrations as mig
from lossproof.store import quarantine
from lossproof.store.base import (
    StoreError,
    StoreSchemaError,
    StoreUnavailable,
)

log = get("lossproof.store.postgres")  # one logger name for the whole backend, as before the split

DAY_MS = mig.DAY_MS
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1

_LABELS_DECODER = msgspec.json.Decoder(dict[str, str])


def pg_text(s: str) -> str:
    """PostgreSQL text cannot hold NUL (SQLite can): it is stored as U+FFFD rather than refused, as a
    refused record would be acknowledged data never stored. Only new series and metadata pay."""
    return s.replace("\x00", "\ufffd") if "\x00" in s else s


_SeriesKey = tuple[Any, ...]  # (tenant, metric, *labels.items()) in the caller's label order
# a series new to this process: (key, tenant, metric, labels)
_Unresolved = tuple[_SeriesKey, str, str, dict[str, str]]
_LedgerRow = lg.LedgerRow
_AgentKey = tuple[str, str, str]  # (tenant, agent, incarnation)
_AGENT_COLUMNS = (
    "tenant, agent, incarnation, max_seq, stored_reports, missing_reports, lost_reports,"
    " last_stored_ms, delayed_reports, spool_pending_reports, spool_pending_bytes, spool_oldest_ms,"
    " spool_first_pending, spool_last_seq, spool_reported_ms, first_seq, first_seen_ms, conflict_reports"
)
_SUMMARY = (
    "a.last_stored_ms, a.spool_pending_reports, a.spool_pending_bytes, a.spool_oldest_ms,"
    " a.spool_first_pending, a.spool_last_seq, a.spool_reported_ms, a.first_seq, a.first_seen_ms,"
    " a.conflict_reports"
)
_Conn = psycopg.Connection[Any]

# SQLSTATE classes that mean "the data itself is refused": data exceptions, integrity
# constraint violations, program limits (e.g. an index row too large). Anything else from the
# server (connection, shutdown, resources, locks, privileges, read-only standby, ...) is transient.
_DATA_CLASSES = ("22", "23", "54")

_COPY_CHUNKS = "COPY chunks (series_id, t_min, t_max, n, data) FROM STDIN (FORMAT BINARY)"
_ID_SEQ = "pg_get_serial_sequence('chunks', 'id')"
# Of the series ?1[i] whose new points start at ?2[i]: those with a chunk ending at or after it,
# with that first t (one index seek each: in the common case it finds no entry, so no heap visit
# either; measured 25% cheaper than max(t_max) per series), and in the common case no row comes back.
# And a row (NULL, id) with an id taken from the chunks' sequence: the batch's chunks get higher
# ones (recorded in compact_batches).
_NEWEST = (
    f"SELECT NULL::bigint, nextval({_ID_SEQ}) UNION ALL"
    " SELECT q.s, q.first FROM unnest(%b, %b) AS q(s, first)"
    " WHERE EXISTS (SELECT FROM chunks c WHERE c.series_id = q.s AND c.t_max >= q.first)"
)
_LOG_BATCH = f"INSERT INTO compact_batches VALUES (%s, currval({_ID_SEQ}), %s)"
_COMPACT_BATCHES = 16  # compact_batches rows (batches) worked off per round of compaction
_PACK_AGE_MS = 300_000  # a batch's chunks are packed at the latest this long after it was written
# The chunks to pack of series s[i] between a[i] and b[i] (end excluded): an index range each.
_PACK_READ = (
    "SELECT c.id, c.series_id, c.t_min, c.t_max, c.data FROM unnest(%b, %b, %b) AS q(s, a, b)"
    " JOIN chunks c ON c.series_id = q.s AND c.t_max >= q.a AND c.t_min < q.b"
)
_PACK_INSERT = (
    "INSERT INTO chunks (id, series_id, t_min, t_max, n, data) OVERRIDING SYSTEM VALUE"
    f" SELECT coalesce(x.i, nextval({_ID_SEQ})), x.s, x.a, x.b, x.n, x.d"
    " FROM unnest(%s::bigint[], %b, %b, %b, %s::integer[], %s::bytea[]) AS x(i, s, a, b, n, d)"
)
# The chunks of series s[i] that may hold points in [a[i], b[i]]: an index range per series.
_CHUNKS_IN = (
    "SELECT c.series_id, c.id, c.t_min, c.t_max, c.data FROM unnest(%b, %b, %b) AS q(s, a, b)"
    " JOIN chunks c ON c.series_id = q.s AND c.t_max >= q.a AND c.t_min <= q.b"
)
# Damaged rows moved into the quarantine table (store/quarantine.py) in one statement each table,
# answering the ids moved. A chunk only if it is still the row read (packing reuses chunk ids: its
# data tells); a part's id is never reused.
_SET_ASIDE_CHUNKS = (
    "WITH gone AS (DELETE FROM chunks c USING unnest(%s::bigint[], %s::text[], %s::bytea[])"
    " AS d(id, reason, data) WHERE c.id = d.id AND c.data = d.data"
    " RETURNING c.id, c.series_id, c.t_min, c.t_max, c.n, c.data, d.reason)"
    f" INSERT INTO {quarantine.TABLE} ({quarantine.COLUMNS})"
    " SELECT 'chunks', id, series_id, t_min, t_max, n, NULL, data, reason, %s FROM gone RETURNING source_id"
)
_SET_ASIDE_PARTS = (
    "WITH gone AS (DELETE FROM parts p USING unnest(%s::bigint[], %s::text[]) AS d(id, reason)"
    " WHERE p.id = d.id RETURNING p.id, p.t_min, p.t_max, p.n, p.at_ms, p.data, d.reason)"
    f" INSERT INTO {quarantine.TABLE} ({quarantine.COLUMNS})"
    " SELECT 'parts', id, NULL, t_min, t_max, n, at_ms, data, reason, %s FROM gone RETURNING source_id"
)


def set_aside(
    conn: _Conn, damaged: Sequence[quarantine.Damaged], data: Mapping[int, bytes]
) -> list[quarantine.Damaged]:
    """Move the damaged rows (a chunk's bytes as read: ``data`` by id) into the quarantine table,
    in the caller's transaction; those moved (a row another transaction moved or packed meanwhile
    is left to it). Refused if a newer lossproof migrated the schema since this one checked it:
    rows this code takes for damage may be ones it cannot read (a format it does not know, as
    sealed rows were to migration 7)."""
    got = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    if got is not None and got[0] is not None and int(got[0]) > mig.LATEST:
        raise StoreSchemaError(
            f"the schema is at version {got[0]}, newer than this lossproof knows ({mig.LATEST}),"
            " since it started: upgrade lossproof; nothing set aside"
        )
    now = time.time_ns() // 1_000_000
    moved: set[tuple[str, int]] = set()
    for table in ("chunks", "parts"):
        mine = [d for d in damaged if d.table == table]
        if not mine:
            continue
        args: list[Any] = [[d.id for d in mine], [d.reason for d in mine]]
        if table == "chunks":
            args.append([data[d.id] for d in mine])
        rows = conn.execute(_SET_ASIDE_CHUNKS if table == "chunks" else _SET_ASIDE_PARTS, (*args, now))
        moved.update((table, int(r[0])) for r in rows.fetchall())
    return [d for d in damaged if (d.table, d.id) in moved]


# The last write wins; an unchanged row is not rewritten (senders repeat their metadata every minute).
_UPSERT_METADATA = (
    "INSERT INTO metadata VALUES (%s, %s, %s, %s, %s) ON CONFLICT (tenant, metric) DO UPDATE"
    " SET type = excluded.type, help = excluded.help, unit = excluded.unit"
    " WHERE (metadata.type, metadata.help, metadata.unit)"
    " IS DISTINCT FROM (excluded.type, excluded.help, excluded.unit)"
)


class Retention(NamedTuple):
    """What :meth:`PostgresStore.maintain` deleted: the chunks whose newest point was before
    ``before_ms`` (None: retention is off)."""

    before_ms: int | None
    chunks: int
    points: int


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` of a DSN, without its password (for messages)."""
    try:
        d = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "?"
    user = str(d.get("user", ""))
    host = d.get("host") or d.get("hostaddr") or "localhost"
    port = d.get("port") or "5432"
    return f"{user}{'@' if user else ''}{host}:{port}/{d.get('dbname', '')}"


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return "; ".join(parts)


def _is_data_error(e: psycopg.Error) -> bool:
    if e.sqlstate is None:  # raised by the driver itself: a value it cannot send (e.g. a NUL in text)
        return isinstance(e, psycopg.DataError)
    return e.sqlstate[:2] in _DATA_CLASSES


_LIBPQ_NOISE = re.compile(
    r"connection (?:failed|is bad): |connection to server (?:at \"[^\"]*\"(?: \([^)]*\))?, port \d+"
    r"|on socket \"[^\"]*\") failed: |FATAL:\s+"
)


# What waiting mends, by libpq's words (it gives a refusal at connect time as the server's FATAL
# message, without its SQLSTATE): no server answering (refused, timed out, unreachable, no socket,
# the connection dropped, a DNS failure that is temporary), or a server that cannot take a connection
# now (starting up, shutting down, recovering, out of connection slots for all, the role or the
# database). Anything else (a password, a database or role that does not exist, pg_hba, SSL or
# GSSAPI settings, a DSN option libpq refuses) is a setup problem. A server answering in another
# language than English is taken at its word less: its "not now" counts as a setup problem.
_WAIT_FOR = re.compile(
    r"Connection refused|timeout expired|timed out|No route to host|Network is unreachable"
    r"|No such file or directory|server closed the connection unexpectedly|Connection reset"
    r"|Temporary failure in name resolution"
    r"|the database system is (?:starting up|shutting down|in recovery mode|not (?:yet )?accepting"
    r" connections)|too many clients|too many connections for (?:role|database)"
    r"|remaining connection slots",
    re.IGNORECASE,
)


def connect_error(dsn: str, e: BaseException) -> StoreError:
    """One line for a failure to connect at start-up. :class:`StoreUnavailable` when the server
    did not answer (down, unreachable, still recovering) or cannot take a connection now: worth
    waiting for, as a host's reboot brings PostgreSQL up after lossproof. A plain
    :class:`StoreError` for what waiting does not mend (bad DSN, password, database)."""
    if isinstance(e, psycopg.ProgrammingError) and "connection info" in str(e).lower():
        return StoreError(f"store.dsn is not a valid PostgreSQL connection string: {_one_line(e)}")
    why = _LIBPQ_NOISE.sub("", _one_line(e))
    message = f"cannot connect to PostgreSQL {describe_dsn(dsn)}: {why}"
    if isinstance(e, psycopg.OperationalError) and _WAIT_FOR.search(str(e)):
        return StoreUnavailable(message)
    return StoreError(message)


def open_connection(dsn: str, connect_timeout: float) -> _Conn:
    """An autocommit connection for start-up checks and ``store migrate``; errors as :class:`StoreError`."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=max(1, math.ceil(connect_timeout)),
            application_name="lossproof",
        )
    except psycopg.Error as e:
        raise connect_error(dsn, e) from None
