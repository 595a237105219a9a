"""An in-process index of a store's series for the read side: what every PromQL selector, ``/api/v1/series``,
``/api/v1/labels`` and ``/api/v1/label/<name>/values`` ask, answered without reading and decoding the
whole series table and sorting it on every request (issue #15, "Series index" and "Reads").

Per tenant: the series (id, metric, labels as sorted ``(name, value)`` pairs) by position (0, 1, ... in
the order the index learnt of them), and postings: for each label name and value, and for each metric
name, the positions of the series that have it, in increasing order (``array('q')``, copied into numpy
arrays on demand and cached). A matcher is evaluated on the values of its label (``=`` and ``!=`` by
one dict look-up, regexes once per distinct value, with :meth:`Matcher.matches`, so the semantics are
those of the SQL path: RE2, anchored, a missing label taken as ``""``), then the postings of the
values it keeps are combined with numpy.

One index per store (database file, or PostgreSQL DSN and schema) per process, shared by every handle
of it (the query process opens one per read thread): it lives in :data:`_REGISTRY`. It is filled from
the store's series table once and then kept up to date incrementally: series ids only grow and series
are never deleted (retention and compaction delete points, never series rows), so a refresh reads the
rows above the highest id seen. How each backend learns of new rows (and, in PostgreSQL, of rows
committed out of id order) is in :meth:`SeriesIndex.sync_sqlite` and :meth:`SeriesIndex.sync_pg`.

Memory, measured (``/proc/self/statm``) with 1 M series of 4 labels, one of them unique per series
(``instance``): ~500 MB, ~500 bytes a series; a unique label value costs most of that (its string, its
postings entry and array, its pair), repeated ``(name, value)`` pairs are one object for all series. Past
:data:`INDEX_MAX_SERIES` series (all tenants together) the index gives up and the store reads the
series table as it did before (``None`` from :meth:`SeriesIndex.tenant`), so memory stays bounded
whatever the cardinality; the ingest series limit (``server.max_series_per_tenant``) keeps it below that
in practice. Building it reads the whole table once (~17 s for 1 M series on a loaded 2-core machine;
~0.2 s for 10,000); the first large result then ranks every series once (see :meth:`TenantIndex._ranks`).
PostgreSQL also keeps the ids above its safe bound in a set for ``PG_SAFE_LAG_SECONDS`` (all of them
right after the first load).
"""

from __future__ import annotations

import bisect
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from lossproof.obs.logging import get
from lossproof.store.base import Matcher, StoreWouldWait

log = get(__name__)

INDEX_MAX_SERIES = 1_000_000  # all tenants of one store: past it, reads go back to the series table
# PostgreSQL: a series row whose id is below one already seen can still appear (concurrent writers);
# ids are re-read from the last "safe" one, which advances once the transactions that could still
# commit below it are over (txid snapshots) and this long has passed (see sync_pg).
PG_SAFE_LAG_SECONDS = 1.0
PG_RECOUNT_SECONDS = 600.0  # and the whole table is counted this often, as a backstop
_MATCHED_MAX = 1_000_000  # values kept in a tenant's matcher cache, all matchers together (~8 MB)
_SORT_RANK_FROM = 512  # results at least this long are ordered by the tenant's precomputed rank

I64 = npt.NDArray[np.int64]
Pairs = tuple[tuple[str, str], ...]  # a series' labels, sorted by name
Found = tuple[int, str, Pairs]  # (series id, metric, labels)

_DECODE = msgspec.json.Decoder(dict[str, str])
_EMPTY = np.empty(0, dtype=np.int64)


