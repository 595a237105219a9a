"""A store transaction killed -9 after everything is written and before COMMIT leaves no trace.

The writer is a real child process that dies by SIGKILL at the crash point ``store.before_commit``
(the point chaos scenario 2 aims at), on every store backend; the batch is then written again and
must be stored exactly once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lptest import subprocess_env
from lptest.store_backends import BACKENDS, StoreBackend

T0 = 1_767_225_600_000

CHILD = """
import sys
from lptest.store_backends import store_in_child
from lossproof.store.base import LostRange, Point, ReportWrite, WriteBatch

store = store_in_child(sys.argv[1:])
reports = [
    ReportWrite("t1", "a1", seq, [Point("cpu", {"host": "h1"}, T0 + seq * 1000 + j, 1.0) for j in range(5)])
    for seq in range(1, 11)
]
store.write_batch(WriteBatch(reports, lost=[LostRange("t1", "a1", 11, 12, "spool_full")], now_ms=T0))
print("committed", flush=True)
""".replace("T0", str(T0))


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    b: StoreBackend = BACKENDS[request.param](tmp_path)
    b.open().close()  # create the schema before any child writes
    yield b
    b.close_all()


def write_in_child(
    backend: StoreBackend, faults: dict[str, object] | None, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    env = subprocess_env()
    if faults is not None:
        f = tmp_path / "faults.json"
        f.write_text(json.dumps(faults))
        env["LOSSPROOF_FAULTS_FILE"] = str(f)
    argv = [sys.executable, "-c", CHILD, *backend.child_args()]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.process
def test_kill_inside_the_transaction_leaves_nothing_then_one_write_stores_once(
    backend: StoreBackend, tmp_path: Path
) -> None:
    died = write_in_child(backend, {"store.before_commit": {}}, tmp_path)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert "committed" not in died.stdout

    store = backend.open()
    assert store.query("t1", "cpu", 0, 2**62, {}) == []
    ledger = store.ledger("t1", "a1")
    assert ledger is None or (not ledger.stored and not ledger.lost)

    ok = write_in_child(backend, None, tmp_path)
    assert ok.returncode == 0 and "committed" in ok.stdout, ok.stderr
    again = write_in_child(backend, None, tmp_path)  # the worker's retry after a crash: a duplicate
    assert again.returncode == 0, again.stderr
    [series] = store.query("t1", "cpu", 0, 2**62, {})
    assert len(series.points) == 50
    ledger = store.ledger("t1", "a1")
    assert ledger is not None
    assert [tuple(r) for r in ledger.stored] == [(1, 10)]
    assert [(a, b) for a, b, _ in ledger.lost] == [(11, 12)]


COMPACT_CHILD = """
import sys
from lptest.store_backends import store_in_child

store = store_in_child(sys.argv[1:])
while store.compact(now_ms=T0 + 10**9).series:
    pass
print("compacted", flush=True)
""".replace("T0", str(T0))


@pytest.mark.process
def test_compaction_killed_before_commit_leaves_the_old_chunks(backend: StoreBackend, tmp_path: Path) -> None:
    """#15: compaction deletes chunks and inserts their merge in one transaction: killed -9 inside
    it, every point is still there once (old chunks), and a second run packs them (new chunks)."""
    ok = write_in_child(backend, None, tmp_path)
    assert ok.returncode == 0, ok.stderr
    store = backend.open()
    before = store.query("t1", "cpu", 0, 2**62, {})
    env = subprocess_env()
    f = tmp_path / "faults.json"
    f.write_text(json.dumps({"store.compact_before_commit": {}}))
    env["LOSSPROOF_FAULTS_FILE"] = str(f)
    argv = [sys.executable, "-c", COMPACT_CHILD, *backend.child_args()]
    died = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert store.query("t1", "cpu", 0, 2**62, {}) == before
    del env["LOSSPROOF_FAULTS_FILE"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "compacted" in done.stdout, done.stderr
    assert store.query("t1", "cpu", 0, 2**62, {}) == before
    assert store.compact(now_ms=T0 + 10**9).series == 0  # nothing left to pack
