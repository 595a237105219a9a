"""The embedded store's write path: ``write_batch`` in one ``BEGIN IMMEDIATE`` transaction. What a
batch does to reports, conflicts and the ledger is :func:`lossproof.store.plan.plan_batch`; this
loads the prior state agent by agent, applies the plan and writes the points as one part."""

from __future__ import annotations

import contextlib
import itertools
import operator
import sqlite3
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

import msgspec
import numpy as np
import numpy.typing as npt

from lossproof.faults import crash_point
from lossproof.store import chunks, quarantine
from lossproof.store import ledger as lg
from lossproof.store.base import (
    CHECKED_TABLES,
    StoreError,
    StoreUnavailable,
    WriteBatch,
    WriteResult,
    labels_text,
    latest_metadata,
)
from lossproof.store.columns import Columns, not_stored, reads_stored
from lossproof.store.embedded.common import (
    _AGENT_COLUMNS,
    _NEWEST,
    _NEWEST_MAX,
    _NONE,
    _SELECT_CHUNKS_OF,
    _SUMMARY,
    _UPSERT_METADATA,
    _AgentKey,
    _SeriesKey,
    batch_error,
)
from lossproof.store.embedded.core import SqliteCore
from lossproof.store.plan import Plan, Prior, Summary, digests_wanted, plan_batch
from lossproof.store.series_index import Found

_BEGIN_POLL_S = 0.001
# What a transaction writes to the WAL besides its part, about (ledger, index and meta pages): the
# checkpoint thread's measure of when to run (store/embedded/checkpoint.py).
_COMMIT_BYTES = 16384


