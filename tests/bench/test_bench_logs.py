"""``lossproof bench logs`` runs end to end at tiny sizes: the embedded log and the 1- and 3-node Kafka
clusters it starts itself, each with 1 and 2 ingest processes (``server.ingest_processes``). The speeds
are the benchmark's business; here every variant must have numbers, and with 2 ingest processes both
must have served (each used CPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from lptest import require, subprocess_env
from lptest.cli import run_cli


def test_bad_log_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli(monkeypatch, capsys, "bench", "logs", "--logs", "embedded,kafka9")
    assert r.code != 0
    assert "'kafka9' is not one of embedded, kafka1, kafka3" in r.err.strip().splitlines()[-1]


@pytest.mark.kafka
@pytest.mark.timeout(600)
def test_bench_logs_tiny() -> None:
    require(shutil.which("java"), "java (scripts/deps/kafka.sh)")
    argv = [sys.executable, "-m", "lossproof", "bench", "logs", "--duration", "1", "--warmup", "0.5"]
    argv += ["--agents", "16", "--points-per-report", "20", "--heap", "384m", "--kafka-partitions", "2"]
    r = subprocess.run(argv, env=subprocess_env(), capture_output=True, text=True, timeout=560, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    variants = {(v["log"], v["ingest_processes"]): v for v in doc["variants"]}
    logs = ("embedded", "kafka1", "kafka3")
    assert list(variants) == [(log, n) for log in logs for n in (1, 2)]
    for (log, n), v in variants.items():
        for f in ("acked_points_s", "points_per_ingest_cpu_s", "half_points_s", "half_p50_ms", "half_p99_ms"):
            assert v[f] is not None and v[f] > 0, (log, n, f, v)
        assert v["cpu_s"]["ingest"] > 0 and v["cpu_s"]["client"] > 0, (log, n, v["cpu_s"])
        assert len(v["ingest_split"]) == n and all(c > 0 for c in v["ingest_split"]), (log, n, v)
        assert (v["cpu_s"]["kafka"] > 0) == (log != "embedded"), (log, n, v["cpu_s"])
    assert set(doc["ratios"]) == {f"{log}/embedded@{n}" for log in logs[1:] for n in (1, 2)}
    for ratio in doc["ratios"].values():
        assert ratio["acked"] > 0 and ratio["per_ingest_cpu"] > 0
    assert set(doc["scaling_1_to_2"]) == set(logs) and all(x > 0 for x in doc["scaling_1_to_2"].values())
    assert "Kafka 3 nodes RF3 / embedded, 2 ingest" in r.stdout
