"""``lossproof store check [--set-aside]``, both stores, as a real subprocess: every chunk and part
row checked as reads check them; a damaged one no write or compaction reads (a packed chunk of a
closed window, a part) is named (exit 1) and, with ``--set-aside``, moved into ``damaged_chunks`` as
the worker moves the ones it meets, after which the queries of its metric work again
(docs/store.md, "A damaged chunk"). Before, such a row failed every query of its metric until an
operator deleted it by hand: the command did not exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lossproof import config as config_mod
from lossproof.points import SeriesSamples
from lossproof.store import chunks
from lossproof.store.base import Matcher, WriteBatch
from lossproof.store.quarantine import Damaged
from lptest import subprocess_env
from lptest.damaged_store import HOUR, SERIES, T0, M, batch, compact_all, first_chunk, points, stored
from lptest.store_backends import PostgresBackend, SqliteBackend, StoreBackend

_QUARANTINED = "SELECT source, source_id, series_id FROM damaged_chunks ORDER BY source, source_id"


def data_dir_for(backend: StoreBackend) -> tuple[Path, dict[str, str]]:
    """A data dir whose config names the backend's store (through the environment overrides)."""
    data = backend.tmp_path / "data"
    config_mod.init_data_dir(data, "lp_test_key")
    env = subprocess_env()
    if isinstance(backend, PostgresBackend):
        env.update(
            LOSSPROOF_STORE_BACKEND="postgres",
            LOSSPROOF_STORE_DSN=backend.dsn,
            LOSSPROOF_STORE_PG_SCHEMA=backend.schema,
        )
    else:
        assert isinstance(backend, SqliteBackend)
        env["LOSSPROOF_STORE_PATH"] = str(backend.tmp_path / "store.db")
    return data, env


def check(data: Path, env: dict[str, str], *more: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "lossproof", "store", "check", "--data-dir", str(data), *more]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def other(metric: str) -> WriteBatch:
    runs = [("t", SeriesSamples(metric, {"j": str(j)}, [T0 + j], [float(j)])) for j in range(5)]
    return WriteBatch(series=runs, now_ms=T0)


def test_check_names_a_damaged_chunk_and_part_and_set_aside_moves_them(backend: StoreBackend) -> None:
    store = backend.open()
    for b in range(10):
        store.write_batch(batch(b))
    compact_all(store, T0 + 30 * HOUR)  # packed chunks of a closed window: no write reads them again
    store.write_batch(other("other"))  # a part (not compacted)
    store.write_batch(other("other2"))  # and a healthy one after it
    cid, hit = first_chunk(backend)
    [(sid,)] = backend.fetch(f"SELECT series_id FROM chunks WHERE id = {cid}")
    [(pid,), (healthy_pid,)] = backend.fetch("SELECT id FROM parts ORDER BY id")
    backend.damage_first("chunks")
    # the part's second series id (in a part without a checksum, as before there was one): out of order
    backend.damage_first("parts", at=16 + 8 + 7, unsealed=True)
    tables = {t: f"SELECT id, data FROM {t} ORDER BY id" for t in ("chunks", "parts")}
    tables["series"] = "SELECT id, tenant, metric FROM series ORDER BY id"
    before = {t: backend.fetch(q) for t, q in tables.items()}
    with pytest.raises(chunks.ChunkError):  # what the check is for: every query of m fails
        backend.open(readonly=True).select("t", M, 0, 1 << 62)
    data, env = data_dir_for(backend)

    # the check only reads: it names both rows (a chunk with its series), exit 1, nothing moved
    got = check(data, env)
    assert got.returncode == 1, got.stdout + got.stderr
    assert f"checked {SERIES} chunk rows and 2 part rows" in got.stdout
    assert "2 damaged:" in got.stdout
    assert f"  chunks id {cid} series {sid}: a chunk's checksum does not match its bytes" in got.stdout
    assert f"  parts id {pid}: " in got.stdout and "ids are out of order" in got.stdout
    assert f"parts id {healthy_pid}" not in got.stdout and "--set-aside" in got.stdout
    assert "Traceback" not in got.stderr
    assert backend.fetch(_QUARANTINED) == []
    assert {t: backend.fetch(q) for t, q in tables.items()} == before

    # --set-aside moves exactly those two, byte for byte, logged as the worker logs them (by check)
    got = check(data, env, "--set-aside")
    assert got.returncode == 1, got.stdout + got.stderr
    assert "set aside 2 of them into damaged_chunks" in got.stdout
    assert got.stderr.count("store.chunk_quarantined") == 2 and '"by": "check"' in got.stderr, got.stderr
    assert backend.fetch(_QUARANTINED) == [("chunks", cid, sid), ("parts", pid, None)]
    [(q_chunk,), (q_part,)] = backend.fetch("SELECT data FROM damaged_chunks ORDER BY source")
    assert bytes(q_chunk) == bytes(dict(before["chunks"])[cid])
    assert bytes(q_part) == bytes(dict(before["parts"])[pid])
    after = {t: backend.fetch(q) for t, q in tables.items()}
    assert after["chunks"] == [r for r in before["chunks"] if r[0] != cid]  # the healthy ones untouched
    assert after["parts"] == [r for r in before["parts"] if r[0] != pid]
    assert after["series"] == before["series"]

    # queries of m work again: every series but the damaged chunk's, whose points are not stored now
    reader = backend.open(readonly=True)
    got_m = stored(reader)
    assert hit not in got_m and got_m == {str(i): points(*range(10)) for i in range(SERIES) if str(i) != hit}
    assert len(reader.select("t", [Matcher("__name__", "=", "other2")], 0, 1 << 62)) == 5
    # the recovery: the worker's handle (told the rows are gone) stores a replay of them again
    assert store.write_batch(batch(0)).points_written == 10
    assert store.write_batch(other("other")).points_written == 5
    assert stored(reader)[hit] == points(0)

    # a healthy store: exit 0, nothing listed
    got = check(data, env)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "no damaged rows" in got.stdout and "damaged:" not in got.stdout
    got = check(data, env, "--set-aside")
    assert got.returncode == 0 and "set aside" not in got.stdout, got.stdout + got.stderr


