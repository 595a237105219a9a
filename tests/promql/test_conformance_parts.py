"""The conformance harness' parts, in this process: the suite's template expansion, the verdicts, the
data set's staleness and counters (tests/promql/test_conformance.py runs the whole)."""

from __future__ import annotations

import itertools
import math
import struct
from pathlib import Path

import promql_parser
import pytest

from lptest.promqlconf import compare, data, queries
from lptest.promqlconf.compare import ERROR, PASS, UNSUPPORTED, WRONG


def test_the_suite_expands_to_its_549_queries_in_its_order() -> None:
    qs = queries.load(queries.COMPLIANCE_FILE, "compliance")
    assert len(qs) == 549
    texts = [q.text for q in qs]
    assert len(set(texts)) == len(texts)
    assert not [t for t in texts if "{{" in t or "}}" in t]
    # the first variant argument varies slowest, as the suite's getVariants recursion makes them
    i = texts.index("sum_over_time(demo_memory_usage_bytes[1s])")
    assert texts[i : i + 7] == [
        f"sum_over_time(demo_memory_usage_bytes[{r}])" for r in ("1s", "15s", "1m", "5m", "15m", "1h")
    ] + ["avg_over_time(demo_memory_usage_bytes[1s])"]
    assert sum(1 for q in qs if q.should_fail) == 5
    assert "histogram_quantile(0.99, rate(demo_api_request_duration_seconds_bucket[1m]))" in texts


def test_expansion_refuses_unknown_or_unused_variants() -> None:
    with pytest.raises(queries.QueryFileError, match="unknown variant 'nope'"):
        queries.expand("rate(x[{{.nope}}])", ["nope"], {})
    with pytest.raises(queries.QueryFileError, match="uses"):
        queries.expand("rate(x[{{.range}}])", [], {"range": ["1m"]})
    assert queries.expand("{{ .op }}(x)", ["op"], {"op": ["a", "b"]}) == ["a(x)", "b(x)"]


def test_every_query_parses_and_the_passing_list_names_only_known_queries() -> None:
    all_q = queries.all_queries()
    mixin = [q for q in all_q if q.source == "mixin"]
    assert 20 <= len(mixin) <= 60
    texts = {q.text for q in all_q}
    for q in all_q:
        if q.should_fail or q.text.startswith("holt_winters"):  # the parser knows 3.x's names only
            continue
        promql_parser.parse(q.text)
    unknown = queries.load_passing() - texts
    assert not unknown, f"passing.txt lists queries that are in no query file: {sorted(unknown)[:5]}"


def test_passing_list_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "passing.txt"
    queries.write_passing(["up", 'sum by (job) (up{job="x"})'], path)
    assert queries.load_passing(path) == {"up", 'sum by (job) (up{job="x"})'}
    assert queries.load_passing(tmp_path / "none.txt") == set()


def _vector(*series: tuple[dict[str, str], float, str]) -> dict[str, object]:
    return {"resultType": "vector", "result": [{"metric": m, "value": [t, v]} for m, t, v in series]}


def _ok(d: dict[str, object]) -> compare.Answer:
    return 200, {"status": "success", "data": d}


def test_values_compare_with_nan_inf_and_a_relative_tolerance() -> None:
    assert compare.same_value("NaN", "NaN")
    assert compare.same_value("+Inf", "+Inf") and compare.same_value("-Inf", "-Inf")
    assert not compare.same_value("+Inf", "-Inf")
    assert not compare.same_value("NaN", "0")
    assert compare.same_value("1e6", "1000000.0000001")  # 1e-13 relative
    assert not compare.same_value("1e6", "1000000.01")  # 1e-8 relative
    assert not compare.same_value("1e-6", "1.1e-6")
    assert compare.same_value("0", "1e-17")  # a rounding residue around 0


def test_verdicts() -> None:
    a = {"job": "x"}
    ref = _ok(_vector((a, 10, "1.5")))
    assert compare.verdict(ref, _ok(_vector((a, 10, "1.5"))))[0] == PASS
    assert compare.verdict(ref, _ok(_vector((a, 10, "1.6")))) == (
        WRONG,
        '{job="x"} at t=10.000: 1.6, Prometheus 1.5',
    )
    assert compare.verdict(ref, _ok(_vector((a, 11, "1.5"))))[0] == WRONG  # the sample's time counts
    v, detail = compare.verdict(ref, _ok(_vector((a, 10, "1.5"), ({"job": "y"}, 10, "2"))))
    assert v == WRONG and 'extra {job="y"}' in detail
    v, detail = compare.verdict(ref, _ok(_vector((a, 10, "1.5"), (a, 10, "1.5"))))
    assert v == WRONG and "twice" in detail
    assert compare.verdict(ref, _ok({"resultType": "matrix", "result": []}))[0] == WRONG
    unsupported = (
        400,
        {"status": "error", "error": "unsupported PromQL: topk is not supported by lossproof"},
    )
    assert compare.verdict(ref, unsupported)[0] == UNSUPPORTED
    assert compare.verdict(ref, (400, {"status": "error", "error": "parse error"}))[0] == ERROR
    assert compare.verdict(ref, (500, {"error": "boom"}))[0] == ERROR
    assert compare.verdict(ref, (0, {"error": "ReadTimeoutError"}))[0] == ERROR
    refused = (422, {"status": "error", "error": "vector cannot contain metrics with the same labelset"})
    assert compare.verdict(refused, (422, {"status": "error", "error": "duplicate"}))[0] == PASS
    assert compare.verdict(refused, ref)[0] == WRONG
    scalar = _ok({"resultType": "scalar", "result": [10, "NaN"]})
    assert compare.verdict(scalar, scalar)[0] == PASS
    assert compare.verdict(scalar, ref)[0] == WRONG


