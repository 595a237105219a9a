"""Small click helpers shared by the commands: option types that refuse what click lets through."""

from __future__ import annotations

import math
from typing import Any

import click


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf`` (which pass its comparisons:
    every comparison with nan is false, so ``--duration nan`` would be "in range")."""

    name = "float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if isinstance(rv, float) and not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


def finite_float(
    min: float | None = None,
    max: float | None = None,
    *,
    min_open: bool = False,
    max_open: bool = False,
) -> FiniteFloatRange:
    """A float option type: finite, within ``[min, max]`` (either bound optional, or open)."""
    return FiniteFloatRange(min, max, min_open=min_open, max_open=max_open)
