"""`lossproof bench replay`: the catch-up benchmark runs end to end, in both body formats, with the
worker paused during the replay (--backlog)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lptest import subprocess_env

pytestmark = pytest.mark.process  # starts its own `lossproof up`


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "lossproof", "bench", "replay", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=subprocess_env())


@pytest.mark.parametrize(("body_format", "backlog"), [("json", False), ("msgpack", True)])
def test_bench_replay_stores_the_journal_and_says_how_fast(
    body_format: str, backlog: bool, tmp_path: Path
) -> None:
    size = ("--agents", "3", "--reports", "4", "--points", "20")
    r = _bench(
        "--spawn", "--work-dir", str(tmp_path), *size, "--format", body_format, *(["--backlog"] * backlog)
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "12 reports, 240 points" in r.stdout, r.stdout
    assert re.search(r"^replay acknowledged by ingest: [\d.]+ s = ", r.stdout, re.M), r.stdout
    stored = (
        r"^worker paused during the replay, then drained the backlog alone in [\d.]+ s"
        if backlog
        else r"^all stored by the worker: [\d.]+ s after the replay started"
    )
    assert re.search(stored, r.stdout, re.M), r.stdout
    # a live agent posted beside the replay; its points were stored too (the bench waits for them)
    live_line = r"^a live agent beside the replay .*\((\d+) acknowledged, 0 refused or failed"
    live = re.search(live_line, r.stdout, re.M)
    assert live and int(live.group(1)) >= 1, r.stdout


def test_bench_replay_backlog_needs_a_pipeline_it_starts() -> None:
    r = _bench("--url", "http://127.0.0.1:9", "--backlog")
    assert r.returncode != 0 and "--backlog" in r.stderr and "Traceback" not in r.stderr, r