def test_matrices_compare_point_by_point_and_order_only_under_sort() -> None:
    def matrix(points: list[list[object]]) -> compare.Answer:
        return _ok({"resultType": "matrix", "result": [{"metric": {"a": "1"}, "values": points}]})

    assert compare.verdict(matrix([[1, "1"], [2, "+Inf"]]), matrix([[1, "1"], [2, "+Inf"]]))[0] == PASS
    v, detail = compare.verdict(matrix([[1, "1"], [2, "2"]]), matrix([[1, "1"]]))
    assert v == WRONG and "missing t=2.000" in detail
    x, y = {"i": "x"}, {"i": "y"}
    ref = _ok(_vector((x, 1, "2"), (y, 1, "1")))
    swapped = _ok(_vector((y, 1, "1"), (x, 1, "2")))
    assert compare.verdict(ref, swapped, keep_order=False)[0] == PASS
    assert compare.verdict(ref, swapped, keep_order=True)[0] == WRONG
    assert compare.ordered("sort_desc(sum by (x) (y))") and not compare.ordered("topk(3, x)")


@pytest.fixture(scope="module")
def ds() -> data.DataSet:
    return data.build()


def _series(ds: data.DataSet, name: str, **labels: str) -> list[tuple[int, float]]:
    want = {"__name__": name, **labels}
    (pts,) = [p for k, p in ds.series.items() if dict(k) == want]
    return pts


def test_stale_markers_are_prometheus_bits_and_ordinary_nan_is_not(ds: data.DataSet) -> None:
    assert struct.pack("<d", data.STALE_NAN) == struct.pack("<Q", 0x7FF0000000000002)
    assert data.is_stale(data.STALE_NAN) and not data.is_stale(math.nan)
    special = _series(ds, "demo_special_value", job="demo", instance=data.DEMO[1], case="mixed")
    values = [v for _, v in special]
    assert any(math.isnan(v) and not data.is_stale(v) for v in values)
    assert math.inf in values and -math.inf in values
    assert not any(data.is_stale(v) for v in values)


def test_series_are_in_time_order_on_each_targets_own_offset(ds: data.DataSet) -> None:
    for pts in ds.series.values():
        times = [t for t, _ in pts]
        assert times == sorted(set(times))
        assert all(t % 1000 != 0 for t in times)  # no range boundary of the queries falls on a sample


def test_an_intermittent_series_goes_stale_at_the_first_scrape_of_each_odd_minute(ds: data.DataSet) -> None:
    pts = _series(ds, "demo_intermittent_metric", job="demo", instance=data.DEMO[1])
    for (t0, v0), (t1, v1) in itertools.pairwise(pts):
        if data.is_stale(v1):
            assert (t1 // 60_000) % 2 == 1 and (t0 // 60_000) % 2 == 0 and v0 == 1.0
        else:
            assert (t1 // 60_000) % 2 == 0
    assert sum(1 for _, v in pts if data.is_stale(v)) == len(range(data.START_MS, data.STOP_MS, 120_000))


def test_a_failed_scrape_writes_up_0_and_marks_the_targets_series_stale(ds: data.DataSet) -> None:
    inst = data.NODES[2]
    gone = data.START_MS + data.index_at(4 * 60_000) * data.SCRAPE_MS
    up = _series(ds, "up", job="node", instance=inst)
    assert all(v == (0.0 if t >= gone else 1.0) for t, v in up)
    load = _series(ds, "node_load1", job="node", instance=inst)
    assert data.is_stale(load[-1][1]) and load[-1][0] >= gone and load[-2][0] < gone
    # node-b comes back: stale once, then ordinary samples again
    back = _series(ds, "node_load1", job="node", instance=data.NODES[1])
    stale = [i for i, (_, v) in enumerate(back) if data.is_stale(v)]
    assert len(stale) == 1 and 0 < stale[0] < len(back) - 1


def test_counters_reset_where_the_process_restarts(ds: data.DataSet) -> None:
    def drops(name: str, inst: str, **labels: str) -> int:
        vals = [v for _, v in _series(ds, name, job="demo", instance=inst, **labels) if not data.is_stale(v)]
        return sum(1 for a, b in itertools.pairwise(vals) if b < a)

    assert drops("demo_cpu_usage_seconds_total", data.DEMO[0], mode="user") == 0
    assert drops("demo_cpu_usage_seconds_total", data.DEMO[1], mode="user") == 1
    assert drops("demo_items_shipped_total", data.DEMO[2]) == 1
    labels = {"method": "GET", "path": "/api/foo", "status": "200"}
    assert drops("demo_api_request_duration_seconds_bucket", data.DEMO[1], le="+Inf", **labels) == 1


def test_histogram_buckets_are_cumulative(ds: data.DataSet) -> None:
    labels = {"job": "demo", "instance": data.DEMO[0], "method": "POST", "path": "/api/bar", "status": "200"}
    columns = [
        _series(ds, "demo_api_request_duration_seconds_bucket", le=le, **labels) for le in data.API_BUCKETS
    ]
    for row in zip(*columns, strict=True):
        values = [v for _, v in row]
        assert values == sorted(values)
    count = _series(ds, "demo_api_request_duration_seconds_count", **labels)
    assert [v for _, v in count] == [v for _, v in columns[-1]]
