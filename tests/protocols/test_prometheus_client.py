"""Debian's Prometheus, scraping itself and remote-writing to a real `lossproof up`.

Its series appear with the right labels and values; lossproof is stopped for 15 s mid-run and
restarted: Prometheus retries (5xx / connection refused are recoverable for it) and the stored
series have no hole.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lptest import require
from lptest.pipeline import HTTP, Pipeline, free_port
from lptest.proto import query, wait_points

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture(autouse=True)
def _needs_prometheus() -> None:
    require(PROMETHEUS, "Prometheus (Debian's prometheus)")


SCRAPE_MS = 1000


@pytest.fixture
def prometheus(tmp_path: Path, pipeline: Pipeline) -> Iterator[tuple[Pipeline, str, subprocess.Popen[bytes]]]:
    port = free_port()
    target = f"127.0.0.1:{port}"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "prometheus", "static_configs": [{"targets": [target]}]}],
                "remote_write": [
                    {
                        "url": f"{pipeline.url}/api/v1/write",
                        "authorization": {"credentials": pipeline.key},
                        "queue_config": {
                            "batch_send_deadline": "1s",
                            "min_backoff": "100ms",
                            "max_backoff": "1s",
                            "max_shards": 2,
                        },
                        "metadata_config": {"send_interval": "1s"},
                    }
                ],
            }
        )
    )
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    assert PROMETHEUS is not None
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={target}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield pipeline, target, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _prom_query(target: str, q: str) -> float:
    r = HTTP.request("GET", f"http://{target}/api/v1/query", fields={"query": q})
    result = json.loads(r.data)["data"]["result"]
    return sum(float(x["value"][1]) for x in result)


def test_prometheus_remote_write_with_a_lossproof_restart(
    prometheus: tuple[Pipeline, str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    p, target, _proc = prometheus
    labels = {"job": "prometheus", "instance": target}
    [up] = wait_points(p, "up", 3, timeout=60, **labels)
    assert up["labels"] == labels
    assert {v for _, v in up["points"]} == {1.0}
    # a metric with more labels: values as Prometheus itself reports them
    info = wait_points(p, "prometheus_build_info", 1, timeout=30, **labels)
    assert info[0]["labels"]["version"].startswith("2.")
    assert info[0]["labels"]["goversion"]
    # and the metric metadata Prometheus sends every metadata_config.send_interval
    deadline = time.monotonic() + 30
    meta: dict[str, list[dict[str, str]]] = {}
    while time.monotonic() < deadline:
        status, body = p.get("/api/v1/metadata?metric=prometheus_http_requests_total")
        assert status == 200, body
        meta = body["data"]
        if meta:
            break
        time.sleep(0.2)
    [entry] = meta["prometheus_http_requests_total"]
    assert entry["type"] == "counter" and entry["help"], meta

    # lossproof goes away for 15 s; Prometheus keeps scraping and retries the sends
    p.stop()
    down_from = int(time.time() * 1000)
    time.sleep(15)
    down_to = int(time.time() * 1000)
    p.start()
    # everything scraped while lossproof was down arrives
    deadline = time.monotonic() + 60
    points: list[list[float]] = []
    while time.monotonic() < deadline:
        [up] = query(p, "up", **labels)
        points = up["points"]
        if points[-1][0] > down_to + 3 * SCRAPE_MS:
            break
        time.sleep(0.5)
    times = [int(t) for t, _ in points]
    assert times[0] < down_from and times[-1] > down_to + 3 * SCRAPE_MS, (times[0], times[-1])
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 1.5 * SCRAPE_MS, f"a hole in the stored series: gaps {sorted(gaps)[-5:]} ms"
    assert len(times) >= (down_to - down_from) / SCRAPE_MS

    # Prometheus saw the failures as recoverable: it retried and dropped nothing
    assert _prom_query(target, "prometheus_remote_storage_samples_retried_total") > 0
    assert _prom_query(target, "prometheus_remote_storage_samples_failed_total") == 0
    text = p.metrics()
    assert 'lossproof_ingest_sender_points_total{outcome="acked",sender="Prometheus/2.42' in text
