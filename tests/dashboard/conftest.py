"""One real pipeline (``lossproof up``) with known data, shared by the dashboard tests: tenant
``default`` holds the data of ``dash_data.py``; tenant ``other`` one agent of its own."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from lossproof import config as config_mod
from lptest import dash as dash_data
from lptest.dash import Dash
from lptest.pipeline import Pipeline, free_port


@pytest.fixture(scope="session")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    base = tmp_path_factory.mktemp("dash")
    p = Pipeline(base / "data", free_port(), "lp_test_" + secrets.token_hex(16))
    config_mod.init_data_dir(p.data_dir, p.key, p.port)
    other = p.add_key("other")
    p.start()
    try:
        t0 = dash_data.load(p)
        dash_data.post(
            p, {"agent": "other-01", "reports": [dash_data.report("other-01", 1, t0, base=998.0)]}, key=other
        )
        _wait_other(p, other)
        yield Dash(p, other, t0)
    finally:
        if p.proc is not None and p.proc.poll() is None:
            p.kill9()


def _wait_other(p: Pipeline, key: str) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, body = p.get("/v1/agents", key=key)
        if status == 200 and body["agents"] and body["agents"][0]["stored"] == 1:
            return
        time.sleep(0.1)
    raise AssertionError("tenant other's report was never stored")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (kept after the run): $LOSSPROOF_ARTIFACTS/dashboard or
    /tmp/lossproof-artifacts/dashboard."""
    d = Path(os.environ.get("LOSSPROOF_ARTIFACTS", "/tmp/lossproof-artifacts")) / "dashboard"
    d.mkdir(parents=True, exist_ok=True)
    return d
