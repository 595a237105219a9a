"""Review s9-revA: RwBlock.plan with a max_points near 2**64 (usize) and a small max_bytes: the
old Python loop gave the right chunks; plan's `i + max_points - n_out` wraps."""

from __future__ import annotations

from lossproof.points import each_series
from lossproof.protocol import promrw


def test_plan_does_not_wrap_with_a_huge_max_points() -> None:
    req = promrw.WriteRequest()
    for n in range(3):
        ts = req.timeseries.add()
        lb = ts.labels.add()
        lb.name, lb.value = "__name__", f"m{n}"
        for t in range(3):
            s = ts.samples.add()
            s.timestamp, s.value = t + 1, 1.0
    body = req.SerializeToString()
    chunks = list(promrw.iter_decode(body, promrw.V1, 2**64 - 1, 1))
    got = [(s.metric, list(s.t)) for c in chunks for s in each_series(c.series)]
    assert got == [(f"m{n}", [1, 2, 3]) for n in range(3)]
