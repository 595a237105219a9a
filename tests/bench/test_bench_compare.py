"""``lossproof bench compare`` runs end to end at tiny sizes against a real VictoriaMetrics and a real
``lossproof up`` (the speeds are the benchmark's business, not asserted here); its hand-made
remote-write bodies are what the protobuf classes read."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cramjam
import pytest

from lossproof.bench import compare
from lossproof.bench.compare import (
    HISTOGRAM_LE,
    QUERIES,
    VM_BINARY,
    DataSet,
    Target,
    _data_value,
    _vcpu_pack,
    compaction_state,
    ingest_series,
    run_queries,
    summary_lines,
)
from lossproof.bench.rwbodies import SeriesSet, body_path, write_pool
from lossproof.points import SeriesSamples
from lossproof.protocol import promrw
from lossproof.store.base import WriteBatch
from lossproof.store.sqlite import SqliteStore
from lptest import require, subprocess_env
from lptest.cli import run_cli


def test_bodies_decode_as_the_protobuf_classes_read_them(tmp_path: Path) -> None:
    series = ingest_series()[:3]
    sset = SeriesSet(series, 4, lambda j, k: j * 100 + k + 0.5)
    t0 = 1_700_000_000_000
    write_pool(tmp_path, sset, 2, t0, 1000)
    req = promrw.WriteRequest()
    req.ParseFromString(bytes(cramjam.snappy.decompress_raw(body_path(tmp_path, 1).read_bytes())))
    assert len(req.timeseries) == 3
    for j, ts in enumerate(req.timeseries):
        assert {lb.name: lb.value for lb in ts.labels} == series[j]
        assert ts.labels[0].name == "__name__"
        # body 1 holds samples 4..7 of every series, one second apart
        assert [(s.timestamp, s.value) for s in ts.samples] == [
            (t0 + k * 1000, j * 100 + k + 0.5) for k in range(4, 8)
        ]
    with pytest.raises(ValueError, match="between 2004 and 2109"):
        sset.raw(0, [1000, 2000, 3000, 4000])


def test_data_set_selects_the_stated_series_counts() -> None:
    data = DataSet(10_000, 24, 1_800_000_000_000)
    assert data.counts() == {"m1": 1000, "m2": 7000, "m3": 1000, "m4": 1000, "m5_bucket": 1000}
    assert data.samples_per_series == 5760 and data.total == 11_000 * 5760
    hosts = {s["host"] for s in data.labels() if s["__name__"] == "m3"}
    assert len([h for h in hosts if h.startswith("h1")]) == 111


@pytest.mark.parametrize("series", [50, 55, 10_000])
def test_histogram_buckets_are_cumulative_and_all_different(series: int) -> None:
    data = DataSet(series, 1, 1_800_000_000_000)
    labels = data.labels()
    value = _data_value(labels, 0)
    histograms: dict[str, list[tuple[int, float]]] = {}
    for j, s in enumerate(labels):
        if s["__name__"] == "m5_bucket":
            histograms.setdefault(s["instance"], []).append(
                (HISTOGRAM_LE.index(s["le"]), value(j, 7) - value(j, 6))
            )
    assert len(histograms) == max(1, series // 100)
    for steps in histograms.values():
        per_bucket = [v for _, v in sorted(steps)]
        assert len(per_bucket) == len(HISTOGRAM_LE)
        assert all(a < b for a, b in itertools.pairwise(per_bucket)), per_bucket


def test_bad_option_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli(monkeypatch, capsys, "bench", "compare", "--hours", "0.1")
    assert r.code != 0
    assert "'--hours': 0.1 is not in the range" in r.err.strip().splitlines()[-1]


def test_compaction_state_is_done_once_the_compactor_has_nothing_left(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    t0 = 1_700_000_000_000
    try:
        for b in range(3):
            ts = [t0 + (10 * b + k) * 15_000 for k in range(10)]
            vs = [k + 0.5 for k in range(10)]
            store.write_batch(
                WriteBatch(
                    series=[("t", SeriesSamples("m", {"i": str(i)}, ts, vs)) for i in range(5)], now_ms=t0
                )
            )
        loaded = compaction_state(path)
        assert not loaded["done"] and loaded["parts"] == 3 and loaded["raw_chunks"] == 0
        for later in (t0 + 60_000, t0 + 600_000):  # the parts flushed, then (5 minutes on) packed
            while store.compact(later).more:
                pass
        state = compaction_state(path)
    finally:
        store.close()
    assert state["done"] and state["parts"] == 0 and state["unpacked_flushes"] == 0, state
    assert state["raw_chunks"] == 0 and state["packed_chunks"] == 5 and state["packed_points"] == 150, state
    assert 0 < state["chunk_bytes"] < 150 * 16 and state["page_size"] > 0 and state["pages"] > 0


class _Answers(Target):
    """A target that answers every query at once with an empty answer of its shape, and notes who
    was asked in which order (``asked``, shared by both)."""

    asked: list[str]

    def fetch(self, path: str, params: dict[str, object] | None = None) -> bytes:
        self.asked.append(self.name)
        empty = {"resultType": "matrix", "result": []} if path.startswith("/api/v1/query") else []
        return json.dumps({"status": "success", "data": empty}).encode()


def test_query_runs_alternate_and_exclude_the_clients_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each query's runs alternate between the two (both see the same background work), and a run is
    timed until its answer is received: this client's JSON parsing (made slow here) is not in it."""
    asked: list[str] = []
    vm, lp = (_Answers(name, "http://unused", {}, Path("unused")) for name in ("vm", "lossproof"))
    vm.asked = lp.asked = asked
    loads = json.loads

    def slow_loads(raw: str | bytes) -> object:
        time.sleep(0.05)
        return loads(raw)

    monkeypatch.setattr(compare.json, "loads", slow_loads)
    rows = run_queries(DataSet(10, 1, 3_600_000 * 100), vm, lp, 3, lambda _: None)
    assert asked == ["vm", "lossproof"] * 3 * len(QUERIES)
    for row in rows.values():
        assert row["agree"] is True
        assert row["vm_ms"] < 25 and row["lossproof_ms"] < 25, row


