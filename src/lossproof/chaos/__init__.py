"""Chaos and audit (docs/architecture.md): start the pipeline as real processes, inject faults
(through wrappers and the file-system seam, never a branch in the product), and audit the contract.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lossproof.chaos.cli import audit_command as audit_command
    from lossproof.chaos.cli import chaos_group as chaos_group
    from lossproof.chaos.early_ack import EarlyAckWriter as EarlyAckWriter
    from lossproof.chaos.runner import run_scenario as run_scenario
    from lossproof.chaos.scenarios import SCENARIOS as SCENARIOS
    from lossproof.chaos.scenarios import Scenario as Scenario

# The public API, name -> module; loaded on first use, so a process pays only for what it touches.
_API = {
    "run_scenario": "lossproof.chaos.runner",
    "SCENARIOS": "lossproof.chaos.scenarios",
    "Scenario": "lossproof.chaos.scenarios",
    "audit_command": "lossproof.chaos.cli",
    "chaos_group": "lossproof.chaos.cli",
    "EarlyAckWriter": "lossproof.chaos.early_ack",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
