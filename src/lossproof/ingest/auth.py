"""API key authentication: ``Authorization: Bearer <key>`` to a tenant."""

from __future__ import annotations

from aiohttp import web

from lossproof.config import Config, hash_key


class KeyRing:
    def __init__(self, cfg: Config) -> None:
        # Lookup by hash of the presented key: no key is ever kept in memory in the clear.
        self._by_hash = cfg.key_index()

    def tenant(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        return self._by_hash.get(hash_key(key.strip()))
