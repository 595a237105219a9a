"""Reloading API keys while the process runs: on SIGHUP, when ``lossproof.toml`` changes, and when a
request presents a key this process does not know yet (so ``lossproof keys create`` followed at once
by a request works, with no restart and no race with a polling interval).

Only keys are taken from the reloaded file; every other setting needs a restart, as before. A file
that does not load keeps the keys in use and is logged once per change.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

from lossproof import config as config_mod
from lossproof.config import ConfigError
from lossproof.ingest.auth import KeyRing
from lossproof.obs.logging import get

log = get(__name__)

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
