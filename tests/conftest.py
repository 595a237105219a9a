from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pipeline import Pipeline, free_port


@pytest.fixture
def pipeline_factory(tmp_path: Path) -> Iterator[type[Pipeline]]:
    started: list[Pipeline] = []

    def make(name: str = "data") -> Pipeline:
        p = Pipeline(tmp_path / name, free_port(), "lp_test_" + secrets.token_hex(16))
        started.append(p)
        return p

    yield make  # type: ignore[misc]
    for p in started:
        if p.proc is not None and p.proc.poll() is None:
            p.kill9()


@pytest.fixture
def pipeline(pipeline_factory) -> Pipeline:  # type: ignore[no-untyped-def]
    p: Pipeline = pipeline_factory()
    p.start()
    return p
