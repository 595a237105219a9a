"""InfluxDB line protocol (``/write`` of 1.x, ``/api/v2/write`` of 2.x).

``measurement[,tag=value...] field=value[,field=value...] [timestamp]``, one point per line; blank
lines and ``#`` comments are skipped; ``\\`` escapes the next character (``\\,``, ``\\=``,
``\\ `` in names, ``\\"`` and ``\\\\`` in strings).

The ingest check matches every line against one regular expression, with ``map`` so the loop over
lines runs in C, then takes min/max of the timestamps, also in C. The worker walks the same matches.

Mapping (docs/protocols.md): each numeric field is a point of metric ``<measurement>_<field>``
(just ``<measurement>`` for a field named ``value``, as influxdb_exporter does), with the tags as
labels plus ``db`` (and ``rp``) for 1.x or ``bucket`` for 2.x (a tag of the same name wins).
Floats, integers (``1i``), unsigned (``1u``) become floats; booleans 1.0/0.0. String fields cannot
be stored in a numeric series: they are accepted, counted as skipped, not stored. NaN and Inf are
not line protocol (InfluxDB refuses them too). A line without a timestamp gets the time the server
received it, truncated to the precision.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from itertools import repeat

from lossproof.points import Point
from lossproof.protocol.thirdparty import MAX_LABEL_VALUE, MAX_LABELS, MAX_NAME, MAX_TIME_MS, BadBody, Checked

# precision -> (multiplier, divisor) to unix ms
PRECISIONS: dict[str, tuple[int, int]] = {
    "n": (1, 1_000_000),
    "ns": (1, 1_000_000),
    "u": (1, 1_000),
    "us": (1, 1_000),
    "µ": (1, 1_000),
    "ms": (1, 1),
    "s": (1_000, 1),
    "m": (60_000, 1),
    "h": (3_600_000, 1),
}


def precision_of(p: str | None) -> str:
    p = (p or "ns").strip()
    if p == "":
        p = "ns"
    if p not in PRECISIONS:
        raise BadBody(f"invalid precision {p!r}: use ns, us, ms, s (or n, u, m, h on /write)")
    return p


# Possessive runs: a name, once read, is never re-read (names cannot contain their own delimiter).
_ESC = r"\\[^\n]"
_MEAS = rf"(?:[^ \t,\\\n#]|{_ESC})(?:[^ ,\\\n]++|{_ESC})*+"
_KEY = rf"(?:[^ ,=\\\n]++|{_ESC})++"
_STRING = r'"(?:[^"\\\n]++|\\[^\n])*+"'
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BOOL = r"(?:true|True|TRUE|t|T|false|False|FALSE|f|F)"
_VALUE = rf"(?:-?\d+i|\d+u|{_NUMBER}|{_BOOL}|{_STRING})"
_MAX_TAGS = MAX_LABELS - 1  # one label is db or bucket
_FIELD = rf"{_KEY}={_VALUE}"
_TAG = rf",{_KEY}={_KEY}"
_TIMESTAMP = r"-?\d{1,19}"


def _line(cap: str) -> str:
    """One data line; ``cap``: which groups capture ("", "ts": only the timestamp, "all")."""

    def g(name: str, pattern: str) -> str:
        if cap == "all" or cap == name:
            return f"(?P<{name}>{pattern})"
        return f"(?:{pattern})"

    measurement = g("m", _MEAS)
    tags = g("tags", f"(?:{_TAG}){{0,{_MAX_TAGS}}}")
    fields = g("fields", f"{_FIELD}(?:,{_FIELD})*")
    ts = g("ts", _TIMESTAMP)
    return rf"[ \t]*{measurement}{tags} +{fields}(?: +{ts})?[ \t]*\r?"


_OTHER = r"[ \t]*(?:#[^\n]*)?\r?"  # a blank line or a comment
# Any one line: a data line (groups m, tags, fields, ts) or a blank/comment line (no groups set).
_ANY = re.compile(rf"{_line('all')}|{_OTHER}")
_TAG_RE = re.compile(rf",({_KEY})=({_KEY})")
_FIELD_RE = re.compile(rf"({_KEY})=({_VALUE})")
_UNESCAPE = re.compile(r"\\(.)")
_TRUE = frozenset(("true", "True", "TRUE", "t", "T"))
_group = re.Match.group


def decode_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadBody(f"line protocol must be UTF-8: invalid byte at offset {e.start}") from None


def _match(text: str) -> tuple[list[str], list[re.Match[str]]]:
    lines = text.split("\n")
    # map() over a compiled pattern's method: the loop over lines runs in C
    ms = list(map(_ANY.fullmatch, lines))
    if None in ms:
        n = ms.index(None)
        line = lines[n]
        snippet = line[:120] + ("…" if len(line) > 120 else "")
        raise BadBody(f"line {n + 1}: {_why(line)}: {snippet!r}")
    return lines, ms  # type: ignore[return-value]


def check(body: bytes, precision: str, labels: Iterable[str] = ("db",)) -> Checked:
    """Check the (decompressed) body is line protocol within bounds. Raises BadBody. ``labels``:
    the names of the labels the request adds to every line (``db`` and ``rp``, or ``bucket``)."""
    text = decode_text(body)
    lines, ms = _match(text)
    added = frozenset(labels)
    if len(added) > 1:  # the line pattern allows one added label besides the tags
        _check_tag_count(ms, added)
    # a line of at most MAX_NAME characters cannot hold a longer name or value
    if max(map(len, lines)) > MAX_NAME:
        _check_lengths(lines, ms)
    stamps = list(map(_group, ms, repeat("ts")))
    given = list(map(int, filter(None, stamps)))
    if given:
        mul, div = PRECISIONS[precision]
        lo, hi = min(given), max(given)
        if lo < 0 or hi * mul // div > MAX_TIME_MS:
            bad = lo if lo < 0 else hi
            # by value: the text may differ ("-01", "0999...")
            n = next(i for i, ts in enumerate(stamps) if ts and int(ts) == bad)
            raise BadBody(
                f"line {n + 1}: timestamp {stamps[n]} (precision {precision}) is outside "
                "1970-01-01 .. 2100-01-01; check the precision parameter"
            )
    if _MAYBE_OUT_OF_RANGE.search(text):
        _check_values(lines, ms)
    points = len(ms) - list(map(_group, ms, repeat("m"))).count(None)
    skipped = _count_strings(ms) if '"' in text else 0
    return Checked(points=points, skipped=skipped)


# A field value that may not fit what is stored (a finite float64; InfluxDB's own int64 and uint64
# ranges): an integer of 19 or more digits, a float with a 3-digit exponent, a long mantissa and an
# exponent, or over 300 digits. Only bodies that hold such a text (in a field or not) are checked
# value by value.
# A mantissa under 20 characters with a 2-digit exponent is at most ~1e118: only longer mantissas
# with an exponent (250 nines then e99 is 1e349, +Inf) need the full conversion.
_MAYBE_OUT_OF_RANGE = re.compile(
    r"=[-+]?(?:\d{19,}[iu]|[\d.]*[eE][-+]?\d{3,}|[\d.]{20,}[eE]|[\d.]{300,})"
)
_INT_RANGE = {"i": (-(2**63), 2**63 - 1), "u": (0, 2**64 - 1)}


def _int(text: str) -> int:
    """An integer field's value (without its ``i``/``u``), also with thousands of leading zeros,
    which int() refuses (its digit limit); a longer number is out of range anyway: 2**64 is returned."""
    digits = text.lstrip("-").lstrip("0")
    if len(digits) > 20:
        return 2**64 if text[0] != "-" else -(2**64)
    return -int(digits or "0") if text[0] == "-" else int(digits or "0")


def _check_values(lines: list[str], ms: list[re.Match[str]]) -> None:
    for n, (line, m) in enumerate(zip(lines, ms, strict=True), 1):
        fields = m.group("fields")
        if not fields or not _MAYBE_OUT_OF_RANGE.search(line):
            continue
        for k, v in _FIELD_RE.findall(fields):
            c, last = v[0], v[-1]
            if c == '"' or c in "tTfF":
                continue
            if last in _INT_RANGE:
                lo, hi = _INT_RANGE[last]
                if not lo <= _int(v[:-1]) <= hi:
                    kind = "integer" if last == "i" else "unsigned integer"
                    raise BadBody(
                        f"line {n}: field {k[:64]!r}: {kind} {v[:40]} is outside {lo}..{hi}: {line[:120]!r}"
                    )
            elif not math.isfinite(float(v)):
                raise BadBody(
                    f"line {n}: field {k[:64]!r}: {v[:40]} is beyond the float64 range "
                    f"(NaN and Inf are not valid line protocol field values): {line[:120]!r}"
                )


def _count_strings(ms: list[re.Match[str]]) -> int:
    return sum(
        1
        for m in ms
        if m.group("fields") and '"' in m.group("fields")
        for _, v in _FIELD_RE.findall(m.group("fields"))
        if v.startswith('"')
    )


def _check_tag_count(ms: list[re.Match[str]], added: frozenset[str]) -> None:
    for n, m in enumerate(ms, 1):
        if m.group("m") is None:
            continue
        keys = added.union(_unescape(k, ",= ") for k, _ in _TAG_RE.findall(m.group("tags")))
        if len(keys) > MAX_LABELS:
            raise BadBody(
                f"line {n}: {len(keys)} labels with {', '.join(sorted(added))}, at most {MAX_LABELS}"
            )


def request_labels(params: dict[str, str]) -> dict[str, str]:
    """The labels a request adds to every line: ``db`` and ``rp`` (1.x) or ``bucket`` (2.x)."""
    return {k: params[k] for k in ("db", "rp", "bucket") if params.get(k)}


def check_label_values(params: dict[str, str]) -> None:
    """The request's db, rp or bucket: each becomes a label value on every point."""
    for k, v in params.items():
        if len(v) > MAX_LABEL_VALUE:
            raise BadBody(f"{k} of {len(v)} characters, at most {MAX_LABEL_VALUE} (it becomes a label)")


