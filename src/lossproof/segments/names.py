"""Numbered segment file names (``{n:0Nd}{suffix}``), listed in number order."""

from __future__ import annotations

import os
import re
from pathlib import Path


class SegmentNames:
    """Files named by a zero-padded number and a suffix, e.g. ``00000000000000000042.seg``."""

    def __init__(self, digits: int, suffix: str, subdir: str = "") -> None:
        self.digits = digits
        self.suffix = suffix
        self.subdir = subdir
        self._re = re.compile(rf"^(\d{{{digits}}}){re.escape(suffix)}$")

    def dir(self, directory: Path) -> Path:
        return directory / self.subdir if self.subdir else directory

    def path(self, directory: Path, n: int) -> Path:
        return self.dir(directory) / f"{n:0{self.digits}d}{self.suffix}"

    def list(self, directory: Path) -> list[int]:
        """The numbers of the files in ``directory``, ascending ([] if the directory is missing)."""
        try:
            names = os.listdir(self.dir(directory))
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := self._re.match(n)))