class TenantIndex:
    """One tenant's series and postings (see the module docstring). Not thread-safe by itself: the
    owning :class:`SeriesIndex` serialises every use under its lock."""

    def __init__(self) -> None:
        self.sids = array("q")  # position -> series id
        self.metrics: list[str] = []  # position -> metric
        self.pairs: list[Pairs] = []  # position -> labels
        self.by_metric: dict[str, array[int]] = {}
        self.postings: dict[str, dict[str, array[int]]] = {}  # label -> value -> positions
        self._np: dict[tuple[str | None, str], tuple[int, I64]] = {}  # (label, None: metric; value)
        self._order: list[int] = []  # positions in (metric, labels) order, for the first len() of them
        self._rank: I64 = _EMPTY
        # the values each recent matcher matched, with how many values its label had then
        self._matched: dict[tuple[str, str, str, bool], tuple[int, list[str]]] = {}
        self._matched_size = 0  # values held there in all (bounded by _MATCHED_MAX)
        # sorted label names (key None) and values of every series, with what they were made from
        self._sorted: dict[str | None, tuple[Any, list[str]]] = {}
        # what a brief read may still spend (see charge), None: no bound
        self.budget: int | None = None

    def __len__(self) -> int:
        return len(self.sids)

    def charge(self, units: int) -> None:
        """Spend ``units`` of :attr:`budget`, before the work they stand for: a unit is about a
        microsecond (a regex asked of a value, a series sorted or listed). A brief read
        (:meth:`lossproof.store.base.StoreReader.brief_reads`) sets a budget; past it the read is
        handed on (:class:`StoreWouldWait`) before the work is done."""
        if self.budget is not None:
            self.budget -= units
            if self.budget < 0:
                raise StoreWouldWait("too much work for a brief read")

    def add(self, sid: int, metric: str, pairs: Pairs) -> None:
        pos = len(self.sids)
        self.sids.append(sid)
        self.metrics.append(metric)
        self.pairs.append(pairs)
        post = self.by_metric.get(metric)
        if post is None:
            post = self.by_metric[metric] = array("q")
        post.append(pos)
        for name, value in pairs:
            values = self.postings.get(name)
            if values is None:
                values = self.postings[name] = {}
            post = values.get(value)
            if post is None:
                post = values[value] = array("q")
            post.append(pos)

    # --- postings as numpy arrays --------------------------------------------------------------------

    def _posting(self, name: str | None, value: str, post: array[int]) -> I64:
        """``post`` as an int64 array; cached until it grows (only the few asked about are kept)."""
        key = (name, value)
        got = self._np.get(key)
        if got is not None and got[0] == len(post):
            return got[1]
        self.charge(len(post) // 64)  # copied
        out = np.frombuffer(post.tobytes(), dtype=np.int64)
        if len(self._np) > 4096:
            self._np.clear()
        self._np[key] = (len(post), out)
        return out

    def _union(self, name: str | None, items: Sequence[tuple[str, array[int]]]) -> I64:
        """The positions in any of the postings ``items`` (disjoint: one value per label), sorted."""
        if not items:
            return _EMPTY
        if len(items) == 1:
            return self._posting(name, *items[0])
        self.charge(sum(len(p) for _, p in items) // 16)  # joined and sorted
        out = np.frombuffer(b"".join(p for _, p in items), dtype=np.int64).copy()
        out.sort()
        return out

    # --- matchers ------------------------------------------------------------------------------------

    def _one(self, m: Matcher) -> tuple[bool, I64]:
        """(include, positions): the series matching ``m`` are ``positions`` if ``include``, else all
        series but those."""
        if m.name == "__name__":
            table = self.by_metric
            key: str | None = None  # the metric's postings, apart from any label's
            missing_ok = False  # every series has a metric
        else:
            table = self.postings.get(m.name, {})
            key = m.name
            missing_ok = m.matches("")  # a series without the label has "" for it
        if m.op == "=" and not missing_ok:
            post = table.get(m.value)
            return True, (_EMPTY if post is None else self._posting(key, m.value, post))
        if m.op == "!=" and (missing_ok or m.name == "__name__"):
            post = table.get(m.value)
            return False, (_EMPTY if post is None else self._posting(key, m.value, post))
        negative = missing_ok or (m.name == "__name__" and m.op in ("!=", "!~"))
        # negative: all but the series with a value that does not match (a missing label matches)
        values = self._values(m, table, negative)
        return not negative, self._union(key, [(v, table[v]) for v in values])

    def _values(self, m: Matcher, table: dict[str, array[int]], negative: bool) -> list[str]:
        """The values of ``table`` that ``m`` matches (``negative``: does not match). Remembered per
        matcher until a value is added: a regex is asked of each value once, not at every query."""
        ck = (m.name, m.op, m.value, negative)
        got = self._matched.get(ck)
        if got is not None and got[0] == len(table):
            return got[1]
        self.charge(3 * len(table))  # a regex asked of a value: ~2.5 us
        values = [v for v in table if m.matches(v) != negative]
        self._matched_size += len(values)
        if len(self._matched) >= 1024 or self._matched_size > _MATCHED_MAX:
            self._matched.clear()
            self._matched_size = len(values)
        self._matched[ck] = (len(table), values)
        return values

    def match(self, matchers: Sequence[Matcher]) -> I64:
        """The positions of the series matching every matcher, increasing."""
        n = len(self.sids)
        if not n:
            return _EMPTY
        self.charge(len(matchers) * (1 + n // 64))  # a mask of the tenant's series a matcher
        parts = [self._one(m) for m in matchers]
        keep: I64 | None = None
        for _, pos in sorted((p for p in parts if p[0]), key=lambda p: len(p[1])):
            if keep is None:
                keep = pos
            else:
                mask = np.zeros(n, dtype=bool)
                mask[pos] = True
                keep = keep[mask[keep]]
            if not len(keep):
                return _EMPTY
        if keep is None:
            keep = np.arange(n, dtype=np.int64)
        drop = [pos for include, pos in parts if not include and len(pos)]
        if drop:
            mask = np.ones(n, dtype=bool)
            for pos in drop:
                mask[pos] = False
            keep = keep[mask[keep]]
        return keep

    def match_any(self, selectors: Sequence[Sequence[Matcher]] | None) -> I64 | None:
        """The positions matching any of the selectors (each a list of matchers), increasing; None
        (no selectors given) stands for every series."""
        if selectors is None:
            return None
        got = [self.match(ms) for ms in selectors]
        if not got:
            return _EMPTY
        if len(got) == 1:
            return got[0]
        self.charge(sum(len(g) for g in got) // 4)  # sorted
        return np.unique(np.concatenate(got))

    def sorted_found(self, pos: I64) -> list[Found]:
        """``(id, metric, labels)`` of the series at ``pos``, sorted by metric, then labels."""
        self.charge(2 * len(pos))  # and as much again for the caller's use of each
        # a few series sorted by their keys cost less than ranking every series, unless the ranks are
        # current already (111 series: 52 us by keys, 11 by ranks)
        if len(pos) >= _SORT_RANK_FROM or len(self._order) == len(self.sids):
            rank = self._ranks()
            pos = pos[np.argsort(rank[pos], kind="stable")]
            order = pos.tolist()
        else:
            metrics, pairs = self.metrics, self.pairs
            order = sorted(pos.tolist(), key=lambda p: (metrics[p], pairs[p]))
        sids, metrics, pairs = self.sids, self.metrics, self.pairs
        return [(sids[p], metrics[p], pairs[p]) for p in order]

    def _ranks(self) -> I64:
        """Each position's rank in (metric, labels) order. The order is kept between calls: new
        series are sorted and merged in (Timsort merges the two runs in linear time)."""
        n = len(self.sids)
        if len(self._order) < n:
            metrics, pairs = self.metrics, self.pairs
            order = self._order

            def key(p: int) -> tuple[str, Pairs]:
                return metrics[p], pairs[p]

            self.charge(n - len(order) if (n - len(order)) * 64 < len(order) else n)
            if (n - len(order)) * 64 < len(order):
                # a few new series: each put in its place (log n keys), not all n keys made again
                for p in range(len(order), n):
                    bisect.insort(order, p, key=key)
            else:
                order.extend(range(len(order), n))
                order.sort(key=key)
            rank = np.empty(n, dtype=np.int64)
            rank[np.array(order, dtype=np.int64)] = np.arange(n, dtype=np.int64)
            self._rank = rank
        return self._rank

    # --- label names and values ----------------------------------------------------------------------

    def label_names(self, pos: I64 | None) -> set[str]:
        """The label names of the series at ``pos`` (None: all), ``__name__`` with them if any."""
        if pos is None:
            pos_n = len(self.sids)
            names = set(self.postings)
        else:
            pos_n = len(pos)
            if pos_n < 4 * len(self.postings) or pos_n < 64:
                self.charge(pos_n)
                pairs = self.pairs
                names = {name for p in pos.tolist() for name, _ in pairs[p]}
            else:
                self.charge(sum(min(len(values), 16) for values in self.postings.values()))
                mask = np.zeros(len(self.sids), dtype=bool)
                mask[pos] = True
                names = set()
                for name, values in self.postings.items():
                    if len(values) > 16:
                        # many values: one pass over its postings at once
                        if mask[self._union(name, list(values.items()))].any():
                            names.add(name)
                    elif any(mask[self._posting(name, v, p)].any() for v, p in values.items()):
                        names.add(name)
        if pos_n:
            names.add("__name__")
        return names

    def label_values(self, name: str, pos: I64 | None) -> set[str]:
        """The values of label ``name`` (``__name__``: the metric) among the series at ``pos``
        (None: all). A series without the label has none (a stored "" is a value)."""
        if name == "__name__":
            table, key = self.by_metric, None
        else:
            table, key = self.postings.get(name, {}), name
        if pos is None:
            return set(table)
        if not len(pos) or not table:
            return set()
        self.charge(min(len(pos), len(table)))
        if len(pos) < 4 * len(table):
            if name == "__name__":
                metrics = self.metrics
                return {metrics[p] for p in pos.tolist()}
            pairs = self.pairs
            return {v for p in pos.tolist() for k, v in pairs[p] if k == name}
        mask = np.zeros(len(self.sids), dtype=bool)
        mask[pos] = True
        return {v for v, p in table.items() if mask[self._posting(key, v, p)].any()}

    def sorted_label_names(self, pos: I64 | None) -> list[str]:
        """:meth:`label_names`, sorted; for every series (None) kept until a name is added."""
        if pos is not None:
            return sorted(self.label_names(pos))
        made_of = (len(self.postings), len(self.sids) > 0)
        got = self._sorted.get(None)
        if got is None or got[0] != made_of:
            got = self._sorted[None] = (made_of, sorted(self.label_names(None)))
        return list(got[1])

    def sorted_label_values(self, name: str, pos: I64 | None) -> list[str]:
        """:meth:`label_values`, sorted; for every series (None) kept until a value is added (sorting
        a thousand values costs more than all the rest of the request)."""
        if pos is not None:
            return sorted(self.label_values(name, pos))
        n = len(self.by_metric if name == "__name__" else self.postings.get(name, ()))
        if not n:
            return []  # kept only for names some series has: a client can ask any name
        got = self._sorted.get(name)
        if got is None or got[0] != n:
            self.charge(n)
            got = self._sorted[name] = (n, sorted(self.label_values(name, None)))
        return list(got[1])


class SeriesIndex:
    """Every tenant's :class:`TenantIndex` of one store, kept up to date from its series table; shared
    by the store's handles in this process (:func:`shared`). Use it under :attr:`lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tenants: dict[str, TenantIndex] = {}
        self.count = 0
        self.last_id = 0  # every series with an id up to this one is in (SQLite: the highest seen)
        self.disabled = False  # over INDEX_MAX_SERIES: the stores read the table instead
        self._strings: dict[str, str] = {}  # one object per metric name
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}  # one object per (name, value)
        # PostgreSQL only
        self._recent: set[int] = set()  # ids above last_id already in
        self._pending: list[tuple[float, int, int]] = []  # (monotonic, xmax, highest id then)
        self._counted_at = time.monotonic()
        # the series table's file (its relfilenode): another one for a table made again, and for
        # one emptied (TRUNCATE, as a data-only restore does) with the same oid
        self._oid: int | None = None
        # SQLite only: (tenant, metric, labels_json) of the series with id last_id, to tell a file
        # whose contents were replaced (a backup restored into it) from one that only grew
        self._last_row: tuple[Any, ...] = ()

    def reset(self) -> None:
        self.tenants.clear()
        self.count = 0
        self.last_id = 0
        self.disabled = False
        self._strings.clear()
        self._pairs.clear()
        self._recent.clear()
        self._pending.clear()
        self._counted_at = time.monotonic()
        self._oid = None
        self._last_row = ()

    def tenant(self, tenant: str) -> TenantIndex | None:
        """The tenant's index (an empty one if it has no series); None when the index is disabled."""
        if self.disabled:
            return None
        return self.tenants.get(tenant) or TenantIndex()

    def _add(self, rows: Iterable[tuple[Any, ...]], skip: set[int] | None = None) -> int:
        """Add ``(id, tenant, metric, labels_json)`` rows; returns the highest id among them."""
        top = 0
        strings, pairs_of = self._strings, self._pairs
        for sid, tenant, metric, labels_json in rows:
            sid = int(sid)
            top = max(top, sid)
            if skip is not None:
                if sid in skip:
                    continue
                skip.add(sid)
            t = self.tenants.get(tenant)
            if t is None:
                t = self.tenants[tenant] = TenantIndex()
            metric = strings.setdefault(metric, metric)
            pairs: list[tuple[str, str]] = []
            for k, v in sorted(_DECODE.decode(labels_json).items()):
                pair = (k, v)
                got = pairs_of.get(pair)
                if got is None:
                    got = pairs_of[pair] = pair
                pairs.append(got)
            t.add(sid, metric, tuple(pairs))
            self.count += 1
            if self.count > INDEX_MAX_SERIES:
                break  # not one series more than the limit, however many rows there are
        if self.count > INDEX_MAX_SERIES:
            self._disable(self.count)
        return top

    def _disable(self, series: int) -> None:
        log.warning("store.series_index_disabled", series=series, limit=INDEX_MAX_SERIES)
        self.reset()
        self.disabled = True

    # --- keeping up with the store --------------------------------------------------------------------

    def sync_sqlite(self, execute: Callable[..., Any], most: int | None = None) -> bool:
        """Catch up with a SQLite series table (``execute``: a connection's). Two index seeks when
        nothing changed. SQLite has one writer at a time and hands out ids above the highest, so
        committed ids only grow: the rows above the highest id seen are all that can be new. A table
        whose row at the highest id seen is no longer that series was replaced (a backup restored
        into the file, ids reused for other series since): read again from zero. With ``most``, more
        new series than that are left unread and False returned (the index is then behind)."""
        if self.disabled:
            return True
        if self.last_id:
            top, same = execute(
                "SELECT max(id), EXISTS(SELECT 1 FROM series WHERE id = ? AND tenant = ? AND metric = ?"
                " AND labels_json = ?) FROM series",
                (self.last_id, *self._last_row),
            ).fetchone()
            if not same:
                self.reset()
        else:
            top = execute("SELECT max(id) FROM series").fetchone()[0]
        top = top or 0
        if most is not None and top - self.last_id > most:  # ids are dense: about that many new
            return False
        if top > self.last_id:
            if self.count + top - self.last_id > INDEX_MAX_SERIES:  # ids are dense: at most that many
                n = self.count + int(
                    execute("SELECT count(*) FROM series WHERE id > ?", (self.last_id,)).fetchone()[0]
                )
                if n > INDEX_MAX_SERIES:
                    self._disable(n)
                    return True
            cur = execute(
                "SELECT id, tenant, metric, labels_json FROM series WHERE id > ? ORDER BY id", (self.last_id,)
            )
            try:  # a slice at a time: never more than the limit held, rows or series
                while not self.disabled and (rows := cur.fetchmany(10_000)):
                    self.last_id = max(self.last_id, self._add(rows))
                    self._last_row = tuple(rows[-1][1:])  # rows in id order: the one at last_id
            finally:
                cur.close()
        return True

    def sync_pg(self, execute: Callable[..., Any]) -> None:
        """Catch up with a PostgreSQL series table (``execute``: a connection's). Concurrent writers
        take ids from one sequence and commit in any order, so a row can appear below an id already
        seen: the ids above :attr:`last_id` are re-read each time (the rows of new ones only), and
        :attr:`last_id` moves up to the highest id of an earlier refresh only once every transaction
        that was running then has ended (its snapshot's xmax is below the current xmin) and
        ``PG_SAFE_LAG_SECONDS`` have passed (a writer between taking an id and getting its
        transaction id: lossproof's own writer takes its transaction id first, see pg/write.py).
        Every ``PG_RECOUNT_SECONDS`` the rows up to that bound are counted; a count that differs
        from the index's makes it read everything again."""
        if self.disabled:
            return
        now = time.monotonic()
        if now - self._counted_at >= PG_RECOUNT_SECONDS:
            # only below the safe bound: above it, rows may come and go (commits in flight)
            self._counted_at = now
            below = int(execute("SELECT count(*) FROM series WHERE id <= %s", (self.last_id,)).fetchone()[0])
            if below != self.count - len(self._recent):
                log.info("store.series_index_reload", indexed=self.count - len(self._recent), stored=below)
                self.reset()
        # the ids above the bound (an index-only range), then the rows of those not known yet. The
        # xmin that lets the bound move is the one of the snapshot the ids are read in: one taken
        # later can be past a writer whose row (below an id seen earlier) that read did not show.
        xmin_read, got_ids = execute(
            "SELECT txid_snapshot_xmin(txid_current_snapshot())::text,"
            " ARRAY(SELECT id FROM series WHERE id > %s)",
            (self.last_id,),
        ).fetchone()
        ids = [int(i) for i in got_ids]
        new = sorted(i for i in ids if i not in self._recent)
        if self.count + len(new) > INDEX_MAX_SERIES:  # given up before their rows are read
            self._disable(self.count + len(new))
            return
        rows = []
        if new:
            rows = execute(
                "SELECT id, tenant, metric, labels_json FROM series WHERE id = ANY(%s::bigint[]) ORDER BY id",
                (new,),
            ).fetchall()
        # after the rows: a writer still running when they were read is below this snapshot's xmax
        oid, xmax = execute(
            "SELECT pg_relation_filenode('series')::bigint, txid_snapshot_xmax(txid_current_snapshot())::text"
        ).fetchone()
        if oid != self._oid:
            if self._oid is not None:  # the table was made again or emptied: read it again
                self.reset()
                self._oid = oid
                self.sync_pg(execute)
                return
            self._oid = oid
        if rows:
            self._add(rows, self._recent)
        if self.disabled:
            return
        top = max(ids, default=0)
        if top > max(self.last_id, self._pending[-1][2] if self._pending else 0):
            # the first snapshot that shows ``top``: every id below it was taken before it
            self._pending.append((now, int(xmax), top))
        safe = self.last_id
        keep = []
        for at, pxmax, ptop in self._pending:
            if pxmax <= int(xmin_read) and now - at >= PG_SAFE_LAG_SECONDS:
                safe = max(safe, ptop)
            else:
                keep.append((at, pxmax, ptop))
        self._pending = keep
        if safe > self.last_id:
            self.last_id = safe
            self._recent = {s for s in self._recent if s > safe}


# Weak: an index lives as long as a handle of its store does (a test run opens thousands of stores).
_REGISTRY: weakref.WeakValueDictionary[tuple[Any, ...], SeriesIndex] = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.Lock()


def shared(key: tuple[Any, ...]) -> SeriesIndex:
    """The process's index of the store ``key`` names (SQLite: the file's path and inode;
    PostgreSQL: DSN and schema), shared by every handle of it that is open."""
    with _REGISTRY_LOCK:
        got = _REGISTRY.get(key)
        if got is None:
            got = _REGISTRY[key] = SeriesIndex()
        return got
