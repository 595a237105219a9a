"""The real pipeline in this process: the ingest and query app built by ``build_app`` on a real socket,
the real embedded log and store in a temporary directory, and a real worker on a thread.

Nothing of lossproof's is replaced: this is ``lossproof up`` without the two child processes, so a test
of what the API answers (bad input, hardening, tenant scoping) starts in milliseconds instead of a
second. Tests that kill processes, cut power or restart use :class:`lptest.pipeline.Pipeline`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import threading
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from lossproof import config as config_mod
from lossproof.auth import KeyReloader
from lossproof.config import Config
from lossproof.faults import Faults, write_faults
from lossproof.log.factory import open_reader, open_writer
from lossproof.obs.logging import setup
from lossproof.server import KEYS, build_app, listen
from lossproof.store.access import StoreAccess
from lossproof.store.factory import open_store
from lossproof.worker.loop import Worker
from lptest.pipeline import Endpoint, with_operator_key

# What `Pipeline.start` sets for `lossproof up`: tests check replay requests promptly.
ENV = {"LOSSPROOF_LEDGER_REPLAY_GRACE_SECONDS": "1"}


class InProcess(Endpoint):
    def __init__(
        self, data_dir: Path, key: str, env: dict[str, str] | None = None, faults: bool = False
    ) -> None:
        """``faults``: the embedded log takes its fault hooks from :attr:`faults_file` (see
        :meth:`faults`), handed to it as an object: the test process's environment stays untouched."""
        self.data_dir = data_dir
        self.faults_file: Path | None = data_dir.parent / f"{data_dir.name}-faults.json" if faults else None
        self.key = key
        self.port = 0
        self._env = {**ENV, **(env or {})}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._threads: list[threading.Thread] = []
        self._worker: Worker | None = None
        self._failed: BaseException | None = None
        self._log = io.StringIO()
        self._log_handler: logging.Handler | None = None
        self.app: web.Application | None = None  # the app once started: its router lists every route
        self.reloader: KeyReloader | None = None  # reloads keys as the ingest process does
        self.operator_key = "lp_operator_" + secrets.token_hex(16)
        with_operator_key(data_dir, key, self.operator_key)

    def add_key(self, tenant: str) -> str:
        """A new key for ``tenant``, written as ``lossproof keys create`` writes it; a running app
        reloads it (as ``lossproof.server.serve`` does) on its first use."""
        key = config_mod.new_key()
        with config_mod.editing(self.data_dir) as cfg:
            cfg.tenants.setdefault(tenant, config_mod.TenantConfig()).add_key(
                config_mod.hash_key(key), config_mod.now_iso()
            )
        return key

    def faults(self, faults: dict[str, Any]) -> None:
        """Replace the log's faults (e.g. ``{"log.fsync": {"mode": "delay", "seconds": 3}}``); applies
        to every fsync that starts after it returns. Needs ``InProcess(..., faults=True)``."""
        assert self.faults_file is not None, "InProcess(..., faults=True) to inject faults"
        write_faults(str(self.faults_file), faults)

    def config(self) -> Config:
        return config_mod.load(self.data_dir, self._env)

    def start(self, worker: bool = True) -> None:
        """Serve the app; with ``worker``, run the worker too (without: nothing gets stored)."""
        setup("inproc")  # lossproof's own log format, so logs() reads like the processes' logs
        self._log_handler = logging.StreamHandler(self._log)
        self._log_handler.setFormatter(logging.getLogger().handlers[0].formatter)
        logging.getLogger().addHandler(self._log_handler)
        cfg = self.config()
        ready = threading.Event()
        self._threads = [threading.Thread(target=self._serve, args=(cfg, ready), name="inproc-ingest")]
        self._threads[0].start()
        ready.wait(30)
        if self._failed is not None or not self.port:
            self.stop()
            raise AssertionError(f"in-process ingest did not start: {self._failed!r}")
        if not worker:
            return
        self._worker = Worker(
            open_reader(cfg, CollectorRegistry()),
            open_store(cfg),
            CollectorRegistry(),
            cfg.worker.batch_records,
            cfg.worker.batch_wait_seconds,
        )
        worker = threading.Thread(target=self._worker.run, name="inproc-worker")
        worker.start()
        self._threads.append(worker)

    def _serve(self, cfg: Config, ready: threading.Event) -> None:
        async def serve() -> None:
            registry = CollectorRegistry()
            faults = None if self.faults_file is None else Faults(str(self.faults_file))
            writer = open_writer(cfg, registry, faults)
            await writer.start()
            store = StoreAccess(lambda: open_store(cfg, readonly=True))
            self.app = build_app(cfg, writer, store, registry)
            self.reloader = KeyReloader(cfg.data_dir, self.app[KEYS], self._env)
            # as lossproof.server.serve: the same runner options and connection limits
            runner = await listen(self.app, cfg, "127.0.0.1", 0)
            try:
                self.port = int(runner.addresses[0][1])
                self._stop = asyncio.Event()
                ready.set()
                await self._stop.wait()
            finally:
                await runner.cleanup()
                await writer.close()
                store.close()

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(serve())
        except BaseException as e:
            self._failed = e
        finally:
            ready.set()
            self._loop.close()

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop.set()
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        for t in self._threads:
            t.join(30)
        if self._worker is not None:
            self._worker.reader.close()
            self._worker.store.close()
            self._worker = None
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler = None

    def logs(self) -> str:
        return self._log.getvalue()
