"""The one place that decides which times, durations and counts the read APIs accept.

Every read endpoint (``/v1/query``, the Prometheus API, the dashboard's JSON) parses its times and
durations here, so that a value that cannot be evaluated (``inf``, ``1e400``, a timestamp past what
the stores can hold, a duration that overflows) is refused up front with a :class:`ParamError`,
which each API answers as a 400 in its own error shape, instead of failing deep in a store.

Bounds:

- evaluated times (the Prometheus API, the dashboard's charts): within ``±MAX_TIME_MS`` of the epoch
  (about 31.7 million years), so that a time plus or minus any accepted duration, and the span
  between two accepted times, still fits a signed 64-bit integer (SQLite's and PostgreSQL's);
- raw timestamps of ``/v1/query`` (unix ms, no arithmetic on them): any signed 64-bit integer;
- durations (``step``, ``lookback_delta``, ``offset``, ranges): positive and at most
  ``MAX_DURATION_MS``, what Prometheus accepts (a Go ``time.Duration``: 2^63 - 1 ns, about 292 years).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

from lossproof.query.gofloat import parse_go_float

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TIME_S = 10**15
MAX_TIME_MS = MAX_TIME_S * 1000
MIN_TIME_MS = -MAX_TIME_MS
MAX_DURATION_MS = (2**63 - 1) // 1_000_000  # 9,223,372,036,854 ms

# Prometheus' own spellings of its minimum and maximum times (clients send them for "all time").
_PROM_MIN_TIME = "-292273086-05-16T16:47:06Z"
_PROM_MAX_TIME = "292277025-08-18T07:12:54.999999999Z"

_DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
# More digits than this in one part of a duration is over MAX_DURATION_MS in any unit; int() would
# refuse the text outright past 4,300 digits (Python's guard against quadratic conversion).
_MAX_DURATION_DIGITS = 20
_UNIT_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 7 * 86_400_000,
    "y": 365 * 86_400_000,
}


class ParamError(ValueError):
    """A value the read APIs refuse; ``str()`` is the whole message, naming the parameter (when
    ``name`` is given)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"invalid parameter {name!r}: {message}" if name else message)
        self.name = name


def parse_time(raw: str, name: str) -> int:
    """Unix seconds (a float) or RFC 3339, to unix ms within ``[MIN_TIME_MS, MAX_TIME_MS]``."""
    if raw == _PROM_MIN_TIME:
        return MIN_TIME_MS
    if raw == _PROM_MAX_TIME:
        return MAX_TIME_MS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = _rfc3339_seconds(raw, name)
    if not math.isfinite(seconds):
        raise ParamError(name, f"cannot parse {clip(raw)!r} to a valid timestamp")
    if not -MAX_TIME_S <= seconds <= MAX_TIME_S:
        raise ParamError(name, f"timestamp {clip(raw)!r} is out of range {_time_range()}")
    return check_time_ms(round(seconds * 1000), name)


def _rfc3339_seconds(raw: str, name: str) -> float:
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        raise ParamError(name, f"cannot parse {clip(raw)!r} to a valid timestamp") from None


def check_time_ms(ms: int, name: str) -> int:
    """An evaluated time in unix ms, refused outside ``[MIN_TIME_MS, MAX_TIME_MS]``."""
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        raise ParamError(name, f"timestamp {ms} ms is out of range {_time_range()}")
    return ms


def _time_range() -> str:
    return f"(between -{MAX_TIME_S:.0e} and {MAX_TIME_S:.0e} unix seconds)".replace("e+", "e")


def parse_ms(raw: str | None, name: str, default: int) -> int:
    """A raw unix-ms timestamp (an integer) that a store can hold: any signed 64-bit integer."""
    if raw is None or raw == "":
        return default
    try:
        ms = _int(raw)
    except ValueError:
        raise ParamError(name, f"must be an integer (unix ms), got {clip(raw)!r}") from None
    if not INT64_MIN <= ms <= INT64_MAX:
        raise ParamError(name, f"{clip(raw)!r} is out of range (a unix ms timestamp must fit in 64 bits)")
    return ms


def parse_duration(raw: str, name: str) -> int:
    """Seconds (a float) or a PromQL duration (``15s``, ``1m30s``), to ms: positive, at most
    ``MAX_DURATION_MS``."""
    try:
        seconds = float(raw)
    except ValueError:
        if not _DURATION.fullmatch(raw):
            raise ParamError(name, f"cannot parse {clip(raw)!r} to a valid duration") from None
        ms = duration_literal_ms(raw)
    else:
        if math.isnan(seconds):
            raise ParamError(name, f"cannot parse {clip(raw)!r} to a valid duration")
        if seconds > MAX_DURATION_MS / 1000:
            raise ParamError(name, f"duration {clip(raw)!r} is too large (at most {_max_duration()})")
        ms = round(seconds * 1000) if seconds > 0 else 0
    if ms > MAX_DURATION_MS:
        raise ParamError(name, f"duration {clip(raw)!r} is too large (at most {_max_duration()})")
    if ms <= 0:
        if name == "step":  # Prometheus' words
            raise ParamError(
                name,
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            )
        raise ParamError(name, "zero or negative durations are not accepted; try a positive number")
    return ms


