"""Setting damaged rows aside beside other connections, and a store file damaged below the rows
(found by a review, session 27): a replay after another connection set its points' part aside is
stored again (also in a store whose ``damaged_chunks`` an early build made without AUTOINCREMENT);
PostgreSQL's replay that meets a row another session moves first reads again instead of failing the
batch; ``store check`` on a file whose own B-tree pages are damaged is "cannot check" (exit 2), never
a traceback or "damage found"."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lossproof import config as config_mod
from lossproof.store import quarantine
from lossproof.store.embedded.common import QUARANTINE_TABLE
from lossproof.store.sqlite import SqliteStore
from lptest import subprocess_env
from lptest.damaged_store import HOUR, T0, batch, compact_all
from lptest.store_backends import PostgresBackend

# the table as the first build of the quarantine made it (ids reusable)
_EARLY_TABLE = QUARANTINE_TABLE.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER PRIMARY KEY")


def _damage_part(path: Path, pid: int) -> None:
    con = sqlite3.connect(path)
    (data,) = con.execute("SELECT data FROM parts WHERE id = ?", (pid,)).fetchone()
    d = bytearray(data)
    d[16 + 8 + 7] ^= 0x40  # the part's second series id: out of order
    con.execute("UPDATE parts SET data = ? WHERE id = ?", (bytes(d), pid))
    con.commit()
    con.close()


@pytest.mark.parametrize("early_table", [False, True], ids=["table", "early-table"])
def test_a_replay_after_another_connection_set_its_part_aside_is_stored(
    tmp_path: Path, early_table: bool
) -> None:
    path = tmp_path / "store.db"
    SqliteStore(path).close()
    assert QUARANTINE_TABLE != _EARLY_TABLE
    if early_table:
        con = sqlite3.connect(path)
        con.execute("DROP TABLE damaged_chunks")
        con.execute(_EARLY_TABLE)
        con.commit()
        con.close()
    worker = SqliteStore(path)
    worker.write_batch(batch(0))  # one part; the worker remembers its points as stored
    con = sqlite3.connect(path)
    [(pid,)] = con.execute("SELECT id FROM parts").fetchall()
    con.close()
    _damage_part(path, pid)
    other = SqliteStore(path)  # store check --set-aside, or the compactor
    got = other.check_rows("parts", None, 16)
    assert [d.id for d in got.damaged] == [pid]
    assert [d.id for d in other.set_aside_rows(got.damaged)] == [pid]
    other.close()
    assert worker.write_batch(batch(0)).points_written == 200  # stored nowhere since: stored again
    worker.close()


def test_store_check_of_a_file_damaged_below_the_rows_cannot_check(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config_mod.init_data_dir(data, "k")
    path = data / "store.db"
    s = SqliteStore(path)
    for b in range(40):
        s.write_batch(batch(b, series=200))
    compact_all(s, T0 + 30 * HOUR)
    s.close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ps = con.execute("PRAGMA page_size").fetchone()[0]
    pages = con.execute("SELECT pageno, pagetype FROM dbstat WHERE name = 'chunks'").fetchall()
    leaves = [p for p, t in pages if t == "leaf"]
    con.close()
    with open(path, "r+b") as f:  # a bad sector in a B-tree page: "database disk image is malformed"
        f.seek((leaves[len(leaves) // 2] - 1) * ps)
        f.write(b"\xff" * 12)
    argv = [sys.executable, "-m", "lossproof", "store", "check", "--data-dir", str(data)]
    got = subprocess.run(argv, capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert "Traceback" not in got.stderr, got.stderr[-600:]
    assert got.returncode == 2 and "malformed" in got.stderr, (got.returncode, got.stdout, got.stderr[-600:])


def test_a_pg_replay_meeting_a_row_another_session_moves_first_reads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = PostgresBackend(tmp_path)
    try:
        worker = backend.open()
        for b in range(10):
            worker.write_batch(batch(b))
        compact_all(worker, T0 + 30 * HOUR)
        backend.damage_first("chunks")
        other = backend.open()
        real = quarantine.damaged_chunks
        raced: list[int] = []
        once: list[bool] = []  # (the other session's own check comes through here too)

        def racing(rows: Any) -> list[quarantine.Damaged]:
            found = real(rows)
            if found and not once:  # the other session commits its move first
                once.append(True)
                raced.extend(d.id for d in other.set_aside_rows(found))
            return found

        monkeypatch.setattr(quarantine, "damaged_chunks", racing)
        assert worker.write_batch(batch(0)).points_written == 10
        assert raced
    finally:
        backend.close_all()
