"""The health page's history (the pipeline's own metrics, sampled every few seconds), kept in a file
under the data dir's ``run/`` so that it survives a restart of the ingest process.

One JSON line per sample, appended; the file is rewritten with only the newest ``keep`` samples
once it holds twice that many. Each sample carries the ``run`` it was taken in (the process's start
time): counters start again at 0 in a new run, so rates are never computed across two runs. The file
is a convenience, not data: it is not fsync'd, and a line that does not parse (a torn append after a
power cut) is skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lossproof.obs.logging import get

log = get(__name__)

Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass(frozen=True, slots=True)
class Entry:
    t: float  # unix seconds
    run: int  # the start (unix ms) of the process that took it
    snap: Sample


def _encode(e: Entry) -> str:
    rows = [[name, [list(kv) for kv in labels], v] for (name, labels), v in e.snap.items()]
    return json.dumps({"t": e.t, "run": e.run, "m": rows}, separators=(",", ":")) + "\n"


def _decode(line: str) -> Entry:
    obj = json.loads(line)
    snap: Sample = {}
    for name, labels, value in obj["m"]:
        snap[(str(name), tuple((str(k), str(lv)) for k, lv in labels))] = float(value)
    return Entry(float(obj["t"]), int(obj["run"]), snap)


class HistoryFile:
    def __init__(self, path: Path, keep: int) -> None:
        self.path = path
        self.keep = keep
        self._lines = 0

    def load(self) -> list[Entry]:
        """The newest ``keep`` samples in the file (none if there is no file)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(_decode(line))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line, or a file from another version
        self._lines = len(out)
        return out[-self.keep :]

    def append(self, entry: Entry, recent: list[Entry]) -> None:
        """Add ``entry``; ``recent`` (the samples held in memory, ``entry`` last) is what the file is
        rewritten with when it has grown to twice ``keep``. A failure is logged, never raised: the
        page must not fail for its history."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._lines + 1 >= 2 * self.keep:
                tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text("".join(_encode(e) for e in recent[-self.keep :]), encoding="utf-8")
                os.replace(tmp, self.path)
                self._lines = min(len(recent), self.keep)
            else:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(_encode(entry))
                self._lines += 1
        except OSError as e:
            log.warning("dashboard.history_not_kept", path=str(self.path), error=str(e))
