"""A chaos agent: the real :class:`lossproof.agent.Agent` (real spool, real sender, real fallback),
run in-process by a loop that makes one report per tick with a marker point of its own.

``python -m lossproof.chaos.driver --config agent.toml --tick 0.1 --status FILE``

The agent's own interval is set very long by the harness, so only this loop makes reports. Each
report carries one marker point that names *this process and this report*, not the seq: metric
``chaos.marker``, labels ``agent=<id>`` and ``run=<random id of this driver process>``,
``t = MARKER_EPOCH_MS + n`` and ``v = n`` where ``n`` counts the reports this process made. Two
reports that end up with one seq (a wiped spool, two agents sharing an id) therefore have two
markers, and the store keeps a sample for each only if it really stored both reports.

Which seq each marker went out with, and the spool's incarnations, go to the marker journal beside
the spool (``<spool>.markers``, see :mod:`lossproof.chaos.journal`); the audit reads it with the
spool. SIGUSR1 stops producing (the agent keeps sending what is pending); SIGTERM stops the agent
cleanly. The status file (JSON, replaced atomically every tick) says last seq, pending reports,
the incarnation and the destination.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import click

from lossproof.agent import Agent, load_config
from lossproof.chaos.journal import MarkerJournal, journal_path, new_run_id
from lossproof.chaos.remote import MARKER_LABEL, MARKER_METRIC, RUN_LABEL, marker_time
from lossproof.cliutil import finite_float


def _write_status(path: Path, status: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status), encoding="utf-8")
    os.replace(tmp, path)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--tick", type=finite_float(0, min_open=True), default=0.1, show_default=True)
@click.option("--status", "status_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--points", type=int, default=5, show_default=True, help="Ordinary points per report.")
def main(config_path: Path, tick: float, status_path: Path, points: int) -> None:
    cfg = load_config(config_path)
    cfg.spool_dir.mkdir(parents=True, exist_ok=True)
    (cfg.spool_dir.parent / f"{cfg.spool_dir.name}.agent_id").write_text(cfg.agent_id, encoding="utf-8")
    stop = threading.Event()
    producing = threading.Event()
    producing.set()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: producing.clear())
    signal.signal(signal.SIGUSR2, lambda *_: producing.set())
    agent = Agent(cfg)
    agent.start()
    spool = agent.spool
    assert spool is not None
    run = new_run_id()
    journal = MarkerJournal(journal_path(cfg.spool_dir), run)
    journal.incarnation(*spool.incarnation)
    mismatches = 0
    n = 0
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            if producing.is_set():
                n += 1
                seq = spool.stats().last_seq + 1
                labels = {MARKER_LABEL: cfg.agent_id, RUN_LABEL: run}
                agent.record(MARKER_METRIC, float(n), labels, t_ms=marker_time(n))
                for i in range(points):
                    # the run label keeps two processes' load points apart as well
                    agent.record(
                        "chaos.load", float(n % 1000), {"i": str(i), RUN_LABEL: run}, t_ms=marker_time(n)
                    )
                # Before the flush: a kill -9 between the spool's write and the line after it must
                # not leave a report in the spool that no marker line names.
                journal.intent(n, seq)
                made = agent.flush()
                if not made:
                    # the spool could not take it: these points never got a seq, forget them
                    agent.buffer.drain()
                    journal.not_made(n)
                else:
                    journal.made(n, made[0])
                    if made != [seq]:
                        mismatches += 1
                        print(f"chaos driver: expected seq {seq}, made {made}", file=sys.stderr, flush=True)
            # a 409 seq_conflict starts a new incarnation: the audit needs to know where it begins
            journal.incarnation(*spool.incarnation)
            s = spool.stats()
            _write_status(
                status_path,
                {
                    "agent": cfg.agent_id,
                    "pid": os.getpid(),
                    "last_seq": s.last_seq,
                    "pending": s.pending_reports,
                    "producing": producing.is_set(),
                    "incarnation": spool.incarnation[0],
                    "run": run,
                    "destination": agent.destination,
                    "mismatches": mismatches,
                    "t": time.time(),
                },
            )
            next_at += tick
            stop.wait(max(0.0, next_at - time.monotonic()))
            if next_at < time.monotonic() - 1:
                next_at = time.monotonic()
    finally:
        agent.stop()
        journal.close()
        s_final = {"agent": cfg.agent_id, "pid": os.getpid(), "stopped": True, "mismatches": mismatches}
        _write_status(status_path, s_final)


if __name__ == "__main__":
    main()
