"""Debian's InfluxDB 1.x CLI (`influx -import`) writing thousands of lines, in several precisions, to
a real `lossproof up`: every point stored once; importing the same files again changes nothing."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lptest import require
from lptest.pipeline import Pipeline
from lptest.proto import metric_value, query, wait_points

INFLUX = shutil.which("influx")


@pytest.fixture(autouse=True)
def _needs_influx() -> None:
    require(INFLUX, "the influx CLI (Debian's influxdb-client)")



T0_S = 1_767_225_600  # 2026-01-01
LINES = 1500
HOSTS = 5
# precision -> multiplier from seconds
PRECISIONS = {"ns": 10**9, "ms": 1000, "s": 1}


def import_file(tmp_path: Path, precision: str) -> tuple[Path, dict[tuple[str, int], float]]:
    """A file of LINES lines (2 fields each, escaped tag values), and the points it must store."""
    mul = PRECISIONS[precision]
    lines = ["# DDL", "# DML", "# CONTEXT-DATABASE: importdb", "# CONTEXT-RETENTION-POLICY: autogen"]
    want: dict[tuple[str, int], float] = {}
    for i in range(LINES):
        host = f"web\\ {i % HOSTS}\\,x"  # "web 0,x" once unescaped
        t_s = T0_S + i // HOSTS
        lines.append(f"imp_{precision},host={host} v={i}.25,n={i}i {t_s * mul}")
        want[(f"web {i % HOSTS},x", t_s * 1000)] = i + 0.25
    path = tmp_path / f"import-{precision}.txt"
    path.write_text("\n".join(lines) + "\n")  # without the final newline, the importer drops the last line
    return path, want


def run_import(p: Pipeline, path: Path, precision: str) -> str:
    assert INFLUX is not None
    out = subprocess.run(
        [
            INFLUX,
            "-host",
            "127.0.0.1",
            "-port",
            str(p.port),
            "-username",
            "importer",
            "-password",
            p.key,
            "-import",
            "-path",
            str(path),
            "-precision",
            precision,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert f"Processed {LINES} inserts" in text and "Failed 0 inserts" in text, text
    return text


def test_influx_import_in_several_precisions_stores_every_point_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    p = pipeline
    files = {prec: import_file(tmp_path, prec) for prec in PRECISIONS}
    for prec, (path, _) in files.items():
        run_import(p, path, prec)

    def check_all() -> None:
        for prec, (_, want) in files.items():
            for metric, scale in ((f"imp_{prec}_v", 1.0), (f"imp_{prec}_n", None)):
                series = wait_points(p, metric, LINES, timeout=30, db="importdb", rp="autogen")
                got = {(s["labels"]["host"], int(t)): v for s in series for t, v in s["points"]}
                assert len(series) == HOSTS and all(
                    s["labels"] == {"db": "importdb", "rp": "autogen", "host": s["labels"]["host"]}
                    for s in series
                )
                assert sum(len(s["points"]) for s in series) == LINES, metric  # each point once
                if scale is not None:
                    assert got == want, metric
                else:
                    assert sorted(got.values()) == sorted(float(int(v)) for v in want.values())

    check_all()
    stored = metric_value(p.metrics(), "lossproof_worker_points_total")
    assert stored == 2 * LINES * len(PRECISIONS)

    # importing everything again: acknowledged, and nothing changes
    for prec, (path, _) in files.items():
        run_import(p, path, prec)
    acked = 2 * len(PRECISIONS) * LINES
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = p.metrics()
        if (
            metric_value(text, "lossproof_ingest_protocol_points_total", protocol="influx", outcome="acked")
            >= acked
        ):
            break
        time.sleep(0.2)
    time.sleep(1.5)  # let the worker go through the replayed records
    check_all()
    assert metric_value(p.metrics(), "lossproof_worker_points_total") == stored
    assert query(p, "imp_ns_v", host="web 0,x")[0]["labels"]["host"] == "web 0,x"
