"""The embedded store's write path: ``write_batch`` in one ``BEGIN IMMEDIATE`` transaction. What a
batch does to reports, conflicts and the ledger is :func:`lossproof.store.plan.plan_batch`; this
loads the prior state agent by agent, applies the plan and writes the points as one part."""

from __future__ import annotations

import contextlib
import itertools
import operator
import sqlite3
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from lossproof.faults import crash_point
from lossproof.store import chunks
from lossproof.store import ledger as lg
from lossproof.store.base import (
    StoreError,
    StoreUnavailable,
    WriteBatch,
    WriteResult,
    labels_text,
    latest_metadata,
)
from lossproof.store.columns import Columns, drop_stored
from lossproof.store.embedded.common import (
    _AGENT_COLUMNS,
    _NEWEST,
    _NEWEST_MAX,
    _NONE,
    _SUMMARY,
    _UPSERT_METADATA,
    _AgentKey,
    _SeriesKey,
)
from lossproof.store.embedded.core import SqliteCore
from lossproof.store.plan import Plan, Prior, Summary, digests_wanted, plan_batch
from lossproof.store.series_index import Found


class SqliteWriter(SqliteCore):
    """The write path of the embedded store."""

    if TYPE_CHECKING:  # the read path's (SqliteStore)

        def _series_points(
            self, found: Sequence[Found], from_ms: int, to_ms: int
        ) -> list[tuple[chunks.I64, chunks.F64]]: ...

        def _parts_dirs(
            self, from_ms: int, to_ms: int
        ) -> list[tuple[int, chunks.PartLayout, tuple[chunks.I64, chunks.I64, chunks.I64]]]: ...

    # --- writes --------------------------------------------------------------------------------

    def write_batch(self, batch: WriteBatch) -> WriteResult:
        pending: dict[_SeriesKey, int] = {}
        with self._write(pending, "store.before_commit"):  # chaos scenario 2 kills -9 there
            return self._apply(batch, pending)

    @contextlib.contextmanager
    def _write(self, pending: dict[_SeriesKey, int], crash_at: str) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any error; SQLite's
        and the OS's errors become :class:`StoreUnavailable`), under the lock. After COMMIT, and
        only then, the series ids in ``pending`` and the newest t of what was written are cached:
        a rolled-back id could be handed out again."""
        if self.readonly:
            raise StoreError("store opened readonly")
        with self._lock:
            self._newest_new.clear()
            try:
                self._con.execute("BEGIN IMMEDIATE")
                seen = self._con.execute("PRAGMA data_version").fetchone()[0]
                if seen != self._newest_seen or len(self._newest) > _NEWEST_MAX:
                    self._newest.clear()  # another connection committed: what it stored is unknown here
                    self._newest_seen = seen
                yield
                crash_point(crash_at)
                self._con.execute("COMMIT")
            except (sqlite3.OperationalError, OSError) as e:
                self._rollback()
                raise StoreUnavailable(f"sqlite {self.path}: {e}") from e
            except BaseException:
                self._rollback()
                raise
            self._series.add_committed(pending)
            self._committed_newest()

    def _committed_newest(self) -> None:
        for sids, top in self._newest_new:
            self._newest.update(zip(sids.tolist(), top.tolist(), strict=True))
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
                plan.conflict_rows(),
            )
        self._save_plan(plan)
        for tenant, group in itertools.groupby(batch.samples, key=operator.itemgetter(0)):
            cols.add(tenant, (p for _, p in group), self._series, resolve)
        for tenant, runs in itertools.groupby(batch.series, key=operator.itemgetter(0)):
            cols.add_series(tenant, (x for _, x in runs), self._series, resolve)
        written = self._write_points(cols, now)

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
        return WriteResult(written, plan.stored, plan.duplicates, plan.conflicted)

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
        were written. Call inside the write transaction (``_write``)."""
        if not len(cols):
            return 0
        sids, ts, vs = cols.sorted()
        starts, ends = chunks.series_bounds(sids)
        batch_sids = sids[starts]
        newest = self._newest_of(batch_sids)
        maybe = ts[starts] <= newest
        if maybe.any():
            may = dict(zip(batch_sids[maybe].tolist(), newest[maybe].tolist(), strict=True))
            sids, ts, vs = drop_stored(sids, ts, vs, may, self._stored_ts)
            if not len(ts):
                return 0
            starts, ends = chunks.series_bounds(sids)
            newest = newest[np.searchsorted(batch_sids, sids[starts])]
        self._con.execute(
            "INSERT INTO parts (t_min, t_max, n, at_ms, data) VALUES (?, ?, ?, ?, ?)",
            (int(ts.min()), int(ts.max()), len(ts), now_ms, chunks.encode_part(sids, ts, vs)),
        )
        # the cache's new value, once committed: a backfill leaves a series' newest t as it was
        self._newest_new.append((sids[starts], np.maximum(newest, ts[ends - 1])))
        return len(ts)

    def _newest_of(self, sids: chunks.I64) -> chunks.I64:
        """The newest t stored of each series (_NONE: none), from the cache or else the store."""
        cache = self._newest
        ids = sids.tolist()
        missing = [sid for sid in ids if sid not in cache]
        if missing:
            rows = self._con.execute(_NEWEST, (msgspec.json.encode(missing),))
            top = np.array([_NONE if t is None else t for _, t in rows], dtype=np.int64)
            want = np.array(missing, dtype=np.int64)
            for _, _, (psids, ptmax, _) in self._parts_dirs(-(1 << 63), (1 << 63) - 1):
                if len(psids):
                    idx = np.minimum(np.searchsorted(psids, want), len(psids) - 1)
                    hit = psids[idx] == want
                    top[hit] = np.maximum(top[hit], ptmax[idx[hit]])
            cache.update(zip(missing, top.tolist(), strict=True))
        return np.array([cache[sid] for sid in ids], dtype=np.int64)

    def _stored_ts(self, items: list[tuple[int, int, int]]) -> list[chunks.I64]:
        """The stored timestamps of each ``(series, from_ms, to_ms)``: one pass over the parts for
        all of them (read over the union of their ranges, then cut)."""
        lo, hi = min(f for _, f, _ in items), max(t for _, _, t in items)
        got = self._series_points([(sid, "", ()) for sid, _, _ in items], lo, hi)
        out = []
        for (_, f, t), (ts, _) in zip(items, got, strict=True):
            out.append(ts[(ts >= f) & (ts <= t)])
        return out

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