# Prometheus' model.ParseDuration: the units in this order, each at most once ("0" alone too)
_MODEL_DURATION = re.compile(
    "0|" + "".join(f"(?:([0-9]+){unit})?" for unit in ("y", "w", "d", "h", "m", "s", "ms"))
)
_MODEL_UNITS_MS = (_UNIT_MS["y"], _UNIT_MS["w"], _UNIT_MS["d"], _UNIT_MS["h"], _UNIT_MS["m"], 1000, 1)


def check_timeout(raw: str) -> None:
    """The ``timeout`` parameter is checked as Prometheus' API checks it (its ``parseDuration``: Go
    float seconds that fit a ``time.Duration``, else ``model.ParseDuration``): what it refuses is a
    400 here too, rather than a query run as if it were not there. (The server's own
    ``timeout_seconds`` still bounds the query: a valid value is not applied.)"""
    secs = parse_go_float(raw)
    if secs is not None:
        if not abs(secs) * 1e9 > 2**63:  # (NaN passes, as Go's comparisons let it)
            return
        raise ParamError("timeout", f"cannot parse {clip(raw)!r} to a valid duration. It overflows int64")
    m = _MODEL_DURATION.fullmatch(raw) if raw else None
    if m is not None and all(len(g) <= _MAX_DURATION_DIGITS for g in m.groups() if g):
        ms = sum(int(g) * u for g, u in zip(m.groups(), _MODEL_UNITS_MS, strict=True) if g)
        if ms <= MAX_DURATION_MS:
            return
    raise ParamError("timeout", f"cannot parse {clip(raw)!r} to a valid duration")


def duration_literal_ms(lit: str) -> int:
    """A PromQL duration literal (``1m30s``, already matched) in ms; one past ``MAX_DURATION_MS``
    for a literal too long to convert."""
    total = 0
    for n, unit in _DURATION_PART.findall(lit):
        if len(n.lstrip("0")) > _MAX_DURATION_DIGITS:
            return MAX_DURATION_MS + 1
        total += int(n) * _UNIT_MS[unit]
    return total


def check_duration(d: timedelta | None, what: str) -> int:
    """A PromQL duration (``what``: an offset, which may be negative, or a range) in ms, refused
    when its size exceeds ``MAX_DURATION_MS``."""
    if d is None:
        return 0
    ms = round(d.total_seconds() * 1000)
    if abs(ms) > MAX_DURATION_MS:
        raise ParamError("", f"{what} {d} is too large (at most {_max_duration()})")
    return ms


def _max_duration() -> str:
    return f"{MAX_DURATION_MS} ms, about 292 years"


def parse_int(raw: str, name: str, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """A plain integer within ``[lo, hi]``."""
    try:
        n = _int(raw)
    except ValueError:
        raise ParamError(name, f"must be an integer, got {clip(raw)!r}") from None
    if not lo <= n <= hi:
        raise ParamError(name, f"{clip(raw)!r} is out of range (between {lo} and {hi})")
    return n


def _int(raw: str) -> int:
    """int(), except that a number of more digits than any bound here is one past INT64_MAX (in its
    sign) instead of the ValueError int() raises past 4,300 digits."""
    digits = raw.strip().lstrip("+-").lstrip("0").replace("_", "")
    if len(digits) > 25 and digits.isdigit():
        return INT64_MIN - 1 if raw.strip().startswith("-") else INT64_MAX + 1
    return int(raw)


def clip(raw: str, limit: int = 100) -> str:
    """A parameter's text for a message: a huge one is cut (the answer must stay small)."""
    return raw if len(raw) <= limit else raw[:limit] + "..."


def too_large_duration(text: str) -> str | None:
    """The first duration literal in a PromQL text (outside quoted strings) larger than
    ``MAX_DURATION_MS``, if any: the parser reports those with a misleading message."""
    unquoted = strip_quoted(text)
    for m in re.finditer(r"(?<![\w.])(?:\d+(?:ms|s|m|h|d|w|y))+(?![\w.])", unquoted):
        lit = m.group(0)
        if duration_literal_ms(lit) > MAX_DURATION_MS:
            return lit
    return None


_QUOTE = re.compile("[\"'`]")


def strip_quoted(text: str) -> str:
    """``text`` with each PromQL string literal (``"..."``, ``'...'``, raw `` `...` ``) replaced by
    ``""``; an unclosed one runs to the end. One pass: a regex for this backtracks quadratically on
    an unclosed literal full of escapes."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        m = _QUOTE.search(text, i)
        if m is None:
            out.append(text[i:])
            break
        j = m.start()
        out.append(text[i:j])
        quote = text[j]
        k = j + 1
        while k < n and text[k] != quote:
            k += 2 if text[k] == "\\" and quote != "`" else 1
        out.append('""')
        i = k + 1
    return "".join(out)
