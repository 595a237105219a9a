"""The query API and the dashboard (docs/architecture.md): they read the store, never the log.

:class:`QueryApi` (``/api/...`` of lossproof's own), :func:`register_dashboard` (the UI at ``/`` and
the Prometheus-compatible API at ``/api/v1``), both mounted by :mod:`lossproof.server`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lossproof.lazy import exports

if TYPE_CHECKING:
    from lossproof.query.api import QueryApi as QueryApi
    from lossproof.query.dashboard import register_dashboard as register_dashboard
    from lossproof.query.promapi import PromApi as PromApi

# The public API, name -> the module that defines it, loaded on first use (lossproof.lazy).
__all__, __getattr__ = exports(
    __name__,
    {
        "QueryApi": "lossproof.query.api",
        "register_dashboard": "lossproof.query.dashboard",
        "PromApi": "lossproof.query.promapi",
    },
)
