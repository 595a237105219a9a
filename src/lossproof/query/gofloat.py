"""Go's ``strconv.ParseFloat(s, 64)``, for label values Prometheus parses with it (a bucket's ``le``):
Python's ``float()`` answers differently for some strings, and Prometheus ignores a bucket whose bound
does not parse, so a different answer moves the quantile.

Where they differ: Go refuses surrounding whitespace and Unicode digits, which ``float()`` strips or
accepts; Go accepts hexadecimal floats (``0x1p-1``, the ``p`` exponent required), which ``float()``
refuses; Go answers an error (``ErrRange``, with ±Inf) for a finite value out of range (``1e400``),
where ``float()`` answers inf; Go's underscores follow its own rule (only between digits, or after
the ``0x`` prefix: ``0x_1p0``); ``nan`` takes no sign in Go. Checked against Go 1.x and Prometheus
2.42's ``histogram_quantile`` (tests/unit/test_gofloat.py)."""

from __future__ import annotations

import math
import re

# digits with single underscores between them (Go's underscoreOK: an underscore follows a digit and
# is followed by one); [0-9], not \d, which would take the Unicode digits Go refuses
_DEC = r"[0-9]+(?:_[0-9]+)*"
_HEX = r"[0-9a-fA-F]+(?:_[0-9a-fA-F]+)*"
_DECIMAL = re.compile(rf"[+-]?(?:{_DEC}(?:\.(?:{_DEC})?)?|\.{_DEC})(?:[eE][+-]?{_DEC})?")
# the base prefix counts as a digit for underscoreOK, so one underscore may follow it
_HEXADECIMAL = re.compile(rf"[+-]?0[xX](?:_?{_HEX}(?:\.(?:{_HEX})?)?|\.{_HEX})[pP][+-]?{_DEC}")
_INF = re.compile(r"[+-]?(?:inf|infinity)", re.IGNORECASE)


def parse_go_float(s: str) -> float | None:
    """``strconv.ParseFloat(s, 64)``'s value, or None where it answers an error (a syntax error, or a
    finite number too large: Go gives ±Inf with ``ErrRange`` then, and Prometheus drops the value on
    any error). An underflow is 0 (or a subnormal), no error, in both."""
    if _DECIMAL.fullmatch(s):
        x = float(s.replace("_", ""))
        return None if math.isinf(x) else x
    if _HEXADECIMAL.fullmatch(s):
        try:
            return float.fromhex(s.replace("_", ""))
        except OverflowError:
            return None
    if _INF.fullmatch(s):
        return -math.inf if s.startswith("-") else math.inf
    if s.lower() == "nan":
        return math.nan
    return None
