"""The worker (docs/architecture.md): reads the log, writes points and the ledger to the store in
one transaction, then commits its log position; records gaps and dead letters, never crash-loops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lossproof.lazy import exports

if TYPE_CHECKING:
    from lossproof.worker.compactor import Compactor as Compactor
    from lossproof.worker.loop import Worker as Worker
    from lossproof.worker.loop import WorkerMetrics as WorkerMetrics
    from lossproof.worker.main import run as run

# The public API, name -> the module that defines it, loaded on first use (lossproof.lazy).
__all__, __getattr__ = exports(
    __name__,
    {
        "Worker": "lossproof.worker.loop",
        "WorkerMetrics": "lossproof.worker.loop",
        "Compactor": "lossproof.worker.compactor",
        "run": "lossproof.worker.main",
    },
)
