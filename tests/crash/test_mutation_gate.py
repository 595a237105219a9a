"""The durability mutation gate (scripts/mutation-gate) as a test: every fsync, fdatasync and directory
fsync call site in the durable code is needed by at least one test, and the table of which test that is
matches the code (a new call site without a test, or a test named for a call site that is gone, fails)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lptest import subprocess_env
from lptest.powercut import require_fuse

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.process


@pytest.mark.timeout(1200)
def test_every_sync_call_site_is_needed_by_a_test() -> None:
    require_fuse()
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "mutation-gate")],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=1150,
    )  # fmt: skip
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "SURVIVED" not in r.stdout and "killed" in r.stdout, r.stdout[-4000:]
