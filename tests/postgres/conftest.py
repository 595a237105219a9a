"""Fixtures for the PostgreSQL store tests: a throwaway cluster per test session (shared with the
store contract suite), a fresh schema per test, and a private cluster for tests that stop it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from lptest import require
from lptest.pg_cluster import PgCluster, available, new_cluster, shared_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> PgCluster:
    require(available(), "PostgreSQL")
    return shared_cluster()


@pytest.fixture(scope="session")
def pg_dsn(pg_cluster: PgCluster) -> str:
    return pg_cluster.dsn()


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A schema name no other test uses; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def own_cluster() -> Iterator[PgCluster]:
    """A cluster of this test's own, for tests that stop or restart it."""
    require(available(), "PostgreSQL")
    c = new_cluster()
    try:
        yield c
    finally:
        c.destroy()
