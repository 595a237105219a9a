"""histogram_quantile reads a bucket's ``le`` as Prometheus does, with Go's strconv.ParseFloat: a bound
that does not parse (surrounding blanks, a finite value out of range, a sign on nan, a hex float
without its exponent) leaves the bucket out; a hex float is a bound. The answers are Prometheus
2.42's (promtool test rules, the same series and query). (A bound of "nan" parses in both; what
histogram_quantile makes of a NaN bound is another matter: Prometheus 2.42 answers NaN here,
lossproof 1.)"""

from __future__ import annotations

import math

import pytest

from lossproof.query import promql
from lossproof.query.healthhistory import Sample
from lossproof.query.samples import hist_quantile
from lossproof.store.base import Point, WriteBatch
from lossproof.store.sqlite import SqliteStore

T0 = 1_700_000_000_000
BUCKETS = {"0.5": 1.0, "1": 3.0, "2": 4.0, "+Inf": 4.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SqliteStore:
    s = SqliteStore(tmp_path_factory.mktemp("histogram-le") / "store.db")
    pts = [("t", Point("h_bucket", {"le": le}, T0, v)) for le, v in BUCKETS.items()]
    s.write_batch(WriteBatch(samples=pts, now_ms=T0))
    return s


@pytest.mark.parametrize(
    ("le", "prometheus"),
    [
        ("1", 0.75),
        (" 1", 1.0),  # float() strips the blank
        ("1 ", 1.0),
        ("1_", 1.0),
        ("0x1p-1", 0.25),  # a hex float, 0.5: one bucket with the 0.5 one
        ("0x1p0", 0.75),
        ("0x1.8p0", 1.0),
        ("0x1", 1.0),  # no exponent: no hex float
        ("1e400", 1.0),  # out of range (float(): an +Inf bucket)
        ("-1e400", 1.0),
        ("1e-400", 0.0),  # an underflow is 0, no error
        ("INF", 1.75),
        ("+nan", 1.0),  # no sign on nan in Go
        ("1.0e0", 0.75),
    ],
)
def test_bounds_parse_as_prometheus_parses_them(store: SqliteStore, le: str, prometheus: float) -> None:
    query = f'histogram_quantile(0.5, label_replace(h_bucket, "le", "{le}", "le", "1"))'
    v = promql.Evaluator(store, "t", promql.Grid(T0, T0, 1000)).eval(promql.parse(query))
    assert isinstance(v, promql.Vector)
    [(labels, [got])] = v.rows()
    assert labels == {}
    assert got is not None
    assert (math.isnan(got) and math.isnan(prometheus)) or got == prometheus, got


def test_the_health_pages_quantile_reads_bounds_the_same_way() -> None:
    """samples.hist_quantile (the pipeline's own histograms) took float(): a bound that is no Python
    float failed the page, one that is no Go float was a bucket; both are now as above."""
    before: Sample = {}
    after: Sample = {
        ("h_bucket", (("le", "0.5"),)): 1.0,
        ("h_bucket", (("le", "0x1p0"),)): 3.0,  # 1.0
        ("h_bucket", (("le", " 2"),)): 4.0,  # left out
        ("h_bucket", (("le", "+Inf"),)): 4.0,
    }
    assert hist_quantile(before, after, "h", 0.5) == 0.75
