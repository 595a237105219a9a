"""The chaos driver's marker journal: which marker each report carries, and with which seq.

The audit identifies a report by its marker (``(run, n)``: the driver process and its report
counter), never by its seq, because a seq can be reused (a wiped spool, two agents with one id)
and two reports with one seq must not pass for one. The journal ties each marker to the seq its
report got, so the spool's own record (acknowledged, dropped, pending) and the ledger's (lost with
a reason) still say what became of a marker that is not in the store.

One text file beside the spool, ``<spool>.markers``, appended by every driver process that used
the spool (a wiped spool's journal moves away with it). One record per line, fields separated by
spaces:

- ``run R``: driver process ``R`` starts;
- ``inc I F``: the spool's incarnation is ``I``, its seq space starting at ``F`` (written at start
  and whenever it changes, e.g. after a 409 seq_conflict);
- ``i R N S``: marker ``(R, N)`` is about to be spooled; the spool's next seq is ``S``;
- ``m R N S``: it was spooled as seq ``S``;
- ``x R N``: the spool refused it (full): no report, no seq.

Lines are written (not fsync'd) before and after each spool write: a kill -9 keeps what the process
wrote, and a power cut of the agent's host is not among the chaos faults. An ``i`` line without its
``m`` (killed during the flush) is resolved on reading: the report exists if the spool's seq counter
reached ``S`` and no later line claims ``S`` (a later driver process journals ``S`` again only if
the spool never handed it out).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

SUFFIX = ".markers"


def journal_path(spool_dir: Path) -> Path:
    return spool_dir.parent / f"{spool_dir.name}{SUFFIX}"


def new_run_id() -> str:
    """A driver process's id: 64 random bits, so no two processes (or hosts) share markers."""
    return secrets.token_hex(8)


class MarkerJournal:
    """The writer: one per driver process."""

    def __init__(self, path: Path, run: str) -> None:
        self.run = run
        self._f: TextIO = open(path, "a", encoding="ascii")  # noqa: SIM115  closed by close()
        self._inc: tuple[str, int] | None = None
        self._line(f"run {run}")

    def _line(self, text: str) -> None:
        self._f.write(text + "\n")
        self._f.flush()  # into the kernel: a kill -9 of this process cannot lose it

    def incarnation(self, incarnation: str, first_seq: int) -> None:
        if self._inc != (incarnation, first_seq):
            self._inc = (incarnation, first_seq)
            # "" (a spool from before incarnations) is written as "-" so the line splits cleanly
            self._line(f"inc {incarnation or '-'} {first_seq}")

    def intent(self, n: int, seq: int) -> None:
        self._line(f"i {self.run} {n} {seq}")

    def made(self, n: int, seq: int) -> None:
        self._line(f"m {self.run} {n} {seq}")

    def not_made(self, n: int) -> None:
        self._line(f"x {self.run} {n}")

    def close(self) -> None:
        self._f.close()


@dataclass(frozen=True, order=True)
class Marker:
    """One report's marker and the seq its report got."""

    run: str
    n: int
    seq: int


@dataclass
class Journal:
    """What a journal says: the markers whose reports the spool holds (or held), and the spool's
    incarnations as ``(first_seq, incarnation)`` in the order they began."""

    markers: list[Marker] = field(default_factory=list)
    incarnations: list[tuple[int, str]] = field(default_factory=list)
    unresolved: int = 0  # intents the spool never turned into a report (killed before the write)


def read_journal(path: Path, last_seq: int) -> Journal:
    """Read ``path`` (``last_seq``: the highest seq the spool ever handed out). A missing file is
    an empty journal: a spool the chaos driver did not write (then the audit falls back to seqs)."""
    out = Journal()
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return out
    made: dict[tuple[str, int], int] = {}
    intents: list[tuple[str, int, int, int]] = []  # (run, n, seq, line number)
    claims: dict[int, int] = {}  # seq -> line number of the latest line naming it
    lines = text.split("\n")
    # the last element is "" after a complete line, or a line cut short by a kill: never read it
    for no, line in enumerate(lines[:-1]):
        f = line.split()
        if not f:
            continue
        try:
            if f[0] == "inc" and len(f) == 3:
                inc = "" if f[1] == "-" else f[1]
                first = int(f[2])
                if not out.incarnations or out.incarnations[-1] != (first, inc):
                    out.incarnations.append((first, inc))
            elif f[0] == "i" and len(f) == 4:
                intents.append((f[1], int(f[2]), int(f[3]), no))
                claims[int(f[3])] = no
            elif f[0] == "m" and len(f) == 4:
                made[(f[1], int(f[2]))] = int(f[3])
                claims[int(f[3])] = no
            elif f[0] == "x" and len(f) == 3:
                made[(f[1], int(f[2]))] = 0
        except ValueError:
            continue  # a line torn by a kill in mid-write
    for run, n, seq, no in intents:
        if (run, n) in made:
            if made[(run, n)]:
                out.markers.append(Marker(run, n, made[(run, n)]))
        elif seq <= last_seq and claims.get(seq) == no:
            out.markers.append(Marker(run, n, seq))
        else:
            out.unresolved += 1
    out.markers.sort(key=lambda m: (m.seq, m.run, m.n))
    return out