def _rows(vm_ms: float, lp_ms: float) -> dict[str, object]:
    row = {"query": "sum by (job) (rate(m2[5m]))", "path": "/api/v1/query_range"}
    return {"sum_rate": {**row, "vm_ms": vm_ms, "lossproof_ms": lp_ms, "ratio": lp_ms / vm_ms, "agree": True}}


def test_summary_shows_both_query_passes_labelled() -> None:
    """The queries as loaded and at rest: each pass its own labelled table, with its load average."""
    compaction = {
        "done": True,
        "waited_s": 300,
        "parts": 0,
        "raw_chunks": 0,
        "raw_points": 0,
        "free_bytes": 0,
    }
    disk = {
        "vm_bytes_per_sample": 0.4,
        "lossproof_store_bytes_per_sample": 1.7,
        "ratio_store": 4.2,
        "lossproof_store_loaded_bytes_per_sample": 25.0,
        "lossproof_log_bytes_per_sample": 3.7,
        "lossproof_compaction": compaction,
        "lossproof_store_main_file_bytes_per_sample": 1.6,
        "lossproof_store_chunk_data_bytes_per_sample": 0.5,
        "samples": 100,
        "lossproof_store_wal_bytes": 0,
    }
    conc = {
        "short_query": "m3",
        "short_alone_ms": 1.0,
        "long_query": "q",
        "short_during_long_ms": 2.0,
        "long_ms": 3,
    }
    q = {
        "series": 10,
        "hours": 1,
        "samples": 100,
        "as_loaded_load_average": [1.5, 1.0, 0.5],
        "queries": _rows(100.0, 300.0),
        "concurrency": conc,
        "disk": disk,
        "at_rest_load_average": [0.25, 1.0, 0.5],
        "queries_at_rest": _rows(80.0, 120.0),
        "at_rest_compaction_done": True,
        "all_agree": True,
    }
    text = "\n".join(summary_lines({"queries": q, "load_average": [1, 1, 1], "cores": 2}))
    loaded, rest = text.split("\nas loaded")[1].split("\nat rest")
    assert "compaction still at work (load average 1.5 at its start)" in loaded
    assert "3.00  yes" in loaded and "1.50" not in loaded
    assert "lossproof compaction done (load average 0.2 at its start)" in rest
    assert "1.50  yes" in rest and "3.00" not in rest.split("lossproof m3")[0]
    q["at_rest_compaction_done"] = False
    assert "lossproof compaction NOT done" in "\n".join(
        summary_lines({"queries": q, "load_average": [1] * 3, "cores": 2})
    )


