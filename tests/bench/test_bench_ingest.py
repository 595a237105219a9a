"""`lossproof bench ingest` against a running pipeline prints its numbers and, as the bench help
says, the machine's load with them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lptest.cli import run_cli
from lptest.pipeline import Pipeline


def test_bench_ingest_prints_the_load_with_its_numbers(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--url", pipeline.url, "--api-key", pipeline.key, "--data-dir", str(pipeline.data_dir)]
    opts = ["--duration", "1", "--agents", "2", "--points-per-report", "10"]
    r = run_cli(monkeypatch, capsys, "bench", "ingest", *args, *opts)
    assert r.code == 0, r
    assert re.search(r"^acked: [\d,]+ points/s", r.out, re.M), r.out
    assert re.search(r"^machine load average [\d.]+ [\d.]+ [\d.]+ \(1/5/15 min\) on \d+ CPUs$", r.out, re.M)
