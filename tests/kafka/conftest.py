from __future__ import annotations

from collections.abc import Iterator

import pytest

from lossproof.dev.kafka import DevCluster
from lptest.kafka import ensure_all_up, session_cluster


@pytest.fixture
def cluster() -> Iterator[DevCluster]:
    """The session's 3-node cluster; every node is running again after the test."""
    c = session_cluster()
    ensure_all_up(c)
    yield c
    ensure_all_up(c)
