"""Append reports to an agent spool forever; print ``SEQ seq`` once a report is durable (append returned).

The first line is ``READY last_seq lost`` (what opening the spool recovered: the highest seq ever
handed out, and how many seqs it declared lost). Every other append, the oldest pending seqs are
acknowledged (``ACKING a b`` before the call, ``ACKED a b`` once ``ack`` returned), and now and then
``maintain`` may delete files that left the replay window, so the state file, floor and deletions are
exercised too. The report for ``seq`` is ``report_bytes(seq, tag)``, so a test can check its content.
Run by tests/crash, which kill -9 it and cut the power under it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lossproof.agent.spool import Spool, SpoolLimits


def report_bytes(seq: int, tag: str) -> bytes:
    return (f"report {seq} {tag};" * 8).encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("directory", type=Path)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--idle", action="store_true", help="open (recover) and wait, append nothing")
    args = ap.parse_args()
    limits = SpoolLimits(segment_bytes=4096, window_seconds=0.0, window_bytes=8192)
    spool = Spool(args.directory, limits)
    out = sys.stdout
    out.write(f"READY {spool.recovery.last_seq} {sum(b - a + 1 for a, b, _ in spool.recovery.lost)}\n")
    out.flush()
    if args.idle:
        while True:
            time.sleep(3600)
    i = 0
    while True:
        seqs = spool.append([lambda s: report_bytes(s, args.tag)] * (1 + i % 3))
        out.write("".join(f"SEQ {s}\n" for s in seqs))
        out.flush()
        if i % 2:
            pending = spool.pending_seqs(4)
            if pending:
                out.write(f"ACKING {pending[0]} {pending[-1]}\n")  # killed before ACKED: either way
                out.flush()
                spool.ack(pending)
                out.write(f"ACKED {pending[0]} {pending[-1]}\n")
                out.flush()
            if i < 32:  # early on only: its directory sync must not cover for the later files' own
                spool.maintain()
        i += 1


if __name__ == "__main__":
    main()
