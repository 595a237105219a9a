"""A worker stand-in: poll, "store" (append ``partition offset`` lines to a file and fsync), commit.

Run as a subprocess by test_rebalance.py, which kills it with SIGKILL during a rebalance.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from lossproof.config import KafkaLogConfig
from lossproof.log.kafka import KafkaLogReader


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", default="workers")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--delay", type=float, default=0.03, help="seconds per batch (a slow store)")
    args = ap.parse_args()
    cfg = KafkaLogConfig(bootstrap_servers=args.bootstrap, topic=args.topic, session_timeout_seconds=6.0)
    r = KafkaLogReader(cfg, args.group)
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    print(f"READY {os.getpid()}", flush=True)
    while True:
        res = r.poll(args.batch, 0.2)
        if res.gaps:
            print(f"GAP {res.gaps}", file=sys.stderr, flush=True)
        if not res.records and not res.gaps:
            continue
        os.write(fd, "".join(f"{x.partition} {x.offset}\n" for x in res.records).encode())
        os.fsync(fd)
        time.sleep(args.delay)
        r.commit(res.next_offsets())
        print(f"COMMIT {sorted(r.assignment)} {res.next_offsets()}", flush=True)


if __name__ == "__main__":
    main()
