"""The worker (docs/architecture.md): reads the log, writes points and the ledger to the store in
one transaction, then commits its log position; records gaps and dead letters, never crash-loops.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lossproof.worker.compactor import Compactor as Compactor
    from lossproof.worker.loop import Worker as Worker
    from lossproof.worker.loop import WorkerMetrics as WorkerMetrics
    from lossproof.worker.main import run as run

# The public API, name -> module; loaded on first use, so a process pays only for what it touches.
_API = {
    "Worker": "lossproof.worker.loop",
    "WorkerMetrics": "lossproof.worker.loop",
    "Compactor": "lossproof.worker.compactor",
    "run": "lossproof.worker.main",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
