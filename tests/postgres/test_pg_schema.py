"""Schema migrations of the PostgreSQL store: versioned, idempotent, race-free; a newer schema is
refused with one line; an older one is refused until ``lossproof store migrate`` ran."""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from lossproof import config as config_mod
from lossproof.store import pg_migrations as mig
from lossproof.store import postgres as pg
from lossproof.store.base import Point, StoreSchemaError, WriteBatch
from lossproof.store.pg import migrate as pg_migrate

T0 = 1_700_000_000_000

# `lossproof store ...` (the group is registered in lossproof.cli; called directly here so these
# tests do not depend on that registration)
STORE_CLI = [
    sys.executable,
    "-c",
    "from lossproof.store.cli import store_group; store_group(prog_name='store')",
]


def _data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    config_mod.init_data_dir(d, "lp_test_key")
    return d


def _store_cli(data_dir: Path, dsn: str, schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "LOSSPROOF_STORE_BACKEND": "postgres",
        "LOSSPROOF_STORE_DSN": dsn,
        "LOSSPROOF_STORE_PG_SCHEMA": schema,
    }
    if "PYTHONPATH" in os.environ:  # a worktree's sources, not the installed package's
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(
        [*STORE_CLI, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, env=env, timeout=60
    )


def _version_rows(dsn: str, schema: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        q = sql.SQL("SELECT version FROM {}.schema_migrations ORDER BY version")
        q = q.format(sql.Identifier(schema))
        return [r[0] for r in conn.execute(q)]


def test_migrate_cli_is_idempotent(tmp_path: Path, pg_dsn: str, pg_schema: str) -> None:
    d = _data_dir(tmp_path)
    first = _store_cli(d, pg_dsn, pg_schema, "migrate")
    assert first.returncode == 0, first.stderr
    assert f"migrated from version 0 to {mig.LATEST}" in first.stdout
    again = _store_cli(d, pg_dsn, pg_schema, "migrate")
    assert again.returncode == 0, again.stderr
    assert f"already at version {mig.LATEST}" in again.stdout
    assert _version_rows(pg_dsn, pg_schema) == [m.version for m in mig.MIGRATIONS]
    # the layout of version 4: chunks, no per-point table
    with psycopg.connect(pg_dsn) as conn:
        assert not mig.points_pending(conn, pg_schema)
        q = sql.SQL("SELECT count(*) FROM {}.chunks").format(sql.Identifier(pg_schema))
        assert conn.execute(q).fetchone() == (0,)


def test_newer_schema_is_refused_in_one_line(tmp_path: Path, pg_dsn: str, pg_schema: str) -> None:
    pg.migrate(pg_dsn, pg_schema)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            sql.SQL("INSERT INTO {}.schema_migrations (version, description) VALUES (99, 'future')").format(
                sql.Identifier(pg_schema)
            )
        )
    r = _store_cli(_data_dir(tmp_path), pg_dsn, pg_schema, "migrate")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "version 99, newer than this lossproof knows" in lines[0]
    for readonly in (False, True):
        with pytest.raises(StoreSchemaError, match="newer than this lossproof knows"):
            pg.PostgresStore(pg_dsn, schema=pg_schema, readonly=readonly)


def test_empty_database_reader_refused_writer_installs(pg_dsn: str, pg_schema: str) -> None:
    with pytest.raises(StoreSchemaError, match="run `lossproof store migrate`"):
        pg.PostgresStore(pg_dsn, schema=pg_schema, readonly=True)
    pg.PostgresStore(pg_dsn, schema=pg_schema).close()  # a writer installs an empty database
    pg.PostgresStore(pg_dsn, schema=pg_schema, readonly=True).close()
    assert _version_rows(pg_dsn, pg_schema) == [m.version for m in mig.MIGRATIONS]


def test_schema_with_foreign_tables_is_refused(pg_dsn: str, pg_schema: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(pg_schema)))
        conn.execute(sql.SQL("CREATE TABLE {}.users (id int)").format(sql.Identifier(pg_schema)))
    with pytest.raises(StoreSchemaError, match="not a lossproof store"):
        pg.PostgresStore(pg_dsn, schema=pg_schema)


