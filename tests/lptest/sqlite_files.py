"""Looks into an embedded store's file from outside the store (a connection of its own)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lossproof.store import chunks


def unpacked_points(path: Path) -> int:
    """The points in chunks packing has still to merge: RAW and PENDING ones."""
    con = sqlite3.connect(path)
    try:
        kinds = [bytes((k | sealed,)) for k in (chunks.RAW, chunks.PENDING) for sealed in (0, chunks.SEALED)]
        sql = "SELECT coalesce(sum(n), 0) FROM chunks WHERE substr(data, 1, 1) IN (?, ?, ?, ?)"
        return int(con.execute(sql, kinds).fetchone()[0])
    finally:
        con.close()
