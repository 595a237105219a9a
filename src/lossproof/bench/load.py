"""The machine's load, printed with every benchmark's numbers: on a shared 2-core machine a figure
means little without what else was running."""

from __future__ import annotations

import os


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"machine load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"
