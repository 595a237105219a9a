"""Replay progress: how far into a fallback journal the main ingest has acknowledged, and pruning.

``progress.json`` in replay's state directory (``D/replay/`` unless ``lossproof replay
--state-dir`` names another) is written atomically (temporary file, fsync, rename, fsync of the
directory) by ``lossproof replay``. It holds the journal position of the first request *not yet*
acknowledged by the main ingest (everything before it was acknowledged, or rejected with a 4xx,
its seqs reported to the main ingest's ledger as lost, and recorded in ``rejected.jsonl`` next to
it; see ``lossproof.fallback.replay``), the URL it was replayed to, and when each segment was
completely replayed. The receiver reads ``D/replay/progress.json`` for its pending-bytes metric and
for pruning. It is a resume point, not a record of what was sent: the main ingest is idempotent, so
a replay whose progress could not be saved (its disk full) only sends again what it had sent.

Pruning deletes a segment only when all of these hold: it is not the newest segment (the newest
one carries the journal's next index and is the one being written), the progress position is in a
later segment (so every record in it was acknowledged by the main ingest), and it was completely
replayed at least ``retention`` seconds ago. Only the oldest segments go (a prefix), because a
segment's durable end is recorded in the header of the segment after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lossproof.durable import fsync_dir, make_dirs
from lossproof.fallback import journal as jn
from lossproof.segments import state as cells

REPLAY_DIR = "replay"
PROGRESS_FILE = "progress.json"
REJECTED_FILE = "rejected.jsonl"


class ProgressError(Exception):
    pass


@dataclass
class Progress:
    target: str
    segment: int
    pos: int
    requests: int = 0  # acknowledged (or rejected and recorded) requests so far, for humans
    completed: dict[int, int] = field(default_factory=dict)  # segment base -> ms it was fully replayed
    updated_ms: int = 0

    @property
    def position(self) -> jn.Position:
        return jn.Position(self.segment, self.pos)


def replay_dir(data_dir: Path) -> Path:
    """Replay's state directory when ``--state-dir`` does not name another one."""
    return data_dir / REPLAY_DIR


def progress_path(data_dir: Path, state_dir: Path | None = None) -> Path:
    return (state_dir or replay_dir(data_dir)) / PROGRESS_FILE


def load_progress(data_dir: Path, state_dir: Path | None = None) -> Progress | None:
    path = progress_path(data_dir, state_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ProgressError(f"{path}: unreadable replay progress: {e}") from None
    try:
        return Progress(
            target=str(raw["target"]),
            segment=int(raw["segment"]),
            pos=int(raw["pos"]),
            requests=int(raw.get("requests", 0)),
            completed={int(k): int(v) for k, v in raw.get("completed", {}).items()},
            updated_ms=int(raw.get("updated_ms", 0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ProgressError(f"{path}: malformed replay progress ({e!r})") from None


def save_progress(data_dir: Path, p: Progress, state_dir: Path | None = None) -> None:
    d = state_dir or replay_dir(data_dir)
    make_dirs(d)
    p.updated_ms = int(time.time() * 1000)
    data = json.dumps(
        {
            "version": 1,
            "target": p.target,
            "segment": p.segment,
            "pos": p.pos,
            "requests": p.requests,
            "completed": {str(k): v for k, v in sorted(p.completed.items())},
            "updated_ms": p.updated_ms,
        },
        indent=1,
    ).encode()
    # a tmp name of its own: replays of two targets may save at once
    tmp = d / f"{PROGRESS_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
    cells.replace(d / PROGRESS_FILE, data, tmp=tmp)


def pending_bytes(journal: Path, progress: Progress | None) -> int:
    """Journal bytes not yet replayed (approximate: whole files, from the progress position on)."""
    total = 0
    for base in jn.list_segments(journal):
        with contextlib.suppress(FileNotFoundError):
            size = jn.segment_path(journal, base).stat().st_size
            if progress is None or base > progress.segment:
                total += max(0, size - jn.HEADER_SIZE)
            elif base == progress.segment:
                total += max(0, size - progress.pos)
    return total


def prunable(journal: Path, progress: Progress | None, retention_seconds: float, now_ms: int) -> list[int]:
    """Segments that may be deleted (see the module docstring)."""
    if progress is None:
        return []
    bases = jn.list_segments(journal)
    out = []
    # Only a prefix: a segment's trusted end is in its *next* segment's header, so a segment whose
    # successor was deleted would lose it.
    for base in bases[:-1]:  # never the newest
        done = progress.completed.get(base)
        if base >= progress.segment or done is None or now_ms - done < retention_seconds * 1000:
            break
        out.append(base)
    return out


def prune(journal: Path, progress: Progress | None, retention_seconds: float) -> list[Path]:
    """Delete prunable segments; returns the deleted paths."""
    deleted = []
    for base in prunable(journal, progress, retention_seconds, int(time.time() * 1000)):
        path = jn.segment_path(journal, base)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            deleted.append(path)
    if deleted:
        fsync_dir(journal)
    return deleted