class SqliteWriter(SqliteCore):
    """The write path of the embedded store."""

    if TYPE_CHECKING:  # the read path's (SqliteStore)

        def _series_points(
            self, found: Sequence[Found], from_ms: int, to_ms: int, scratch: list[bytearray] | None = None
        ) -> list[tuple[chunks.I64, chunks.F64]]: ...

        def _parts_dirs(
            self, from_ms: int, to_ms: int
        ) -> list[tuple[int, chunks.PartLayout, tuple[chunks.I64, chunks.I64, chunks.I64]]]: ...

    # --- writes --------------------------------------------------------------------------------

    def write_batch(self, batch: WriteBatch) -> WriteResult:
        """See :meth:`Store.write_batch`. Only an error the batch's own data causes goes out as it
        is (:func:`batch_error`: the worker dead-letters the record); any other is the store's
        (a damaged file, no memory, a bug here) and becomes :class:`StoreUnavailable`: the batch is
        kept and retried, never given up."""
        pending: dict[_SeriesKey, int] = {}
        try:
            with self._write(pending, "store.before_commit"):  # chaos scenario 2 kills -9 there
                return self._apply(batch, pending)
        except StoreError:
            raise
        except Exception as e:
            if batch_error(e):
                raise
            raise StoreUnavailable(f"sqlite {self.path}: {type(e).__name__}: {e}") from e

    @contextlib.contextmanager
    def _write(self, pending: dict[_SeriesKey, int], crash_at: str, by: str = "write") -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any error; SQLite's
        and the OS's errors become :class:`StoreUnavailable`), under the lock. After COMMIT, and
        only then, the series ids in ``pending`` and the newest t of what was written are cached:
        a rolled-back id could be handed out again; and the damaged rows it set aside are logged
        (``by``: what set them aside)."""
        if self.readonly:
            raise StoreError("store opened readonly")
        with self._lock:
            self._newest_new.clear()
            self._aside = []
            self._txn_bytes = _COMMIT_BYTES
            try:
                if self._checkpointer is not None:
                    self._checkpointer.bound(self._con)
                self._begin_immediate()
                self._check_stored_cache()
                yield
                crash_point(crash_at)
                self._con.execute("COMMIT")
            except (sqlite3.OperationalError, OSError) as e:
                self._rollback()
                raise StoreUnavailable(f"sqlite {self.path}: {e}") from e
            except sqlite3.DatabaseError as e:
                self._rollback()
                if type(e) is not sqlite3.DatabaseError:  # integrity, data, programming: not the file's
                    raise
                # the file itself damaged ("database disk image is malformed"): the store's failure
                raise StoreUnavailable(f"sqlite {self.path}: {e}") from e
            except BaseException:
                self._rollback()
                raise
            self._series.add_committed(pending)
            self._committed_newest()
            quarantine.logged(self._aside, "sqlite", by)
            if self._checkpointer is not None:
                self._checkpointer.wrote(self._txn_bytes)

    def _begin_immediate(self) -> None:
        """BEGIN IMMEDIATE, asking for the write lock again every millisecond while another
        connection (the compactor) holds it, up to the busy timeout. SQLite's own busy handler
        sleeps longer and longer between tries (up to 100 ms a try), so the writer slept on well
        after a compaction step had committed: draining a backlog, the worker waited in BEGIN
        for ~20 % of its time."""
        con = self._con
        con.execute("PRAGMA busy_timeout = 0")
        try:
            deadline = time.monotonic() + self._busy_timeout_ms / 1000
            while True:
                try:
                    con.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as e:
                    if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                        raise
                time.sleep(_BEGIN_POLL_S)
        finally:
            con.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")

    def _check_stored_cache(self) -> None:
        """Forget what this writer knows it stored if another connection may have stored points
        since it last wrote (or the table knows too many series). Another connection's commit
        changes ``PRAGMA data_version``; of those, only one that inserted a part stored points (a
        compaction moves points from parts into chunks, keeping the same (series, t) stored, and
        the parts' ids are never reused): the parts' AUTOINCREMENT sequence tells. A connection that
        set damaged rows aside (quarantine.py: the quarantine table's AUTOINCREMENT sequence tells: an
        operator deleting its rows does not make an id seen before come back) unstored
        points, which a replay must then store again."""
        con = self._con
        seen = con.execute("PRAGMA data_version").fetchone()[0]
        if seen != self._newest_seen:
            self._newest_seen = seen
            row = con.execute(
                "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'parts'),"
                f" coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{quarantine.TABLE}'),"
                f" (SELECT max(id) FROM {quarantine.TABLE}))"
            ).fetchone()
            top, aside = int(row[0] or 0), int(row[1] or 0)
            if top != self._parts_seq or aside != self._aside_top:
                self._stored.clear()  # another connection stored points: what it stored is unknown here
                self._parts_seq = top
                self._aside_top = aside
        if self._stored.series() > _NEWEST_MAX:
            self._stored.clear()

    def _committed_newest(self) -> None:
        for sids, ts, part in self._newest_new:
            self._stored.add(sids.tobytes(), ts.tobytes())
            self._parts_seq = max(self._parts_seq, part)
        self._newest_new.clear()

    def _apply(self, batch: WriteBatch, pending: dict[_SeriesKey, int]) -> WriteResult:
        con = self._con
        now = batch.now_ms
        work = lg.group_batch(batch)
        cols = Columns()
        resolve = partial(self._resolve, pending)
        plan = plan_batch(work, self._prior(work), now)
        for (tenant, _, _), r, _ in plan.reports:
            cols.add(tenant, r.points, self._series, resolve)
        if plan.reports:
            con.executemany(
                "INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", plan.report_rows()
            )
        if plan.conflicts:
            con.executemany(
                "INSERT INTO conflicts (tenant, agent, incarnation, seq, digest, points, n_points,"
                " detected_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                plan.conflict_rows(self._conflict_digests),
            )
        self._save_plan(plan)
        for tenant, group in itertools.groupby(batch.samples, key=operator.itemgetter(0)):
            cols.add(tenant, (p for _, p in group), self._series, resolve)
        for tenant, runs in itertools.groupby(batch.series, key=operator.itemgetter(0)):
            cols.add_series(tenant, (x for _, x in runs), self._series, resolve)
        offered = len(cols)
        written = self._write_points(cols, now)
        quarantined = len(self._aside)

        if batch.dead_letters:
            con.executemany(
                "INSERT INTO dead_letters (partition, log_offset, tenant, reason, payload, at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(d.partition, d.offset, d.tenant, d.reason, d.payload, now) for d in batch.dead_letters],
            )
        if batch.gaps:
            con.executemany(
                "INSERT INTO log_gaps VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(g.partition, g.first, g.last, g.reason, g.detected_ms) for g in batch.gaps],
            )
        if batch.metadata:
            con.executemany(
                _UPSERT_METADATA,
                [(m.tenant, m.metric, m.type, m.help, m.unit) for m in latest_metadata(batch.metadata)],
            )
        return WriteResult(
            written, plan.stored, plan.duplicates, plan.conflicted, offered - written, quarantined
        )

    def _conflict_digests(self, key: tuple[str, str, str, int]) -> list[bytes]:
        sql = "SELECT digest FROM conflicts WHERE tenant = ? AND agent = ? AND incarnation = ? AND seq = ?"
        return [d for (d,) in self._con.execute(sql, key)]

    @reads_stored
    def _prior(self, work: dict[_AgentKey, lg.AgentWork]) -> Prior:
        """What :func:`plan_batch` needs, agent by agent: the summary and ledger rows of the batch's
        incarnations; of the other incarnations, with seqs still delayed, of an agent id that gets a
        new one; the stored digests of the seqs the batch repeats."""
        con = self._con
        prior = Prior()
        new_ids: set[tuple[str, str]] = set()
        for key in work:
            row = con.execute(
                f"SELECT {_SUMMARY} FROM agents WHERE tenant = ? AND agent = ? AND incarnation = ?", key
            ).fetchone()
            if row is None:
                new_ids.add(key[:2])
            else:
                prior.agents[key] = Summary.of(row)
                prior.ledgers[key] = self._ledger_rows(key)
        for tenant, agent in new_ids:
            for inc, *row in con.execute(
                f"SELECT incarnation, {_SUMMARY} FROM agents WHERE tenant = ? AND agent = ?"
                " AND delayed_reports > 0",
                (tenant, agent),
            ).fetchall():
                key = (tenant, agent, inc)
                if key not in work:
                    prior.agents[key] = Summary.of(row)
                    prior.ledgers[key] = self._ledger_rows(key)
        for key, seqs in digests_wanted(work, prior).items():
            prior.digests[key] = self._stored_digests(key, lg.from_seqs(seqs))
        return prior

    def _save_plan(self, plan: Plan) -> None:
        """The plan's ledger rows and agent rows (conflicts recounted where some were added)."""
        if gone := plan.ledger_deletes():
            self._con.executemany(
                "DELETE FROM ledger WHERE tenant = ? AND agent = ? AND incarnation = ? AND kind = ?"
                " AND first = ?",
                gone,
            )
        if added := plan.ledger_inserts():
            self._con.executemany(
                "INSERT INTO ledger (tenant, agent, incarnation, kind, first, last, since_ms, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                added,
            )
        rows = []
        for u in plan.agents:
            row = u.row
            if u.recount_conflicts:
                n = self._con.execute(
                    "SELECT count(*) FROM conflicts WHERE tenant = ? AND agent = ? AND incarnation = ?", u.key
                ).fetchone()[0]
                row = u.row_with(int(n))
            rows.append(row)
        if rows:
            self._con.executemany(
                f"INSERT OR REPLACE INTO agents ({_AGENT_COLUMNS}) VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def _resolve(
        self,
        pending: dict[_SeriesKey, int],
        key: _SeriesKey,
        tenant: str,
        metric: str,
        labels: dict[str, str],
    ) -> int:
        sid = self._series.get(key)
        if sid is None:
            sid = pending.get(key)
            if sid is None:
                sid = self._series_id(key, tenant, metric, labels, pending)
        return sid

    def _write_points(self, cols: Columns, now_ms: int) -> int:
        """Write the columns as one part, minus the points already stored; returns how many points
        were written. Call inside the write transaction (``_write``).

        First write wins: what this writer stored recently (``self._stored``) tells of most points
        whether they are stored already, without a read: all of a series' points newer than what
        the store held when the series was first looked up, and points out of time order (bodies
        of several connections, replays) within the table's reach. Only the points it cannot tell
        (older than that, or of a series stored by another connection meanwhile) are looked up in
        the store (``_stored_ts``)."""
        if not len(cols):
            return 0
        sids, ts, vs = cols.sorted()
        for _ in range(quarantine.ATTEMPTS):
            try:
                keep = self._not_stored(sids, ts)
                break
            except quarantine.SetAside:
                continue  # damaged rows moved aside: what is stored is asked again, without them
        else:
            raise StoreUnavailable(f"sqlite {self.path}: damaged rows keep turning up")
        if keep is not None:
            if not keep.any():
                return 0
            sids, ts, vs = sids[keep], ts[keep], vs[keep]
        data = chunks.encode_part(sids, ts, vs)
        cur = self._con.execute(
            "INSERT INTO parts (t_min, t_max, n, at_ms, data) VALUES (?, ?, ?, ?, ?)",
            (int(ts.min()), int(ts.max()), len(ts), now_ms, data),
        )
        self._txn_bytes += len(data)
        # remembered once committed (rolled back, they were not stored)
        self._newest_new.append((sids, ts, int(cur.lastrowid or 0)))
        return len(ts)

    def _not_stored(self, sids: chunks.I64, ts: chunks.I64) -> npt.NDArray[np.bool_] | None:
        """Which of the points (sorted by series, then t) are not stored yet (None: all of them).
        Raises :class:`quarantine.SetAside` when it had to set damaged rows aside."""
        starts, _ = chunks.series_bounds(sids)
        self._learn(sids[starts])
        verdict = np.frombuffer(self._stored.check(sids.tobytes(), ts.tobytes()), dtype=np.uint8)
        if not verdict.any():
            return None
        keep: npt.NDArray[np.bool_] = verdict == 0
        unknown = np.flatnonzero(verdict == 2)
        if len(unknown):
            keep[unknown] = not_stored(sids[unknown], ts[unknown], self._stored_ts)
        return keep

    def _set_aside_in(self, sids: Sequence[int], lo: int, hi: int) -> None:
        """After a read of what is stored failed: set aside the damaged chunks of the series
        ``sids`` and the damaged parts that overlap [lo, hi], each decoded alone
        (:mod:`~lossproof.store.quarantine`), and raise :class:`quarantine.SetAside` when there
        were some; else return (the failure was not the data's: the caller raises it)."""
        con = self._con
        damaged = []
        if sids:
            rows = con.execute(_SELECT_CHUNKS_OF, (msgspec.json.encode(list(sids)), lo, hi)).fetchall()
            damaged += quarantine.damaged_chunks([(cid, a, b, data) for _, cid, a, b, data in rows])
        parts = con.execute(
            "SELECT id, t_min, t_max, n, data FROM parts WHERE t_max >= ? AND t_min <= ?", (lo, hi)
        ).fetchall()
        damaged += quarantine.damaged_parts(parts)
        if damaged:  # (moved here, or by another connection first: either way, read again)
            self._set_aside(damaged)
            raise quarantine.SetAside()

    def set_aside_rows(
        self, rows: Sequence[quarantine.Damaged], by: str = "check"
    ) -> list[quarantine.Damaged]:
        """See :meth:`Store.set_aside_rows`: one write transaction (``_write``: logged after COMMIT,
        and ``_set_aside``: this writer's stored times forgotten, ``compact_gen`` counted up, which
        the worker's handles see through the quarantine table's newest id and ``compact_gen``)."""
        if not rows:
            return []
        with self._write({}, "store.set_aside_before_commit", by=by):
            still: list[quarantine.Damaged] = []
            for table in CHECKED_TABLES:
                ids = sorted({d.id for d in rows if d.table == table})
                if not ids:
                    continue
                # read again inside the transaction: a row packed, set aside or deleted since the
                # check is gone; a chunk id reused by packing holds a new, checked chunk
                now = self._con.execute(
                    f"SELECT {quarantine.ROW_COLUMNS[table]} FROM {table}"
                    " WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
                    (msgspec.json.encode(ids),),
                ).fetchall()
                still += quarantine.damaged_rows(table, now)
            self._set_aside(still)
        return list(self._aside)

    @reads_stored
    def _learn(self, sids: chunks.I64) -> None:
        """Make the series of ``sids`` known to ``self._stored``, with the newest t stored of each
        (_NONE: none) as its floor: one index seek per series for the chunks, plus a look into the
        live parts' directories."""
        missing = np.frombuffer(self._stored.unknown(sids.tobytes()), dtype=np.int64)
        if not len(missing):
            return
        rows = self._con.execute(_NEWEST, (msgspec.json.encode(missing.tolist()),))
        top = np.array([_NONE if t is None else t for _, t in rows], dtype=np.int64)
        try:
            dirs = self._parts_dirs(-(1 << 63), (1 << 63) - 1)
        except ValueError:  # a damaged part's directory (ChunkError, or numpy's on one cut short)
            self._set_aside_in((), -(1 << 63), (1 << 63) - 1)
            raise
        for _, _, (psids, ptmax, _) in dirs:
            if len(psids):
                idx = np.minimum(np.searchsorted(psids, missing), len(psids) - 1)
                hit = psids[idx] == missing
                top[hit] = np.maximum(top[hit], ptmax[idx[hit]])
        self._stored.learn(missing.tobytes(), top.tobytes())

    @reads_stored
    def _stored_ts(self, sids: list[int], lo: int, hi: int) -> list[chunks.I64]:
        """The stored timestamps in [lo, hi] of each series (``columns.not_stored``)."""
        try:
            return [ts for ts, _ in self._series_points([(sid, "", ()) for sid in sids], lo, hi)]
        except ValueError:  # a damaged chunk or part (ChunkError), or numpy's on one cut short
            self._set_aside_in(sids, lo, hi)
            raise

    def _series_id(
        self,
        key: _SeriesKey,
        tenant: str,
        metric: str,
        labels: dict[str, str],
        pending: dict[_SeriesKey, int],
    ) -> int:
        text = labels_text(labels)
        row = self._con.execute(
            "SELECT id FROM series WHERE tenant = ? AND metric = ? AND labels_json = ?",
            (tenant, metric, text),
        ).fetchone()
        if row is None:
            row = self._con.execute(
                "INSERT INTO series (tenant, metric, labels_json) VALUES (?, ?, ?) RETURNING id",
                (tenant, metric, text),
            ).fetchone()
        sid = int(row[0])
        pending[key] = sid
        return sid
