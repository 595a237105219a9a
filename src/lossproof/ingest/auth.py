"""API key authentication: ``Authorization: Bearer <key>`` to a tenant."""

from __future__ import annotations

from aiohttp import web

from lossproof.config import Config, hash_key
from lossproof.ingest.http import ApiError

TENANT_HEADER = "X-Lossproof-Tenant"
UNAUTHORIZED = "missing or unknown API key (Authorization: Bearer <key>)"


class KeyRing:
    def __init__(self, cfg: Config) -> None:
        # Lookup by hash of the presented key: no key is ever kept in memory in the clear.
        self._by_hash = cfg.key_index()
        self._replay = set(cfg.replay.key_hashes)
        self._tenants = set(cfg.tenants)

    def _hash(self, request: web.Request) -> str | None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        return hash_key(key.strip())

    def tenant(self, request: web.Request) -> str | None:
        """The tenant of a tenant key, for reads and writes; None for anything else."""
        h = self._hash(request)
        return None if h is None else self._by_hash.get(h)

    def writer(self, request: web.Request) -> str:
        """The tenant to write as: a tenant key's own, or, for a replay key, the one named by
        ``X-Lossproof-Tenant``. Raises the 401/403 to answer otherwise."""
        h = self._hash(request)
        named = request.headers.get(TENANT_HEADER)
        if h is not None and h in self._replay:
            if named is None or named not in self._tenants:
                raise ApiError(
                    401, f"a replay key needs {TENANT_HEADER} naming a known tenant", "unauthorized"
                )
            return named
        tenant = None if h is None else self._by_hash.get(h)
        if tenant is None:
            raise ApiError(401, UNAUTHORIZED, "unauthorized", {"WWW-Authenticate": "Bearer"})
        if named is not None and named != tenant:
            raise ApiError(403, f"this key cannot write as tenant {named!r}", "forbidden")
        return tenant