def test_older_schema_needs_migrate(monkeypatch: pytest.MonkeyPatch, pg_dsn: str, pg_schema: str) -> None:
    pg.migrate(pg_dsn, pg_schema)
    v2 = mig.Migration(mig.LATEST + 1, "test: an extra column", "ALTER TABLE agents ADD COLUMN note text")
    monkeypatch.setattr(mig, "MIGRATIONS", (*mig.MIGRATIONS, v2))
    monkeypatch.setattr(mig, "LATEST", v2.version)
    with pytest.raises(StoreSchemaError, match="run `lossproof store migrate`"):
        pg.PostgresStore(pg_dsn, schema=pg_schema)
    assert pg.migrate(pg_dsn, pg_schema) == (v2.version - 1, v2.version)
    assert pg.migrate(pg_dsn, pg_schema) == (v2.version, v2.version)
    pg.PostgresStore(pg_dsn, schema=pg_schema).close()


def test_concurrent_migrations_do_the_work_once(pg_dsn: str, pg_schema: str) -> None:
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(pg.migrate(pg_dsn, pg_schema))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == [(0, mig.LATEST)] + [(mig.LATEST, mig.LATEST)] * 3
    assert _version_rows(pg_dsn, pg_schema) == [m.version for m in mig.MIGRATIONS]


def test_migration_3_keeps_agents_as_incarnation_empty(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str, pg_schema: str
) -> None:
    """#14: the per-agent tables gain the incarnation in their key; a version 2 database keeps its
    ledgers (incarnation '') and a reused seq then becomes a kept conflict, not a silent duplicate."""
    from lossproof.store.base import Point, ReportWrite, WriteBatch

    with monkeypatch.context() as m:
        m.setattr(mig, "MIGRATIONS", mig.MIGRATIONS[:2])
        m.setattr(mig, "LATEST", 2)
        assert pg.migrate(pg_dsn, pg_schema) == (0, 2)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg_schema)))
        conn.execute("INSERT INTO agents VALUES ('t1', 'a1', 3, 3, 0, 0, 500, 0, 0, 0, 0, 0, 0, 0)")
        conn.execute("INSERT INTO ledger VALUES ('t1', 'a1', 'stored', 1, 3, NULL, NULL)")
    assert pg.migrate(pg_dsn, pg_schema) == (2, mig.LATEST)
    store = pg.PostgresStore(pg_dsn, schema=pg_schema)
    try:
        ledger = store.ledger("t1", "a1")
        assert ledger is not None and ledger.incarnation == "" and ledger.stored == [(1, 3)]
        [summary] = store.agents("t1")
        assert (summary.incarnation, summary.stored_reports, summary.first_seq) == ("", 3, 1)
        # stored before digests were kept: a resend of seq 3 cannot be compared, a duplicate as before
        point = Point("cpu", {}, 1_700_000_000_000, 1.0)
        old = store.write_batch(WriteBatch(reports=[ReportWrite("t1", "a1", 3, [point])], now_ms=1000))
        assert (old.reports_duplicate, old.reports_conflict) == (1, 0)
        store.write_batch(WriteBatch(reports=[ReportWrite("t1", "a1", 4, [point])], now_ms=1000))
        other = Point("cpu", {}, 1_700_000_000_001, 2.0)
        new = store.write_batch(WriteBatch(reports=[ReportWrite("t1", "a1", 4, [other])], now_ms=1000))
        assert new.reports_conflict == 1 and [c.seq for c in store.conflicts("t1")] == [4]
    finally:
        store.close()


