"""The chart's grid ends at `to`: the newest point (sent a moment ago) is on the chart whatever the
width, and the grid still starts at or before `from`."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from lossproof.store.base import Point, WriteBatch
from lossproof.store.factory import open_store
from lptest.inproc import InProcess

TO = 1_796_423_859_494


@pytest.fixture
def p(tmp_path: Path) -> Iterator[InProcess]:
    pl = InProcess(tmp_path / "data", "lp_test_" + secrets.token_hex(16))
    pl.start(worker=False)
    store = open_store(pl.config())
    try:
        store.write_batch(WriteBatch(samples=[("default", Point("m", {}, TO - 1_200, 1.5))], now_ms=TO))
    finally:
        store.close()
    yield pl
    pl.stop()


@pytest.mark.parametrize("width", [1046, 1000, 997, 100, 10])
def test_the_newest_point_is_on_the_chart(p: InProcess, width: int) -> None:
    frm = TO - 3_600_000
    status, body = p.get(f"/ui/api/chart?match=m&from={frm}&to={TO}&width={width}")
    assert status == 200, body
    assert body["start"] <= frm and body["start"] + (body["n"] - 1) * body["step"] == TO
    (s,) = body["series"]
    assert s["values"][-1] == 1.5 and len(s["values"]) == body["n"]


def test_values_hold_holes_and_non_finite_values(tmp_path: Path) -> None:
    """Per step: the value, None where the step has no point, NaN and the infinities as text (JSON
    has no number for them)."""
    pl = InProcess(tmp_path / "data", "lp_test_" + secrets.token_hex(16))
    pl.start(worker=False)
    try:
        store = open_store(pl.config())
        vals = {0: 1.5, 1: float("nan"), 3: float("inf"), 4: float("-inf"), 6: -0.25}
        try:
            pts = [("default", Point("m", {}, TO - 60_000 * (9 - k), v)) for k, v in vals.items()]
            store.write_batch(WriteBatch(samples=pts, now_ms=TO))
        finally:
            store.close()
        status, body = pl.get(f"/ui/api/chart?match=m&from={TO - 10 * 60_000}&to={TO}&width=10")
        assert status == 200, body
        assert body["step"] == 60_000 and body["n"] == 11
        (s,) = body["series"]
        assert s["values"] == [None, 1.5, "NaN", None, "+Inf", "-Inf", None, -0.25, None, None, None]
    finally:
        pl.stop()
