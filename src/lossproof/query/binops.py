"""PromQL's arithmetic and comparison operators on float64: :func:`binop` one pair at a time (the
reference, Go's float semantics where Python's differ), :func:`binop_arrays` on whole arrays (the same
results, bit for bit: tests/unit/test_promql_arrays.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lossproof.query.promvalues import F64, Mask


def binop_arrays(op: str, a: F64, b: F64, where: Mask) -> F64:
    """``binop(op)`` elementwise (broadcasting ``a`` and ``b``); entries outside ``where`` are
    meaningless. ``^`` runs :func:`binop`'s Python function on each entry in ``where`` (numpy's power
    may differ from C's pow in the last bit); the others are the same IEEE operations."""
    with np.errstate(all="ignore"):
        if op == "+":
            return np.add(a, b)
        if op == "-":
            return np.subtract(a, b)
        if op == "*":
            return np.multiply(a, b)
        if op == "/":
            return np.divide(a, b)  # IEEE: x/±0 is ±Inf by the signs, 0/0 and NaN/0 are NaN
        if op == "%":
            bad = (b == 0) | np.isinf(a) | np.isnan(a) | np.isnan(b)
            return np.where(bad, math.nan, np.fmod(a, b))  # C's fmod, as math.fmod
        if op == "atan2":
            return np.arctan2(a, b)
        if op == "^":
            a2, b2 = np.broadcast_arrays(a, b)
            out = np.zeros(a2.shape)
            fn = binop("^")
            idx = np.nonzero(where)
            out[idx] = [fn(x, y) for x, y in zip(a2[idx].tolist(), b2[idx].tolist(), strict=True)]
            return out
        cmp = {
            "==": np.equal,
            "!=": np.not_equal,
            ">": np.greater,
            "<": np.less,
            ">=": np.greater_equal,
            "<=": np.less_equal,
        }[op]
        return cmp(a, b).astype(np.float64)


def _odd_integer(x: float) -> bool:
    return math.isfinite(x) and x == math.floor(x) and abs(math.fmod(x, 2)) == 1


def binop(op: str) -> Callable[[float, float], float]:
    def div(a: float, b: float) -> float:
        if b == 0:
            if a == 0 or math.isnan(a):
                return math.nan
            return math.copysign(math.inf, a) * math.copysign(1.0, b)
        return a / b

    def mod(a: float, b: float) -> float:
        if b == 0 or math.isinf(a) or math.isnan(a) or math.isnan(b):
            return math.nan
        return math.fmod(a, b)  # Go's math.Mod: the sign of a

    def pow_(a: float, b: float) -> float:
        """Go's math.Pow where Python's raises: an overflow is -Inf for a negative base to an odd
        integer power, +Inf otherwise; ±0 to a negative power is ±Inf (the zero's sign for an odd
        integer power); a negative base to a non-integer power is NaN."""
        try:
            return math.pow(a, b)
        except OverflowError:
            return -math.inf if a < 0 and _odd_integer(b) else math.inf
        except ValueError:
            if a == 0:
                return math.copysign(math.inf, a) if _odd_integer(b) else math.inf
            return math.nan

    def b(x: bool) -> float:
        return 1.0 if x else 0.0

    table: dict[str, Callable[[float, float], float]] = {
        "+": lambda a, c: a + c,
        "-": lambda a, c: a - c,
        "*": lambda a, c: a * c,
        "/": div,
        "%": mod,
        "^": pow_,
        "atan2": math.atan2,
        "==": lambda a, c: b(a == c),
        "!=": lambda a, c: b(a != c),
        ">": lambda a, c: b(a > c),
        "<": lambda a, c: b(a < c),
        ">=": lambda a, c: b(a >= c),
        "<=": lambda a, c: b(a <= c),
    }
    return table[op]