def _check_lengths(lines: list[str], ms: list[re.Match[str]]) -> None:
    for n, (line, m) in enumerate(zip(lines, ms, strict=True), 1):
        if len(line) <= MAX_NAME or m.group("m") is None:
            continue
        names = [_unescape(m.group("m"), ", ")]
        for k, v in _TAG_RE.findall(m.group("tags")):
            names.append(_unescape(k, ",= "))
            if len(_unescape(v, ",= ")) > MAX_LABEL_VALUE:
                raise BadBody(f"line {n}: tag {k[:64]!r} has a value over {MAX_LABEL_VALUE} characters")
        measurement = names[0]
        for k, _ in _FIELD_RE.findall(m.group("fields")):
            field = _unescape(k, ",= ")
            names.append(field)
            # the stored metric is <measurement>_<field> (just <measurement> for a field "value")
            if field != "value":
                names.append(f"{measurement}_{field}")
        for name in names:
            if len(name) > MAX_NAME:
                raise BadBody(f"line {n}: name {name[:64]!r}... is over {MAX_NAME} characters")


def _why(line: str) -> str:
    if re.search(r"=[-+]?(?:nan|inf(?:inity)?)\b", line, re.IGNORECASE):
        return "NaN and Inf are not valid line protocol field values"
    head = re.match(rf"[ \t]*((?:[^ \\\n]|{_ESC})*)", line)
    series = head.group(1) if head else ""
    if len(re.findall(r"(?<!\\),", series)) > _MAX_TAGS:
        return f"more than {_MAX_TAGS} tags"
    if not re.search(r"(?<!\\) +\S", line.strip()):
        return "missing field set (expected: measurement[,tag=value...] field=value[,...] [timestamp])"
    if line.count('"') % 2:
        return "unterminated string field value"
    if re.search(rf"(?<!\\),(?:{_KEY})=(?:,| |$)", series):
        return "tag with an empty value"
    tags = re.split(r"(?<!\\),", series)[1:]
    if any(not re.fullmatch(rf"{_KEY}={_KEY}", t) for t in tags):
        return "a tag is not key=value (escape , = and space in names with a backslash)"
    return (
        "not valid line protocol (expected: measurement[,tag=value...] field=value[,field=value...] "
        '[timestamp], values: 1.5, 1i, 1u, true, "string")'
    )


