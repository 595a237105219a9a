"""Two writer processes store the same stream of reports (overlapping batches, as when a log
partition moves between workers or a worker re-reads after a crash) into one PostgreSQL, and get
killed with SIGKILL at random moments: every report is stored exactly once, whole, and every
batch a writer saw committed is there."""

from __future__ import annotations

import random
import time

from lossproof.store.postgres import PostgresStore
from lptest.pg_harness import Writer, check_store, parse_ok


def test_two_writer_processes_with_kill9_store_each_report_once(pg_dsn: str, pg_schema: str) -> None:
    PostgresStore(pg_dsn, schema=pg_schema).close()  # install the schema once, up front
    rng = random.Random(5)
    seed = 1
    writers = [Writer(pg_dsn, pg_schema, seed), Writer(pg_dsn, pg_schema, seed + 1)]
    seed += 2
    done: list[Writer] = []
    kills = 0
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            victim = rng.randrange(2)
            # let it commit something first, then kill it at a random moment of its work
            wait_until = time.monotonic() + 15
            while writers[victim].oks() < 2 and time.monotonic() < wait_until:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.8))
            writers[victim].kill()
            kills += 1
            done.append(writers[victim])
            writers[victim] = Writer(pg_dsn, pg_schema, seed)
            seed += 1
    finally:
        for w in writers:
            w.kill()
            done.append(w)
    acked, reported = parse_ok([line for w in done for line in w.lines])
    committed_batches = sum(w.oks() for w in done)
    assert kills >= 8 and committed_batches >= 40, (kills, committed_batches)
    store = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        total = check_store(store, acked, reported)
    finally:
        store.close()
    print(f"kills={kills} batches={committed_batches} acked={len(acked)} stored={total} counted={reported}")
    assert total >= len(acked) > 0
