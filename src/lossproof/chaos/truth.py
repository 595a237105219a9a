"""An agent's truth, read from its spool directory without changing a byte of it.

The audit must not trust the pipeline to say what the agent created, so it reads the agent's own
durable files with the agent's own format code (``lossproof.agent.spool``):

- ``seq``: the high-water mark of handed-out seqs. Every seq from 1 up to it was created;
- ``state``: the floor (below it every seq is resolved), the acknowledged ranges at or above it, and
  every range the agent dropped, with the reason;
- ``segments/``: the report records still on disk.

A seq at or above the floor that is neither acknowledged nor dropped is *pending* when its record is
on disk; when its record is gone, the agent declares it ``spool_damaged`` on its next start (and so
does this reader). Best read while the agent is stopped; while it runs the result is a snapshot that
may be a moment old (the state file is replaced atomically, so it is never half-read).

Beside the spool, the chaos driver's marker journal (``<spool>.markers``) names each report's marker
and the spool's incarnations; a ``<spool>.wiped`` file says the harness took the spool away from its
agent (as a wiped disk would): what it still held will never be sent.
"""

from __future__ import annotations

import os
from pathlib import Path

from lossproof.agent import ranges as rg
from lossproof.agent.spool import DAMAGED
from lossproof.agent.spool import state as state_mod
from lossproof.agent.spool.counter import NAME as SEQ_NAME
from lossproof.agent.spool.counter import SLOT, _decode
from lossproof.agent.spool.format import list_segments, scan_segment, segment_path
from lossproof.chaos.audit import AgentTruth
from lossproof.chaos.journal import journal_path, read_journal

WIPED_SUFFIX = ".wiped"


def wiped_mark(spool_dir: Path) -> Path:
    return spool_dir.parent / f"{spool_dir.name}{WIPED_SUFFIX}"


class TruthError(Exception):
    """The directory is not a readable agent spool."""


def read_seq_counter(directory: Path) -> int:
    try:
        fd = os.open(directory / SEQ_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        slots = [_decode(os.pread(fd, SLOT.size, i * SLOT.size)) for i in (0, 1)]
    finally:
        os.close(fd)
    return max((v for v, _ in (s for s in slots if s is not None)), default=0)


def read_truth(agent: str, directory: Path, name: str = "") -> AgentTruth:
    """What the agent whose spool is ``directory`` created, dropped and still holds."""
    if not directory.is_dir():
        raise TruthError(f"{directory}: not a directory")
    try:
        st = state_mod.load(directory) or state_mod.SpoolState()
    except state_mod.StateError as e:
        raise TruthError(str(e)) from None
    on_disk: list[tuple[int, int]] = []
    for seg_id in list_segments(directory):
        scan = scan_segment(segment_path(directory, seg_id))
        on_disk.extend((r.seq, r.seq) for r in scan.records)
    on_disk = rg.normalize(on_disk)
    top_record = on_disk[-1][1] if on_disk else 0
    st_top = max(
        [b for _, b in st.acked] + [b for _, b, _ in st.dropped] + [st.floor - 1],
        default=0,
    )
    last = max(read_seq_counter(directory), top_record, st_top)
    created = [(1, last)] if last else []
    dropped = [(a, b, reason) for a, b, reason in st.dropped]
    resolved = rg.normalize([*st.acked, *((a, b) for a, b, _ in st.dropped)])
    unresolved = rg.subtract([(st.floor, last)], resolved) if last >= st.floor else []
    pending = rg.intersect(unresolved, on_disk)
    damaged = rg.subtract(unresolved, on_disk)
    dropped.extend((a, b, DAMAGED) for a, b in damaged)
    journal = read_journal(journal_path(directory), last)
    incarnations = list(journal.incarnations)
    # the state file is the last word on the current incarnation (the journal may lag by a tick)
    if not incarnations or incarnations[-1] != (st.first_seq, st.incarnation):
        incarnations.append((st.first_seq, st.incarnation))
    return AgentTruth(
        agent,
        created,
        dropped=dropped,
        pending=pending,
        markers=journal.markers,
        incarnations=incarnations,
        gone=wiped_mark(directory).exists(),
        name=name,
    )


def parse_spool_arg(arg: str) -> tuple[str, Path]:
    """``AGENT=DIR``, or ``DIR``: the agent id is then in ``DIR.agent_id`` beside it (written by the
    chaos driver) or, failing that, the directory's name."""
    if "=" in arg:
        agent, _, where = arg.partition("=")
        return agent, Path(where)
    spool = Path(arg)
    id_file = spool.parent / f"{spool.name}.agent_id"
    if id_file.is_file():
        return id_file.read_text(encoding="utf-8").strip(), spool
    return spool.name, spool
