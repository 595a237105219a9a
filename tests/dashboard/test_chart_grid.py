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