def test_summary_says_when_the_kernel_packs_vcpus(tmp_path: Path) -> None:
    res: dict[str, Any] = {"load_average": [1, 1, 1], "cores": 2}
    assert "sched_vcpu_pack" not in summary_lines(res)[-1]
    assert "sched_vcpu_pack" not in summary_lines({**res, "vcpu_pack": 0})[-1]
    assert summary_lines({**res, "vcpu_pack": 15})[-1].endswith("fewer vCPUs (sched_vcpu_pack=15)")
    knob = tmp_path / "sched_vcpu_pack"
    assert _vcpu_pack(knob) is None  # no such setting: a mainline kernel
    knob.write_text("15\n")
    assert _vcpu_pack(knob) == 15
    knob.write_text("")
    assert _vcpu_pack(knob) is None


@pytest.mark.process
@pytest.mark.timeout(400)
def test_bench_compare_tiny(tmp_path: Path) -> None:
    require(Path(VM_BINARY).exists(), "victoria-metrics (Debian package)")
    require(shutil.which("wrk"), "wrk (Debian package)")
    argv = [sys.executable, "-m", "lossproof", "bench", "compare", "--work-dir", str(tmp_path)]
    argv += ["--duration", "2", "--series", "50", "--hours", "1", "--repeat", "2", "--steady", "2", "--json"]
    argv += ["--compact-wait", "0"]  # packing is due 5 minutes after the load: measured as loaded
    r = subprocess.run(argv, capture_output=True, text=True, timeout=380, env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.strip().splitlines()
    res = json.loads(out[-1])
    assert "load average" in out[-2]
    ing = res["ingest"]
    for name in ("vm", "lossproof"):
        t = ing[name]
        assert t["acked_per_s"] > 0 and t["stored_per_s"] > 0, t
        # a target faster than the pool runs past its end: repeats store nothing new, and are counted
        assert t["non_2xx"] == 0 and t["repeated_requests"] >= 0, t
    assert ing["ratio_acked"] > 0 and ing["ratio_stored"] > 0
    assert ing["steady"]["acked_per_s"] > 0 and ing["steady"]["lag_samples"]
    q = res["queries"]
    assert q["all_agree"] is True, q["queries"]
    assert len(q["queries"]) == len(q["queries_at_rest"]) == 11
    assert q["at_rest_compaction_done"] is q["disk"]["lossproof_compaction"]["done"]  # measured either way
    assert "as loaded: right after the load" in r.stdout and "at rest: vm force_flush" in r.stdout
    for name, row in itertools.chain(q["queries"].items(), q["queries_at_rest"].items()):
        assert row["vm_ms"] > 0, row
        if name in ("histogram_quantile_m5_24h", "topk_m4_1h", "subquery_m1_1h") and row.get("unsupported"):
            # refused by lossproof's evaluator today (issue #19): reported, timed for VM only
            assert "unsupported PromQL" in row["unsupported"] and row["lossproof_ms"] is None, row
            assert row["agree"] is None and f"{row['vm_ms']:,.1f}" in r.stdout
            continue
        assert row["lossproof_ms"] > 0 and row["agree"], row
    assert q["queries"]["rate_m1_1h"]["detail"].startswith("5 series")
    assert q["concurrency"]["short_alone_ms"] > 0
    d = q["disk"]
    assert d["samples"] == (50 + 10) * 240  # and one histogram of 10 buckets
    assert d["vm_bytes_per_sample"] > 0 and d["lossproof_store_bytes_per_sample"] > 0
    assert d["lossproof_store_loaded_bytes_per_sample"] > 0 and d["lossproof_compaction"]["waited_s"] < 30
    assert "lossproof compaction" in r.stdout
    assert "ingest vm:" in r.stderr and "ingest vm:" not in r.stdout  # progress goes to stderr
    assert not list(tmp_path.iterdir())  # the temp dir is gone
