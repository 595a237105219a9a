"""Pick the store implementation the configuration names."""

from __future__ import annotations

from lossproof.config import Config
from lossproof.store.base import Store


def open_store(cfg: Config, readonly: bool = False, compactor: bool = False) -> Store:
    """Open the configured store. Start-up failures (bad DSN, wrong password, missing database,
    server down, schema too new or not migrated) raise :class:`~lossproof.store.base.StoreError`
    with a one-line message. ``compactor``: the handle of the worker's compactor process (the
    embedded store gives it a small page cache, as it reads each part and chunk once, and commits
    without fsync: see ``SqliteCore._connect``)."""
    if cfg.store.backend == "postgres":
        from lossproof.store.postgres import PostgresStore

        s = cfg.store
        return PostgresStore(
            s.dsn,
            readonly=readonly,
            schema=s.pg_schema,
            pool_size=s.pool_size,
            retention_days=s.retention_days,
            connect_timeout=s.connect_timeout_seconds,
        )
    from lossproof.store.embedded.core import CACHE_KIB, COMPACTOR_CACHE_KIB
    from lossproof.store.sqlite import SqliteStore

    cache_kib = COMPACTOR_CACHE_KIB if compactor else CACHE_KIB
    return SqliteStore(cfg.store_path, readonly=readonly, cache_kib=cache_kib, sync_commits=not compactor)
