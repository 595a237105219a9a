from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lptest.fallback import Fallback, kill_quietly


@pytest.fixture
def fallback_factory(tmp_path: Path) -> Iterator[Callable[..., Fallback]]:
    started: list[Fallback] = []

    def make(name: str = "fb", key: str | None = None, extra_args: list[str] | None = None) -> Fallback:
        fb = Fallback(tmp_path / name, key or "lp_test_" + secrets.token_hex(16), extra_args=extra_args or [])
        started.append(fb)
        return fb

    yield make
    for fb in started:
        kill_quietly(fb.proc)


@pytest.fixture
def fallback(fallback_factory: Callable[..., Fallback]) -> Fallback:
    fb = fallback_factory()
    fb.start()
    return fb
