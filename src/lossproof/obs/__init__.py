"""Observability helpers for every process: structlog logging (:func:`setup`, :func:`get`: the
one logging style), the ``/metrics`` exposition and a small status HTTP server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lossproof.lazy import exports

if TYPE_CHECKING:
    from lossproof.obs.exposition import OperatorKeyRequired as OperatorKeyRequired
    from lossproof.obs.exposition import is_operator as is_operator
    from lossproof.obs.logging import get as get
    from lossproof.obs.logging import setup as setup
    from lossproof.obs.status_http import StatusServer as StatusServer

# The public API, name -> the module that defines it, loaded on first use (lossproof.lazy). No name
# may be a submodule's too (``exposition`` the function): loading the submodule would replace it.
__all__, __getattr__ = exports(
    __name__,
    {
        "get": "lossproof.obs.logging",
        "setup": "lossproof.obs.logging",
        "OperatorKeyRequired": "lossproof.obs.exposition",
        "is_operator": "lossproof.obs.exposition",
        "StatusServer": "lossproof.obs.status_http",
    },
)
