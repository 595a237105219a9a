"""Pick the store implementation the configuration names."""

from __future__ import annotations

from lossproof.config import Config
from lossproof.store.base import Store


def open_store(cfg: Config, readonly: bool = False) -> Store:
    from lossproof.store.sqlite import SqliteStore

    return SqliteStore(cfg.store_path, readonly=readonly)
