"""API key authentication: the key of a tenant, in any form the clients we speak send it.

``Authorization: Bearer <key>`` (native, OTLP, remote write ``authorization``), ``Token <key>``
(InfluxDB 2.x; ``Token user:<key>`` too), ``Basic`` (the password is the key, or the user name when
the password is empty: remote write ``basic_auth``, InfluxDB 1.x clients), and, only where a
handler allows it (InfluxDB ``/write``), the query parameters ``p`` (with ``u``) and ``token``.
"""

from __future__ import annotations

from aiohttp import web

from lossproof.config import Config, hash_key
from lossproof.httputil import ApiError
from lossproof.protocol_http import presented_key

TENANT_HEADER = "X-Lossproof-Tenant"
UNAUTHORIZED = "missing or unknown API key (Authorization: Bearer <key>)"


class KeyRing:
    def __init__(self, cfg: Config) -> None:
        # Lookup by hash of the presented key: no key is ever kept in memory in the clear.
        self._by_hash = cfg.key_index()
        self._replay = set(cfg.replay.key_hashes)
        self._operator = set(cfg.operator.key_hashes)
        self._tenants = set(cfg.tenants)

    def _hash(self, request: web.Request, query: bool = False) -> str | None:
        key = presented_key(request, query)
        return None if not key else hash_key(key)  # presented_key: only keys that encode as UTF-8

    def tenant(self, request: web.Request) -> str | None:
        """The tenant of a tenant key, for reads and writes; None for anything else."""
        h = self._hash(request)
        return None if h is None else self._by_hash.get(h)

    def operator(self, request: web.Request) -> bool:
        """Whether the request presents an operator key (pipeline-wide numbers, no tenant's data)."""
        h = self._hash(request)
        return h is not None and h in self._operator

    def is_replay(self, request: web.Request) -> bool:
        """Whether the request comes with a replay key (``lossproof replay`` draining a fallback)."""
        return self._hash(request, False) in self._replay

    def writer(self, request: web.Request, query: bool = False) -> str:
        """The tenant to write as: a tenant key's own, or, for a replay key, the one named by
        ``X-Lossproof-Tenant``. Raises the 401/403 to answer otherwise. ``query``: a key may also
        come in the query string (``p=`` or ``token=``, as InfluxDB 1.x clients send it)."""
        h = self._hash(request, query)
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
