"""A package's public API, loaded on first use (PEP 562): ``__all__`` names it, and a module-level
``__getattr__`` imports the module that defines a name when it is first asked for, so a process
pays only for what it touches (the agent imports ``lossproof.protocol.native`` without loading the
store's numpy through ``lossproof.protocol``'s other modules)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, api: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` for ``package``, whose public ``api`` maps each name to the module
    that defines it."""

    def __getattr__(name: str) -> Any:
        module = api.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return sorted(api), __getattr__