def _unescape(s: str, chars: str) -> str:
    if "\\" not in s:
        return s
    return _UNESCAPE.sub(lambda m: m.group(1) if m.group(1) in chars else m.group(0), s)


def _unescape_string(s: str) -> str:
    inner = s[1:-1]
    if "\\" not in inner:
        return inner
    return _UNESCAPE.sub(lambda m: m.group(1) if m.group(1) in '"\\' else m.group(0), inner)


def to_points(body: bytes, precision: str, received_ms: int, labels: dict[str, str]) -> list[Point]:
    """The stored points of a body that :func:`check` accepted."""
    out: list[Point] = []
    for chunk in iter_points(body, precision, received_ms, labels):
        out.extend(chunk)
    return out


# Lines matched at a time: the worker holds the match objects of one slice, not of the whole body.
_SLICE_LINES = 4096


def iter_points(
    body: bytes, precision: str, received_ms: int, labels: dict[str, str], max_points: int = 65_536
) -> Iterator[list[Point]]:
    """:func:`to_points` in chunks of about ``max_points`` (a line's fields are never split), so
    that the worker holds one chunk of points at a time. Always yields at least one chunk."""
    text = decode_text(body)
    mul, div = PRECISIONS[precision]
    # InfluxDB stamps a line without a timestamp with the server's time, truncated to the precision.
    unit_ms = max(1, mul // div)
    now = received_ms - received_ms % unit_ms
    out: list[Point] = []
    append = out.append
    lines = text.split("\n")
    del text
    for first in range(0, len(lines), _SLICE_LINES):
        part = lines[first : first + _SLICE_LINES]
        ms = list(map(_ANY.fullmatch, part))
        if None in ms:  # check() refuses such a body; a damaged record is a dead letter
            n = ms.index(None)
            raise BadBody(f"line {first + n + 1}: {_why(part[n])}: {part[n][:120]!r}")
        for m in ms:
            assert m is not None
            mm = m.group("m")
            if mm is None:
                continue  # blank or comment
            measurement = _unescape(mm, ", ")
            tags = dict(labels)
            for k, v in _TAG_RE.findall(m.group("tags")):
                tags[_unescape(k, ",= ")] = _unescape(v, ",= ")
            ts = m.group("ts")
            t = int(ts) * mul // div if ts else now
            for k, v in _FIELD_RE.findall(m.group("fields")):
                c = v[0]
                if c == '"':
                    continue  # a string: not storable as a number (counted as skipped at ingest)
                last = v[-1]
                if last == "i" or last == "u":
                    x = float(_int(v[:-1]))
                elif c in "tTfF":
                    x = 1.0 if v in _TRUE else 0.0
                else:
                    x = float(v)
                field = _unescape(k, ",= ")
                append(Point(measurement if field == "value" else f"{measurement}_{field}", tags, t, x))
            if len(out) >= max_points:
                yield out
                out = []
                append = out.append
    yield out


def string_fields(body: bytes) -> list[str]:
    """String field values in a body (tests)."""
    return [
        _unescape_string(v)
        for m in _match(decode_text(body))[1]
        if m.group("fields")
        for _, v in _FIELD_RE.findall(m.group("fields"))
        if v.startswith('"')
    ]
