"""Chaos and audit (docs/architecture.md): start the pipeline as real processes, inject faults
(through wrappers and the file-system seam, never a branch in the product), and audit the contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lossproof.lazy import exports

if TYPE_CHECKING:
    from lossproof.chaos.cli import audit_command as audit_command
    from lossproof.chaos.cli import chaos_group as chaos_group
    from lossproof.chaos.early_ack import EarlyAckWriter as EarlyAckWriter
    from lossproof.chaos.runner import run_scenario as run_scenario
    from lossproof.chaos.scenarios import SCENARIOS as SCENARIOS
    from lossproof.chaos.scenarios import Scenario as Scenario

# The public API, name -> the module that defines it, loaded on first use (lossproof.lazy).
__all__, __getattr__ = exports(
    __name__,
    {
        "run_scenario": "lossproof.chaos.runner",
        "SCENARIOS": "lossproof.chaos.scenarios",
        "Scenario": "lossproof.chaos.scenarios",
        "audit_command": "lossproof.chaos.cli",
        "chaos_group": "lossproof.chaos.cli",
        "EarlyAckWriter": "lossproof.chaos.early_ack",
    },
)