# The day partitions of version 3's ``points``, as lossproof wrote them.
def _v3_points(
    dsn: str, schema: str, series: int, days: int, per_day: int
) -> dict[str, list[tuple[int, float]]]:
    """A version 3 schema whose ``points`` holds ``series`` series with ``per_day`` points on each of
    ``days`` days (NaN, infinities and -0.0 among the values); returns each series' points by its
    label ``s``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        mig_v3 = mig.MIGRATIONS[:3]
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in mig_v3:
            conn.execute(m.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                (m.version, m.description),
            )
        want: dict[str, list[tuple[int, float]]] = {}
        day0 = T0 // mig.DAY_MS
        for d in range(day0, day0 + days):
            name = f"points_p{d}"
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF points FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(name), sql.Literal(d * mig.DAY_MS), sql.Literal((d + 1) * mig.DAY_MS)
                )
            )
        specials = [math.nan, math.inf, -math.inf, -0.0]
        with conn.transaction():
            for k in range(series):
                labels = json.dumps({"s": str(k)}, separators=(",", ":"))
                sid = conn.execute(
                    "INSERT INTO series (tenant, metric, labels_json, labels_hash) VALUES"
                    " ('t1', 'cpu', %s, %s) RETURNING id",
                    (labels, hashlib.sha256(labels.encode()).digest()),
                ).fetchone()[0]
                pts = [
                    (d * mig.DAY_MS + 1000 * i + k, specials[i % 4] if i % 5 == 0 else float(i * k))
                    for d in range(day0, day0 + days)
                    for i in range(per_day)
                ]
                with conn.cursor().copy("COPY points (series_id, t, v) FROM STDIN") as cp:
                    for t, v in pts:
                        cp.write_row((sid, t, v))
                want[str(k)] = pts
    return want


def _same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    return [t for t, _ in got] == [t for t, _ in want] and all(
        struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
        for (_, a), (_, b) in zip(got, want, strict=True)
    )


def _counts(dsn: str, schema: str) -> tuple[int, int]:
    """(points left in version 3's table, points in chunks)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        left = conn.execute("SELECT count(*) FROM points").fetchone()
        moved = conn.execute("SELECT coalesce(sum(n), 0) FROM chunks").fetchone()
    return int(left[0]) if left else 0, int(moved[0]) if moved else 0


def test_version_3_points_move_into_chunks(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str, pg_schema: str
) -> None:
    """#15: ``store migrate`` moves version 3's points into chunks, a bounded transaction at a time,
    each moving points and deleting them together: a failure midway leaves every point in exactly
    one of the two tables, the schema refused until ``store migrate`` ran again, which goes on."""
    want = _v3_points(pg_dsn, pg_schema, series=6, days=3, per_day=500)
    total = 6 * 3 * 500
    with pytest.raises(StoreSchemaError, match="run `lossproof store migrate`"):
        pg.PostgresStore(pg_dsn, schema=pg_schema)
    monkeypatch.setattr(pg_migrate, "MOVE_POINTS", 1000)
    real = pg_migrate.copy_chunks
    calls = 0

    def failing(cur: psycopg.Cursor[Any], *cols: Any) -> None:
        nonlocal calls
        calls += 1
        real(cur, *cols)
        if calls == 4:
            raise RuntimeError("injected: killed in the fourth transaction")

    monkeypatch.setattr(pg_migrate, "copy_chunks", failing)
    with pytest.raises(RuntimeError, match="injected"):
        pg.migrate(pg_dsn, pg_schema)
    assert _counts(pg_dsn, pg_schema) == (total - 3000, 3000)  # three transactions committed
    for readonly in (False, True):
        with pytest.raises(
            StoreSchemaError, match="not yet moved into chunks; run `lossproof store migrate`"
        ):
            pg.PostgresStore(pg_dsn, schema=pg_schema, readonly=readonly)
    monkeypatch.setattr(pg_migrate, "copy_chunks", real)
    assert pg.migrate(pg_dsn, pg_schema) == (mig.LATEST, mig.LATEST)
    store = pg.PostgresStore(pg_dsn, schema=pg_schema)
    try:
        got = {s.labels["s"]: s.points for s in store.query("t1", "cpu", 0, 2**62, {})}
        assert got.keys() == want.keys()
        assert all(_same(got[k], want[k]) for k in want)
        # and written to as usual: a point already stored is not stored again, a new one is
        old = Point("cpu", {"s": "1"}, want["1"][7][0], 9.0)
        new = Point("cpu", {"s": "1"}, want["1"][-1][0] + 1, 9.0)
        assert store.write_batch(WriteBatch(samples=[("t1", old), ("t1", new)])).points_written == 1
        # and packed by compaction (one chunk per series and window), the same points after
        while store.compact(now_ms=T0 + 10 * mig.DAY_MS).more:
            pass
        got = {s.labels["s"]: s.points for s in store.query("t1", "cpu", 0, 2**62, {})}
        assert all(_same(got[k][:-1] if k == "1" else got[k], want[k]) for k in want)
    finally:
        store.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        q = (
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname LIKE 'points%%'"
        )
        row = conn.execute(q, (pg_schema,)).fetchone()
        assert row is not None and row[0] == 0


def test_migration_5_gives_reports_their_time(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str, pg_schema: str
) -> None:
    """#18: reports stored at version 4 keep time 0 (unknown); new ones keep theirs."""
    from lossproof.store.base import Point, ReportWrite, WriteBatch

    with monkeypatch.context() as m:
        m.setattr(mig, "MIGRATIONS", mig.MIGRATIONS[:4])
        m.setattr(mig, "LATEST", 4)
        assert pg.migrate(pg_dsn, pg_schema) == (0, 4)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg_schema)))
        conn.execute("INSERT INTO reports VALUES ('t1', 'a1', '', 1, '\\x00')")
    assert pg.migrate(pg_dsn, pg_schema) == (4, mig.LATEST)
    store = pg.PostgresStore(pg_dsn, schema=pg_schema)
    try:
        point = Point("cpu", {}, 1_700_000_000_000, 1.0)
        later = ReportWrite("t1", "a1", 3, [point], time_ms=1_700_000_000_500)
        store.write_batch(WriteBatch(reports=[later], now_ms=1000))
        assert store.report_times_around("t1", "a1", "", [(2, 2)]) == [(0, 1_700_000_000_500)]
    finally:
        store.close()


