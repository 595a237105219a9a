"""Damaged rows set aside: what both stores do with a chunk or a part that does not decode as its row
says (docs/store.md, "A damaged chunk").

A worker's store that meets one while writing or packing moves it, byte for byte with its key
columns and the reason, into the ``damaged_chunks`` table, deletes it where it was, in the same
transaction, and goes on as if the row were not there: one damaged row no longer stops the batches
that must read it (retried for ever) nor the packing of every series queued with it. Readers
(queries, read-only handles) move nothing: they fail on it, as before, until a worker sets it aside.

Finding the damaged row is the slow path: a read decodes all its chunks at once and its error does
not say which one was wrong, so each row is then decoded alone (:func:`damaged_chunks`).

``lossproof store check`` walks every row with the same checks (:func:`check_chunk_rows`,
:func:`damaged_parts`), for the damaged rows no write or compaction reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from lossproof.obs.logging import get
from lossproof.store import chunks

log = get("lossproof.store.quarantine")

TABLE = "damaged_chunks"
# The columns of the table, in both stores (the schema: embedded/common.py, pg_migrations.py V7).
# source: the table the row was in ('chunks' or 'parts'); source_id: its id there; series_id: a
# chunk's series (NULL for a part, which holds many); at_ms: a part's batch time (NULL for a chunk).
COLUMNS = "source, source_id, series_id, t_min, t_max, n, at_ms, data, reason, quarantined_ms"
# Times a write or a pack step looks again after setting rows aside (each look sets aside at least
# one row, or fails): more damaged rows than that in one read is not a bad sector, it is a bad disk.
ATTEMPTS = 16


class Damaged(NamedTuple):
    """A row found damaged: its table (``chunks`` or ``parts``), its id there, why, and a chunk's
    series where the finder read it (``store check`` does; None for a part, which holds many)."""

    table: str
    id: int
    reason: str
    series_id: int | None = None


class SetAside(Exception):
    """Damaged rows were moved to the quarantine table in this transaction: what was read of what
    is stored must be read again (a write's caches of it forgotten). Never leaves a store."""


def damaged_chunks(rows: Sequence[tuple[int, int, int, bytes]]) -> list[Damaged]:
    """Of the chunk rows ``(id, t_min, t_max, data)``, those whose data is not a chunk of that
    time range (:func:`chunks.decode_stored`), each decoded alone."""
    out = []
    for cid, t_min, t_max, data in rows:
        try:
            chunks.decode_stored([(t_min, t_max, data)])
        except chunks.ChunkError as e:
            out.append(Damaged("chunks", cid, str(e)))
        except ValueError as e:  # numpy on a chunk cut short: damage all the same (as part_damage)
            out.append(Damaged("chunks", cid, f"damaged chunk: {e}"))
    return out


def check_chunk_rows(rows: Sequence[tuple[int, int, int, int, bytes]]) -> list[Damaged]:
    """Of the chunk rows ``(id, series_id, t_min, t_max, data)``, those that are damaged, with their
    series: decoded and checked together as a read does (:func:`chunks.decode_stored`), and only
    when that fails each alone (:func:`damaged_chunks`), so a healthy batch costs one decode."""
    try:
        chunks.decode_stored([(a, b, data) for _, _, a, b, data in rows])
        return []
    except ValueError:  # ChunkError, or numpy's on a chunk cut short
        pass
    series = {cid: sid for cid, sid, _, _, _ in rows}
    bad = damaged_chunks([(cid, a, b, data) for cid, _, a, b, data in rows])
    return [d._replace(series_id=series[d.id]) for d in bad]


def part_damage(data: bytes, t_min: int, t_max: int, n: int) -> str | None:
    """Why the part row ``(t_min, t_max, n, data)`` is damaged, or None: its layout, its directory
    (:func:`chunks.part_directory`), each series' times strictly increasing and ending at the
    directory's newest t, the row's range and count those of its points, and a sealed part's
    checksum (chunks.py, "Sealed"), which finds a damaged value too."""
    try:
        sids, ts, _ = chunks.decode_part(data)
        layout = chunks.part_layout(data[:16])
        _, tmax, starts = chunks.part_directory(data, layout)
        lens = np.diff(starts)
        chunks.check_increasing(ts, starts[:-1], lens)
        if layout.points != n or len(ts) != n:
            raise chunks.ChunkError(f"part of {len(ts)} points, its row says {n}")
        if n and (int(ts.min()) != t_min or int(ts.max()) != t_max):
            raise chunks.ChunkError("a part's points are not its stored time range")
        has = lens > 0
        if len(sids) and not np.array_equal(ts[starts[1:][has] - 1], tmax[has]):
            raise chunks.ChunkError("a part's directory does not give its series' newest times")
    except chunks.ChunkError as e:
        return str(e)
    except ValueError as e:  # numpy on a part cut short: damage all the same
        return f"damaged part: {e}"
    return None


def damaged_parts(rows: Sequence[tuple[int, int, int, int, bytes]]) -> list[Damaged]:
    """Of the part rows ``(id, t_min, t_max, n, data)``, those :func:`part_damage` finds damaged."""
    return [
        Damaged("parts", pid, why)
        for pid, t_min, t_max, n, data in rows
        if (why := part_damage(data, t_min, t_max, n)) is not None
    ]


# The columns a row is checked from, by table: what check_rows / damaged_rows take (both stores).
ROW_COLUMNS = {"chunks": "id, series_id, t_min, t_max, data", "parts": "id, t_min, t_max, n, data"}


def damaged_rows(table: str, rows: Sequence[tuple[Any, ...]]) -> list[Damaged]:
    """Of the rows of ``table`` read as :data:`ROW_COLUMNS` says, those that are damaged."""
    if table == "chunks":
        return check_chunk_rows(rows)
    if table == "parts":
        return damaged_parts(rows)
    raise ValueError(f"no such table to check: {table!r}")


def pack_checked(
    found: Sequence[tuple[int, int, int, int, bytes]], windows: chunks.Windows, cap: int = 0
) -> tuple[list[chunks.PackRow], int, list[Damaged]]:
    """:func:`chunks.pack` of the chunk rows ``(id, series, t_min, t_max, data)``, less the damaged
    ones, which it names: packing checks what it decodes, so that damage is set aside, not
    re-encoded into a chunk that looks valid. The usual case costs one check of the decoded times."""
    try:
        rows, points = chunks.pack(found, windows, cap)
        return rows, points, []
    except chunks.ChunkError:
        bad = damaged_chunks([(cid, a, b, data) for cid, _, a, b, data in found])
        if not bad:
            raise
    gone = {d.id for d in bad}
    rows, points = chunks.pack([r for r in found if r[0] not in gone], windows, cap)
    return rows, points, bad


def logged(damaged: Sequence[Damaged], store: str, by: str) -> None:
    """One event a row set aside (after its transaction committed)."""
    for d in damaged:
        log.error(
            "store.chunk_quarantined",
            store=store,
            by=by,
            table=d.table,
            id=d.id,
            **({} if d.series_id is None else {"series_id": d.series_id}),
            reason=d.reason,
            moved_to=TABLE,
            hint="its points are no longer stored: a replay of them from the log (or the agent) stores"
            " them again; the row's bytes are kept in the quarantine table",
        )
