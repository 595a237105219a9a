"""The query API and the dashboard (docs/architecture.md): they read the store, never the log.

:class:`QueryApi` (``/api/...`` of lossproof's own), :func:`register_dashboard` (the UI at ``/`` and
the Prometheus-compatible API at ``/api/v1``), both mounted by :mod:`lossproof.server`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lossproof.query.api import QueryApi as QueryApi
    from lossproof.query.dashboard import register_dashboard as register_dashboard
    from lossproof.query.promapi import PromApi as PromApi

# The public API, name -> module; loaded on first use, so a process pays only for what it touches.
_API = {
    "QueryApi": "lossproof.query.api",
    "register_dashboard": "lossproof.query.dashboard",
    "PromApi": "lossproof.query.promapi",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