def test_a_version_5_writer_cannot_commit_points_after_migration_6(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str, pg_schema: str
) -> None:
    """A worker of version 5 checks the schema when it starts; migrated under it to version 6, it
    would go on writing chunks while new writers write parts, each blind to the other's points: a
    point stored twice, and (a chunk ranks before every part) the second write winning on reads.
    Migration 6 renames the table every version 5 batch with points writes into (its compact_log
    row), so such a batch fails and is not acknowledged (the error is transient: it is retried,
    never dead-lettered), until that worker is upgraded."""
    import numpy as np

    from lossproof.store.pg.binary import copy_chunks

    with monkeypatch.context() as m:
        m.setattr(mig, "MIGRATIONS", mig.MIGRATIONS[:5])
        m.setattr(mig, "LATEST", 5)
        assert pg.migrate(pg_dsn, pg_schema) == (0, 5)

    def v5_batch(conn: psycopg.Connection[Any]) -> None:
        """What a version 5 writer does with a batch's new points (store/pg/write.py of then)."""
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg_schema)))
        conn.execute(
            "INSERT INTO series (tenant, metric, labels_json, labels_hash) VALUES ('t1', 'm', '{}',"
            " sha256('{}'::bytea)) ON CONFLICT DO NOTHING"
        )
        row = conn.execute("SELECT id FROM series").fetchone()
        assert row is not None
        sid = int(row[0])
        seq = "pg_get_serial_sequence('chunks', 'id')"
        first = conn.execute(f"SELECT nextval({seq})").fetchone()
        assert first is not None
        copy_chunks(conn.cursor(), np.array([sid]), np.array([1_700_000_000_000]), np.array([1.0]))
        conn.execute(f"INSERT INTO compact_log VALUES (%s, currval({seq}), %s)", (int(first[0]), 0))

    with psycopg.connect(pg_dsn) as conn:
        v5_batch(conn)  # at version 5, it commits
    assert pg.migrate(pg_dsn, pg_schema) == (5, mig.LATEST)
    with psycopg.connect(pg_dsn) as conn, pytest.raises(psycopg.errors.UndefinedTable):
        v5_batch(conn)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg_schema)))
        row = conn.execute("SELECT count(*) FROM chunks").fetchone()
        assert row is not None and row[0] == 1  # the first batch's chunk alone
    # and what version 5 wrote is read and compacted by this one
    store = pg.PostgresStore(pg_dsn, schema=pg_schema)
    try:
        assert [s.points for s in store.query("t1", "m", 0, 2**62, {})] == [[(1_700_000_000_000, 1.0)]]
        while store.compact(now_ms=1_800_000_000_000).more:
            pass
        assert [s.points for s in store.query("t1", "m", 0, 2**62, {})] == [[(1_700_000_000_000, 1.0)]]
        wrote = store.write_batch(WriteBatch(samples=[("t1", Point("m", {}, 1_700_000_000_000, 2.0))]))
        assert wrote.points_written == 0
    finally:
        store.close()


def test_migration_7_adds_the_quarantine_table(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str, pg_schema: str
) -> None:
    """A version 6 store (before damaged rows were set aside) needs `store migrate`, which adds
    ``damaged_chunks`` and leaves what is stored as it was."""
    with monkeypatch.context() as m:
        m.setattr(mig, "MIGRATIONS", mig.MIGRATIONS[:6])
        m.setattr(mig, "LATEST", 6)
        assert pg.migrate(pg_dsn, pg_schema) == (0, 6)
        store = pg.PostgresStore(pg_dsn, schema=pg_schema)
        store.write_batch(WriteBatch(samples=[("t1", Point("cpu", {}, T0, 1.0))], now_ms=T0))
        store.close()
    with pytest.raises(StoreSchemaError, match="run `lossproof store migrate`"):
        pg.PostgresStore(pg_dsn, schema=pg_schema)
    assert pg.migrate(pg_dsn, pg_schema) == (6, mig.LATEST)  # (7, and 8: the seals)
    store = pg.PostgresStore(pg_dsn, schema=pg_schema)
    try:
        assert [s.points for s in store.query("t1", "cpu", 0, 2 * T0, {})] == [[(T0, 1.0)]]
    finally:
        store.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg_schema)))
        assert conn.execute("SELECT count(*) FROM damaged_chunks").fetchone() == (0,)
