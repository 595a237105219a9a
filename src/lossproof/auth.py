"""Keys and tenants, for every process that takes requests (ingest, query, fallback receiver).

API key authentication: the key of a tenant, in any form the clients we speak send it.

``Authorization: Bearer <key>`` (native, OTLP, remote write ``authorization``), ``Token <key>``
(InfluxDB 2.x; ``Token user:<key>`` too), ``Basic`` (the password is the key, or the user name when
the password is empty: remote write ``basic_auth``, InfluxDB 1.x clients), and, only where a
handler allows it (InfluxDB ``/write``), the query parameters ``p`` (with ``u``) and ``token``.

The tenant a request writes as follows one rule everywhere (:func:`named_tenant`): a tenant key
writes as its own tenant, and ``X-Lossproof-Tenant``, when present, must name that tenant (403
otherwise). A replay key (``lossproof replay``) writes as the tenant the header names.

:class:`KeyReloader` reloads the keys while the process runs: on SIGHUP, when ``lossproof.toml``
changes, and when a request presents a key this process does not know yet (so ``lossproof keys
create`` followed at once by a request works, with no restart and no race with a polling interval).
Only keys are taken from the reloaded file; every other setting needs a restart. A file that does not
load keeps the keys in use and is logged once per change.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from lossproof import config as config_mod
from lossproof.config import Config, ConfigError, hash_key
from lossproof.credentials import presented_key
from lossproof.httputil import ApiError
from lossproof.obs.logging import get

log = get(__name__)

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
        return named_tenant(None if h is None else keys.by_hash.get(h), named)


def named_tenant(tenant: str | None, named: str | None) -> str:
    """The tenant a tenant key (of ``tenant``; None: no known key) writes as, given the
    ``X-Lossproof-Tenant`` header's value ``named``; raises the 401 or 403 to answer. The one rule of
    the ingest API and the fallback receiver."""
    if tenant is None:
        raise ApiError(401, UNAUTHORIZED, "unauthorized", {"WWW-Authenticate": "Bearer"})
    if named is not None and named != tenant:
        raise ApiError(403, f"this key cannot write as tenant {named!r}", "forbidden")
    return tenant


POLL_SECONDS = 1.0

_Signature = tuple[int, int, int] | None


def _signature(path: Path) -> _Signature:
    # An atomic save replaces the file (a new inode); an in-place edit changes mtime or size.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class KeyReloader:
    def __init__(self, data_dir: Path, keys: KeyRing, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = env  # None: the process's environment, as at start
        self.keys = keys
        self.path = data_dir / config_mod.CONFIG_NAME
        self._seen = _signature(self.path)
        keys.refresh = self.on_unknown_key

    def check(self, force: bool = False) -> bool:
        """Reload if the file changed (or always, with ``force``); whether new keys were loaded."""
        sig = _signature(self.path)
        if not force and sig == self._seen:
            return False
        self._seen = sig
        try:
            cfg = config_mod.load(self.data_dir, self.env)
        except ConfigError as e:
            log.error("keys.reload_failed", error=str(e), kept="the keys in use")
            return False
        self.keys.load(cfg)
        n = sum(len(t.key_hashes) for t in cfg.tenants.values())
        log.info("keys.reloaded", tenants=len(cfg.tenants), tenant_keys=n)
        return True

    def on_unknown_key(self) -> bool:
        # One stat (about a microsecond) per request with an unknown key: cheap beside the request
        # itself, and it closes the window between `keys create` and the next poll.
        return self.check()

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            self.check()
