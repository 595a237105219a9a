"""API key authentication: the key of a tenant, in any form the clients we speak send it.

``Authorization: Bearer <key>`` (native, OTLP, remote write ``authorization``), ``Token <key>``
(InfluxDB 2.x; ``Token user:<key>`` too), ``Basic`` (the password is the key, or the user name when
the password is empty: remote write ``basic_auth``, InfluxDB 1.x clients), and, only where a
handler allows it (InfluxDB ``/write``), the query parameters ``p`` (with ``u``) and ``token``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from lossproof.config import Config, hash_key
from lossproof.httputil import ApiError
from lossproof.protocol_http import presented_key

TENANT_HEADER = "X-Lossproof-Tenant"
UNAUTHORIZED = "missing or unknown API key (Authorization: Bearer <key>)"


@dataclass(frozen=True)
class _Keys:
    by_hash: dict[str, str]  # key hash -> tenant
    replay: frozenset[str]
    operator: frozenset[str]
    tenants: frozenset[str]

    @classmethod
    def of(cls, cfg: Config) -> _Keys:
        return cls(
            cfg.key_index(),
            frozenset(cfg.replay.key_hashes),
            frozenset(cfg.operator.key_hashes),
            frozenset(cfg.tenants),
        )


class KeyRing:
    """The keys a process accepts. :meth:`load` swaps them all at once (a reload of the config);
    ``refresh``, if given, is called when a presented key is unknown and returns whether it loaded
    newer keys, so a key added a moment ago works on its first request."""

    def __init__(self, cfg: Config, refresh: Callable[[], bool] | None = None) -> None:
        # Lookup by hash of the presented key: no key is ever kept in memory in the clear.
        self._keys = _Keys.of(cfg)
        self.refresh = refresh

    def load(self, cfg: Config) -> None:
        self._keys = _Keys.of(cfg)  # one assignment: a request sees the old keys or the new, never a mix

    @property
    def tenants(self) -> frozenset[str]:
        return self._keys.tenants

    @property
    def operator_hashes(self) -> frozenset[str]:
        return self._keys.operator

    def _known(self, h: str | None) -> _Keys:
        """The current keys, reloaded first if ``h`` is in none of them and the config changed."""
        keys = self._keys
        if h is None or self.refresh is None:
            return keys
        if h in keys.by_hash or h in keys.replay or h in keys.operator:
            return keys
        return self._keys if self.refresh() else keys

    def _hash(self, request: web.Request, query: bool = False) -> str | None:
        key = presented_key(request, query)
        return None if not key else hash_key(key)  # presented_key: only keys that encode as UTF-8

    def tenant(self, request: web.Request) -> str | None:
        """The tenant of a tenant key, for reads and writes; None for anything else."""
        h = self._hash(request)
        return None if h is None else self._known(h).by_hash.get(h)

    def operator(self, request: web.Request) -> bool:
        """Whether the request presents an operator key (pipeline-wide numbers, no tenant's data)."""
        h = self._hash(request)
        return h is not None and h in self._known(h).operator

    def is_replay(self, request: web.Request) -> bool:
        """Whether the request comes with a replay key (``lossproof replay`` draining a fallback)."""
        h = self._hash(request, False)
        return h is not None and h in self._known(h).replay

    def writer(self, request: web.Request, query: bool = False) -> str:
        """The tenant to write as: a tenant key's own, or, for a replay key, the one named by
        ``X-Lossproof-Tenant``. Raises the 401/403 to answer otherwise. ``query``: a key may also
        come in the query string (``p=`` or ``token=``, as InfluxDB 1.x clients send it)."""
        h = self._hash(request, query)
        keys = self._known(h)
        named = request.headers.get(TENANT_HEADER)
        if h is not None and h in keys.replay:
            if named is None or named not in keys.tenants:
                raise ApiError(
                    401, f"a replay key needs {TENANT_HEADER} naming a known tenant", "unauthorized"
                )
            return named
        tenant = None if h is None else keys.by_hash.get(h)
        if tenant is None:
            raise ApiError(401, UNAUTHORIZED, "unauthorized", {"WWW-Authenticate": "Bearer"})
        if named is not None and named != tenant:
            raise ApiError(403, f"this key cannot write as tenant {named!r}", "forbidden")
        return tenant
