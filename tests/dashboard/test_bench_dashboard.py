"""``lossproof bench dashboard`` runs end to end on a small store and prints its numbers (the speed
itself is the benchmark's business, not asserted here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lptest import require
from lptest.cli import run_cli


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_bench_dashboard_small(tmp_path: Path) -> None:
    require(shutil.which("chromium") and shutil.which("chromedriver"), "chromium and chromium-driver")
    argv = [sys.executable, "-m", "lossproof", "bench", "dashboard", "--dir", str(tmp_path)]
    argv += ["--series", "150", "--charted", "20"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "load average" in out
    assert "chart endpoint, 24 h x 20 series" in out, out
    assert out.count("query_range") == 2, out
    # the browser part ran (chromium and chromium-driver are installed for the dashboard tests)
    assert "browser, first contentful paint: median" in out, out
    assert "stored " in r.stderr and "stored " not in out  # progress goes to stderr


def test_bench_dashboard_bad_option_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "dashboard", "--dir", str(tmp_path), "--series", "5", "--charted", "10"]
    r = run_cli(monkeypatch, capsys, *args)
    assert r.code != 0
    assert r.err.strip().splitlines()[-1] == "Error: --charted cannot exceed --series"
