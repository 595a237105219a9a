"""The store tests' shared fixture: a fresh store of each kind (``lptest.store_backends``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lptest.store_backends import BACKENDS, StoreBackend


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    """Each store (embedded, PostgreSQL) in turn, closed after the test. A module may define its own."""
    b: StoreBackend = BACKENDS[request.param](tmp_path)
    yield b
    b.close_all()