def test_check_rows_walks_every_row_in_batches(backend: StoreBackend) -> None:
    store = backend.open()
    for b in range(3):
        store.write_batch(batch(b, series=4))
    compact_all(store, T0 + 30 * HOUR)
    store.write_batch(other("other"))
    backend.damage_first("chunks")
    reader = backend.open(readonly=True)
    for table in ("chunks", "parts"):
        ids, bad, after = [], [], None
        while (got := reader.check_rows(table, after, 3)).last_id is not None:
            assert 0 < got.checked <= 3
            after = got.last_id
            ids += [r for r, in backend.fetch(f"SELECT id FROM {table} WHERE id <= {after} ORDER BY id")]
            bad += got.damaged
        assert sorted(set(ids)) == [r for r, in backend.fetch(f"SELECT id FROM {table} ORDER BY id")]
        assert [d.id for d in bad] == ([first_chunk(backend)[0]] if table == "chunks" else [])
    # set_aside_rows reads each row again: a healthy row named to it is left where it is
    [(pid,)] = backend.fetch("SELECT id FROM parts")
    assert backend.open().set_aside_rows([Damaged("parts", pid, "not really")]) == []
    assert backend.fetch("SELECT count(*) FROM parts") == [(1,)]


def test_check_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    """One line and exit status 2 (1 is "damage found"), never a traceback, and nothing created."""
    env = subprocess_env()
    got = check(tmp_path / "nowhere", env)
    assert got.returncode == 2 and "lossproof.toml: not found" in got.stderr, got.stderr
    data = tmp_path / "data"
    config_mod.init_data_dir(data, "lp_test_key")
    got = check(data, env)  # a config but no store yet: not created by the check
    assert got.returncode == 2 and "no such store file" in got.stderr, got.stderr
    assert not (data / "store.db").exists()
    (data / "store.db").write_bytes(b"not a database, " * 100)
    got = check(data, env, "--set-aside")
    assert got.returncode == 2 and "cannot open the store" in got.stderr, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1 and "Traceback" not in got.stderr


def test_check_refuses_a_postgres_schema_that_is_not_a_store(tmp_path: Path) -> None:
    backend = PostgresBackend(tmp_path)  # (skips when there is no PostgreSQL)
    try:
        data, env = data_dir_for(backend)
        got = check(data, env, "--set-aside")  # (a writer would install the schema: none is opened)
        assert got.returncode == 2 and "is not a lossproof store yet" in got.stderr, got.stderr
        assert len(got.stderr.strip().splitlines()) == 1 and "Traceback" not in got.stderr
        schemas = f"SELECT count(*) FROM pg_namespace WHERE nspname = '{backend.schema}'"
        assert backend.fetch(schemas) == [(0,)]
    finally:
        backend.close_all()
