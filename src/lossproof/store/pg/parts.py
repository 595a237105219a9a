"""Parts in the PostgreSQL store: a batch's points as one row of ``parts`` (the layout of
:func:`lossproof.store.chunks.encode_part`, as in the embedded store) until compaction turns it into
chunks. A reader finds a series' slices through the part's directory, fetched alone (the value is
stored EXTERNAL, so PostgreSQL reads only the slice asked for), and fetches only those slices.

Of two points with one (series, t) the chunk with the lowest id wins, then the part with the lowest
id: a part's points come after every chunk's (:data:`PART_ORDER`)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from lossproof.store import chunks
from lossproof.store.pg.binary import Int8Array
from lossproof.store.pg.common import _Conn

PART_ORDER = 1 << 62  # a part's rank among a series' chunks: after all of them, in part id order
_NONE = np.iinfo(np.int64).min  # nothing stored

INSERT_PART = (
    "INSERT INTO parts (t_min, t_max, n, series, at_ms, data) VALUES (%s, %s, %s, %s, %s, %b) RETURNING id"
)
# the directory of a part: its head and (sids, tmax, starts), see chunks.PartLayout.dir_bytes
_DIRS = "SELECT id, substring(data from 1 for 24 + 24 * series) FROM parts WHERE id = ANY(%b)"
# slices of parts: q.o is 1-based
_SLICES = (
    "SELECT q.i, substring(p.data from q.o::integer for q.l::integer)"
    " FROM unnest(%b, %b, %b) WITH ORDINALITY AS q(p, o, l, i) JOIN parts p ON p.id = q.p"
)
# What a writer looks at in each batch, in one snapshot: the removals counter, the live parts, and
# the directories of those not in %b (those it has seen).
_LOOK = (
    "SELECT NULL::bigint, value, NULL::bytea FROM meta WHERE key = 'parts_removed'"
    " UNION ALL SELECT p.id, NULL, CASE WHEN p.id = ANY(%b) THEN NULL"
    " ELSE substring(p.data from 1 for 24 + 24 * p.series) END FROM parts p"
)
REMOVED = "SELECT value FROM meta WHERE key = 'parts_removed'"
PARTS_REMOVED = "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'parts_removed'"
# a fetch of a part's slices for this many of its series or more fetches the whole part instead
_WHOLE_FRACTION = 4

Directory = tuple[chunks.I64, chunks.I64, chunks.I64]  # (sids, tmax, starts)


def fetch_directories(conn: _Conn, ids: list[int]) -> dict[int, Directory]:
    """The directories of the parts ``ids`` that still exist."""
    out: dict[int, Directory] = {}
    if not ids:
        return out
    cur = conn.cursor(binary=True)
    cur.execute(_DIRS, (Int8Array(ids),))
    for pid, head in cur:
        data = bytes(head)
        out[int(pid)] = chunks.part_directory(data, chunks.part_layout(data[:16]))
    return out


def look(conn: _Conn, seen: set[int]) -> tuple[str, list[int], dict[int, Directory]]:
    """(parts_removed, the live parts, the directories of those not in ``seen``), in one snapshot."""
    cur = conn.cursor(binary=True)
    cur.execute(_LOOK, (Int8Array(sorted(seen)),))
    removed = ""
    live: list[int] = []
    dirs: dict[int, Directory] = {}
    for pid, value, head in cur:
        if pid is None:
            removed = str(value)
            continue
        live.append(int(pid))
        if head is not None:
            data = bytes(head)
            dirs[int(pid)] = chunks.part_directory(data, chunks.part_layout(data[:16]))
    return removed, live, dirs


class PartDirectories:
    """The directories of live parts this process has read (parts never change: cached by id)."""

    def __init__(self) -> None:
        self._dirs: dict[int, Directory] = {}
        self._lock = threading.Lock()

    def get(self, conn: _Conn, live: list[int]) -> dict[int, Directory]:
        """The directories of the parts ``live`` (those that still exist in ``conn``'s snapshot).
        The answer is what was cached when asked plus what was fetched: another thread may drop
        entries meanwhile (its ``live``, a time range's parts, is not this one's)."""
        with self._lock:
            have = {pid: d for pid in live if (d := self._dirs.get(pid)) is not None}
        got = fetch_directories(conn, [pid for pid in live if pid not in have])
        with self._lock:
            self._dirs.update(got)
            keep = set(live)
            for pid in [p for p in self._dirs if p not in keep]:  # removed by compaction or retention
                del self._dirs[pid]
        have.update(got)
        return {pid: have[pid] for pid in live if pid in have}


def part_points(
    conn: _Conn, dirs: PartDirectories, wanted: chunks.I64, from_ms: int, to_ms: int
) -> dict[int, list[tuple[int, chunks.I64, chunks.F64]]]:
    """Per series of ``wanted`` (sorted, unique), its slices ``(PART_ORDER + part id, ts, vs)`` of
    the parts overlapping [from_ms, to_ms] (whole slices: the caller cuts them). In the caller's
    snapshot: the live parts, the directories not cached yet, then the slices (or the whole part
    when many of its series are wanted)."""
    out: dict[int, list[tuple[int, chunks.I64, chunks.F64]]] = {}
    if not len(wanted):
        return out
    live = [
        int(r[0])
        for r in conn.execute(
            "SELECT id FROM parts WHERE t_max >= %s AND t_min <= %s ORDER BY id", (from_ms, to_ms)
        ).fetchall()
    ]
    if not live:
        return out
    found = dirs.get(conn, live)
    # (part, its layout, series, first point, points) of the slices wanted
    picks: list[tuple[int, chunks.PartLayout, chunks.I64, chunks.I64, chunks.I64]] = []
    for pid, (psids, ptmax, pstarts) in found.items():
        if not len(psids):
            continue
        idx = np.minimum(np.searchsorted(psids, wanted), len(psids) - 1)
        hit = (psids[idx] == wanted) & (ptmax[idx] >= from_ms)
        if hit.any():
            at = idx[hit]
            layout = chunks.PartLayout(len(psids), int(pstarts[-1]))
            picks.append((pid, layout, wanted[hit], pstarts[at], pstarts[at + 1] - pstarts[at]))
    cur = conn.cursor(binary=True)
    whole = [p[0] for p in picks if len(p[2]) * _WHOLE_FRACTION >= p[1].series]
    datas: dict[int, bytes] = {}
    if whole:
        cur.execute("SELECT id, data FROM parts WHERE id = ANY(%b)", (Int8Array(whole),))
        datas = {int(pid): bytes(d) for pid, d in cur}
    req: list[tuple[chunks.I64, chunks.I64, chunks.I64]] = []
    for pid, layout, _, first, n in picks:
        if pid not in whole:
            for base in (layout.ts_offset, layout.vs_offset):
                req.append((np.full(len(n), pid, dtype=np.int64), base + 8 * first + 1, 8 * n))
    got: dict[int, bytes] = {}
    if req:
        cur.execute(_SLICES, tuple(Int8Array(np.concatenate([r[c] for r in req])) for c in range(3)))
        got = {int(i): bytes(d) for i, d in cur}
    k = 1  # WITH ORDINALITY counts from 1, in the order of the request
    for pid, _, sids, first, n in picks:
        order = PART_ORDER + pid
        if pid in whole:
            data = datas.get(pid)
            if data is None:
                continue  # removed meanwhile (only outside one snapshot: a writer's look)
            _, pts, pvs = chunks.decode_part(data)
            for sid, a, m in zip(sids.tolist(), first.tolist(), n.tolist(), strict=True):
                out.setdefault(sid, []).append((order, pts[a : a + m], pvs[a : a + m]))
            continue
        at_ts, at_vs = k, k + len(n)
        k += 2 * len(n)
        for j, sid in enumerate(sids.tolist()):
            tb, vb = got.get(at_ts + j), got.get(at_vs + j)
            if tb is None or vb is None:
                continue
            ts = np.frombuffer(tb, "<i8").astype(np.int64)
            out.setdefault(sid, []).append((order, ts, np.frombuffer(vb, "<f8").astype(np.float64)))
    return out


class StoredTops:
    """Per series, a time at or after the newest point stored (``_NONE``: none), for a writer to
    tell without a read that a batch's points are new (see store/pg/write.py, *Stored times*).

    ``probed`` says the series' chunks were read since the last removal of parts this writer did
    not see: a series not probed is probed before it is trusted."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.sids = np.empty(0, dtype=np.int64)  # sorted
        self.top = np.empty(0, dtype=np.int64)
        self.probed = np.empty(0, dtype=bool)
        self.seen: set[int] = set()  # parts whose directories were taken in
        self.removed: str | None = None  # parts_removed when last looked

    def __len__(self) -> int:
        return len(self.sids)

    def find(self, sids: chunks.I64) -> tuple[chunks.I64, npt.NDArray[np.bool_]]:
        """(index, found) of each of ``sids`` in the table."""
        if not len(self.sids):
            return np.zeros(len(sids), dtype=np.int64), np.zeros(len(sids), dtype=bool)
        idx = np.minimum(np.searchsorted(self.sids, sids), len(self.sids) - 1)
        return idx, self.sids[idx] == sids

    def raise_to(self, sids: chunks.I64, tops: chunks.I64, probed: bool | None) -> None:
        """Raise the tops of ``sids`` (sorted, unique) to ``tops``; mark them probed (True), or
        leave them as they are (None: new ones are not). New series are inserted in place (one
        copy of the table, not a sort of it: series come and go all the time)."""
        idx, hit = self.find(sids)
        at = idx[hit]
        self.top[at] = np.maximum(self.top[at], tops[hit])  # ``at`` is unique: no ufunc.at needed
        if probed:
            self.probed[at] = True
        new = ~hit
        if new.any():
            add = sids[new]
            at_new = np.searchsorted(self.sids, add) + np.arange(len(add))  # places in the new table
            old = np.ones(len(self.sids) + len(add), dtype=bool)
            old[at_new] = False
            self.sids = _merged(self.sids, add, at_new, old)
            self.top = _merged(self.top, tops[new], at_new, old)
            self.probed = _merged(self.probed, np.full(len(add), bool(probed)), at_new, old)


def _merged(
    a: npt.NDArray[Any], add: npt.NDArray[Any], at_new: chunks.I64, old: npt.NDArray[np.bool_]
) -> npt.NDArray[Any]:
    """``a`` with ``add`` put at ``at_new`` (its places in the result; ``old`` marks the others):
    a third of np.insert's time on a table of a million series."""
    out = np.empty(len(old), dtype=a.dtype)
    out[at_new] = add
    out[old] = a
    return out


NONE = _NONE
