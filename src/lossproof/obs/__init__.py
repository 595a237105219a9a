"""Observability helpers for every process: structlog logging (:func:`setup`, :func:`get`: the
one logging style), the ``/metrics`` exposition and a small status HTTP server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lossproof.obs.exposition import OperatorKeyRequired as OperatorKeyRequired
    from lossproof.obs.exposition import exposition as exposition
    from lossproof.obs.exposition import is_operator as is_operator
    from lossproof.obs.logging import get as get
    from lossproof.obs.logging import setup as setup
    from lossproof.obs.status_http import StatusServer as StatusServer

# The public API, name -> module; loaded on first use, so a process pays only for what it touches.
_API = {
    "get": "lossproof.obs.logging",
    "setup": "lossproof.obs.logging",
    "OperatorKeyRequired": "lossproof.obs.exposition",
    "exposition": "lossproof.obs.exposition",
    "is_operator": "lossproof.obs.exposition",
    "StatusServer": "lossproof.obs.status_http",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
