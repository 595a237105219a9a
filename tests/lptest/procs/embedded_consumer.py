"""Read an embedded log as one reader of a consumer group, in its own process (a stand-in worker).

Prints, one line each, flushed before anything is committed:

    READY pid
    OWN 0,2            the partitions it owns, whenever that changes ("OWN -": none, a standby)
    REC p offset crc   a record poll returned (crc: zlib.crc32 of key + value)
    GAP p first last   a gap poll returned
    COMMIT p offset    a commit of that partition returned (durable)

It commits after every poll that returned something, after ``--delay`` seconds of "processing".
SIGTERM closes it cleanly; the tests also SIGKILL it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import zlib
from pathlib import Path
from types import FrameType

from lossproof.log.embedded import EmbeddedLogReader


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("directory", type=Path)
    ap.add_argument("--group", default="workers")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--grace", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--delay", type=float, default=0.0)
    args = ap.parse_args()
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    out = sys.stdout
    r = EmbeddedLogReader(
        args.directory, args.group, partitions=args.partitions, claim_grace=args.grace, claim_interval=0.05
    )
    print(f"READY {os.getpid()}", file=out, flush=True)
    owned: list[int] | None = None
    while not stop:
        res = r.poll(args.batch, 0.05)
        if r.owned != owned:
            owned = r.owned
            print("OWN " + (",".join(map(str, owned)) or "-"), file=out, flush=True)
        if not res.records and not res.gaps:
            continue
        lines = [f"REC {x.partition} {x.offset} {zlib.crc32(x.key + x.value)}" for x in res.records]
        lines += [f"GAP {g.partition} {g.first} {g.last}" for g in res.gaps]
        print("\n".join(lines), file=out, flush=True)
        if args.delay:
            time.sleep(args.delay)
        nxt = res.next_offsets()
        r.commit(nxt)
        print("\n".join(f"COMMIT {p} {o}" for p, o in sorted(nxt.items())), file=out, flush=True)
    r.close()


if __name__ == "__main__":
    main()
