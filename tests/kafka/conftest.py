from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kafka_support import ensure_all_up, session_cluster

from lossproof.dev.kafka import DevCluster


@pytest.fixture
def cluster() -> Iterator[DevCluster]:
    """The session's 3-node cluster; every node is running again after the test."""
    c = session_cluster()
    ensure_all_up(c)
    yield c
    ensure_all_up(c)
