"""A writer process for the concurrency and restart tests: writes random, overlapping batches of
reports for four agents into one PostgreSQL store, forever, and prints what each commit did.

    python pg_writer.py DSN SCHEMA SEED

Each line ``ok STORED DUPLICATE agent:seq,...`` is printed only after ``write_batch`` returned,
i.e. after the transaction committed. A failed batch (StoreUnavailable: the server restarting) is
retried, the same batch again, until it goes through; each failure prints ``retry``.
"""

from __future__ import annotations

import random
import sys
import time

from lossproof.store.base import LostRange, Point, ReportWrite, StoreUnavailable, WriteBatch
from lossproof.store.postgres import PostgresStore

AGENTS = ["a0", "a1", "a2", "a3"]
MAX_SEQ = 600
T0 = 1_767_225_600_000
HOUR = 3_600_000


def npoints(agent: str, seq: int) -> int:
    return 1 + (seq * 7 + AGENTS.index(agent)) % 30


def point_time(seq: int, j: int) -> int:
    # an hour per seq: the writers keep meeting days (partitions) nobody created yet
    return T0 + seq * HOUR + j


def report(agent: str, seq: int, writer: int) -> ReportWrite:
    pts = [
        Point("m", {"agent": agent, "k": str(j % 5)}, point_time(seq, j), float(seq * 100 + writer))
        for j in range(npoints(agent, seq))
    ]
    return ReportWrite("t", agent, seq, pts)


def main() -> None:
    dsn, schema, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    while True:
        try:
            store = PostgresStore(dsn, schema=schema, pool_size=2, connect_timeout=2, pool_timeout=2)
            break
        except StoreUnavailable:
            time.sleep(0.2)
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        keys = {(rng.choice(AGENTS), rng.randint(1, MAX_SEQ)) for _ in range(rng.randint(5, 60))}
        reports = [report(a, s, seed) for a, s in sorted(keys, key=lambda _: rng.random())]
        lost = []
        if rng.random() < 0.1:
            first = rng.randint(MAX_SEQ + 1, MAX_SEQ + 50)
            lost.append(LostRange("t", rng.choice(AGENTS), first, first + rng.randint(0, 3), "spool full"))
        xs = rng.sample(range(5000), 20)
        samples = [("t", Point("s", {"k": str(x % 3)}, T0 + x, float(x))) for x in xs]
        batch = WriteBatch(reports=reports, samples=samples, lost=lost, now_ms=seed * 10**9 + n)
        while True:
            try:
                res = store.write_batch(batch)
                break
            except StoreUnavailable as e:
                print(f"retry {e}", flush=True)
                time.sleep(0.1)
        keys_txt = ",".join(f"{r.agent}:{r.seq}" for r in reports)
        print(f"ok {res.reports_stored} {res.reports_duplicate} {keys_txt}", flush=True)


if __name__ == "__main__":
    main()
