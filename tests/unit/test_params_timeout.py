"""params.check_timeout: the ``timeout`` of /api/v1/query and /api/v1/query_range is refused (400)
where Prometheus 2.42's API refuses it (the table: its answers to ``?query=1&timeout=...``; a 503
there, a timeout at once for a zero, negative or NaN one, is a query run here)."""

from __future__ import annotations

import pytest

from lossproof.query import params

PROMETHEUS = {
    "abc": 400,
    "1m": 200,
    "30s1m": 400,  # model.ParseDuration takes the units in order only
    "5": 200,
    "-5": 503,
    "1e400": 400,
    "NaN": 503,
    "Inf": 400,  # overflows a time.Duration
    "1e10": 400,
    "0": 503,
    "0x1p3": 200,  # Go's ParseFloat: a hex float
    "1.5s": 400,
    "99999999999y": 400,
    " 5": 400,
    "9223372036": 200,
    "1h0m": 200,
    "1_0": 200,
    "infinity": 400,
}


@pytest.mark.parametrize(("raw", "status"), PROMETHEUS.items())
def test_refused_where_prometheus_refuses_it(raw: str, status: int) -> None:
    if status == 400:
        with pytest.raises(params.ParamError, match="'timeout'"):
            params.check_timeout(raw)
    else:
        params.check_timeout(raw)
