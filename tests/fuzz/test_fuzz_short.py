"""The short fuzz run of CI (issue 20): ``lossproof bench fuzz`` against a real ``lossproof up`` for
45 seconds. It fails on any 5xx but 503 + Retry-After, a hang, a child of ``up`` that exits, a
traceback in the log, or a dead letter (only acknowledged input reaches the log). The long run and
its numbers are in docs/reliability.md."""

from __future__ import annotations

import re

import pytest

from lptest.cli import run_cli

ENDPOINTS = ("prom-rw", "otlp", "influx-v1", "influx-v2", "native", "query", "query_range", "http-raw")


@pytest.mark.process
@pytest.mark.timeout(180)
def test_short_fuzz_run_breaks_no_contract(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = run_cli(monkeypatch, capsys, "bench", "fuzz", "--seconds", "45", "--seed", "1")
    assert ran.code == 0, ran.out[-3000:] + ran.err[-3000:]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+(\d+)  ", ran.out, re.M)}
    for ep in ENDPOINTS:
        assert counts.get(ep, 0) > 0, (ep, ran.out)
    assert "no 5xx, no hang, no crash, no traceback, no dead letter" in ran.out
