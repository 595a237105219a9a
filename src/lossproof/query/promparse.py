"""PromQL as lossproof takes it, before any evaluation: parsing within bounds (query length, nesting,
operators), what is supported (functions, aggregations, selectors, durations, ``@``), and the limits
a query runs under (samples, series, time)."""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import promql_parser as pp

from lossproof.query import params, promfuncs
from lossproof.query.promvalues import (
    ExecutionError,
    PromQLError,
    Unsupported,
)

LOOKBACK_MS = 300_000
# Bounds checked on the text, before the parser sees it. The parser (Rust, promql-parser) recurses
# once per nesting level and per binary operator, takes time quadratic in the number of operators
# (1,000 terms: 0.3 s; 4,000: 1.7 s), and past a few thousand levels overflows its stack and kills
# the process with SIGSEGV (the ingest process, for every tenant). Within these bounds a parse takes
# milliseconds and every recursion over the tree (here and in the parser) stays shallow.
MAX_QUERY_CHARS = 16_384
MAX_NESTING = 64  # ( [ { open at once
MAX_OPERATORS = 256  # binary and unary operators and set operators (and, or, unless)
MAX_POINTS = 11_000  # per series in a range query, like Prometheus

_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")

OVER_TIME = (
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "quantile_over_time",
    "present_over_time",
)
MORE_RANGE_FUNCS = (
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "changes",
    "resets",
    "first_over_time",
    "mad_over_time",
    "double_exponential_smoothing",
    "holt_winters",
    "absent_over_time",
    "ts_of_first_over_time",
    "ts_of_last_over_time",
    "ts_of_max_over_time",
    "ts_of_min_over_time",
)
RANGE_FUNCS = ("rate", "irate", "increase", *OVER_TIME, *MORE_RANGE_FUNCS)
# Functions of native histograms: they ignore float samples, and lossproof stores native histograms
# as classic _bucket/_count/_sum series (docs/protocols.md), so they answer nothing.
NATIVE_HISTOGRAM_FUNCS = (
    "histogram_count",
    "histogram_sum",
    "histogram_avg",
    "histogram_fraction",
    "histogram_stddev",
    "histogram_stdvar",
)
FUNCTIONS = frozenset(
    (
        *RANGE_FUNCS,
        *promfuncs.MATH,
        *promfuncs.DATE_FUNCS,
        "time",
        "pi",
        "vector",
        "scalar",
        "timestamp",
        "round",
        "clamp",
        "clamp_min",
        "clamp_max",
        "histogram_quantile",
        "label_replace",
        "label_join",
        "sort",
        "sort_desc",
        "sort_by_label",
        "sort_by_label_desc",
        "absent",
        *NATIVE_HISTOGRAM_FUNCS,
        "info",
    )
)
AGGREGATIONS = ("sum", "avg", "min", "max", "count")
MORE_AGGREGATIONS = (
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
)
# atan2 keeps the metric name, unlike the others (Prometheus' shouldDropMetricName leaves it out)
ARITH = ("+", "-", "*", "/", "%", "^", "atan2")
COMPARE = ("==", "!=", ">", "<", ">=", "<=")
SET_OPS = ("and", "or", "unless")


@functools.lru_cache(maxsize=65536)
def promql_name(metric: str) -> str:
    """The PromQL spelling of a stored metric name: ``cpu.user`` -> ``cpu_user``. Memoized: asked
    for every series of an answer, of the few distinct metric names there are."""
    name = _BAD_NAME_CHARS.sub("_", metric)
    return "_" + name if name[:1].isdigit() else name


# --- entry points ------------------------------------------------------------------------------------


def check_bounds(query: str) -> None:
    """Refuse (:class:`PromQLError`) a query text over ``MAX_QUERY_CHARS`` characters, nested deeper
    than ``MAX_NESTING``, or with more than ``MAX_OPERATORS`` operators, before it is parsed."""
    if len(query) > MAX_QUERY_CHARS:
        raise PromQLError(f"query of {len(query)} characters is too long (at most {MAX_QUERY_CHARS})")
    text = params.strip_quoted(query)
    depth = deepest = 0
    for c in _BRACKETS.findall(text):
        depth = depth + 1 if c in "([{" else depth - 1
        deepest = max(deepest, depth)
    if deepest > MAX_NESTING:
        raise PromQLError(f"query nested {deepest} levels deep (at most {MAX_NESTING})")
    ops = len(_OPERATORS.findall(text))
    if ops > MAX_OPERATORS:
        raise PromQLError(f"query with {ops} operators is too complex (at most {MAX_OPERATORS})")
    repeated = sum(_repeated_atoms(lit) for lit in _REGEX_LITERAL.findall(query))
    if repeated > MAX_REGEX_REPEATS:
        raise PromQLError(
            f"regex matchers repeating {repeated} atoms by counts such as {{n}} (at most {MAX_REGEX_REPEATS})"
        )


# The parser compiles each =~ / !~ regex (Rust regex) holding the GIL, so neither the event loop nor
# a thread hop helps: a counted repetition copies its atom n times, and a Unicode class such as \W
# costs ~0.35 ms a copy, so 18 matchers of \W{300} (254 characters) held the GIL for 3 s, with
# writes unacknowledged meanwhile. The copies counted repetitions add, over all the query's regexes,
# are bounded: within it a parse holds the GIL ~50 ms at most. (Plain text, alternations and + * ?
# add none: Grafana's long (a|b|c) lists are not limited.)
MAX_REGEX_REPEATS = 128
_REGEX_LITERAL = re.compile(r"""[=!]~\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)""")
_COUNT = re.compile(r"\{(\d{1,7})(?:,(\d{0,7}))?\}")


def _repeated_atoms(literal: str) -> int:
    """The atoms counted repetitions copy in one regex string literal (quotes included; an estimate
    that errs high: a group's atoms are all counted, escapes are one atom)."""
    rx = literal[1:-1] if literal.startswith("`") else literal[1:-1].replace("\\\\", "\\")
    stack, last, extra, i = [0], 0, 0, 0
    while i < len(rx):
        c = rx[i]
        if c == "(":
            stack.append(0)
            last, i = 0, i + 1
            continue
        if c == ")":
            last = stack.pop() if len(stack) > 1 else 0
            stack[-1] += last
            i += 1
            continue
        if c == "{" and (m := _COUNT.match(rx, i)):
            n = max(int(m[1]), int(m[2]) if m[2] else 0)
            extra += last * max(n - 1, 0)
            stack[-1] += last * max(n - 1, 0)
            last *= max(n, 1)
            i = m.end()
            if extra > 1 << 40:
                return extra
            continue
        if c == "\\":
            i += 2
            if rx[i - 1 : i] in ("p", "P") and rx[i : i + 1] == "{":
                i = rx.find("}", i) + 1 or len(rx)
            elif rx[i - 1 : i] in ("p", "P"):
                i += 1
        elif c == "[":
            j = i + 1 + (rx[i + 1 : i + 2] == "^")
            j += rx[j : j + 1] == "]"
            while j < len(rx) and rx[j] != "]":
                j += 2 if rx[j] == "\\" else 1
            i = j + 1
        else:
            i += 1
        last = 1
        stack[-1] += 1
    return extra


_BRACKETS = re.compile(r"[()\[\]{}]")
# Over-counts (a "-" in 1e-3, "!=" inside braces): the bound is generous for that.
_OPERATORS = re.compile(r"==|!=|<=|>=|[-+*/%^<>]|\b(?:and|or|unless|atan2)\b")


def parse(query: str) -> pp.Expr:
    """Parse and check a query. CPU-bound (milliseconds within the bounds): callers on the event
    loop run it in a thread (:func:`parse_async`)."""
    if not query.strip():
        raise PromQLError("empty query")
    check_bounds(query)
    if _NEGATIVE_AT.search(params.strip_quoted(query)):
        raise Unsupported("an @ time before 1970")
    try:
        expr = pp.parse(query)
    except (ValueError, TypeError, OverflowError) as e:
        # the parser reports a duration that overflows as "must be greater than 0"
        big = params.too_large_duration(query)
        if big is not None:
            raise PromQLError(
                f"invalid PromQL: duration {params.clip(big)!r} is too large "
                f"(at most {params.MAX_DURATION_MS} ms, about 292 years)"
            ) from None
        raise PromQLError(f"invalid PromQL: {params.clip(str(e), 500)}") from None
    check_supported(expr)
    return expr


INLINE_PARSE_CHARS = 256  # a query this short parses in tens of microseconds: less than a thread hop


async def parse_async(query: str) -> pp.Expr:
    """:func:`parse` off the event loop, which must keep acknowledging writes meanwhile; a short
    query (the usual one) is parsed right here, where the hop to a thread would cost more than the
    parse."""
    if len(query) <= INLINE_PARSE_CHARS:
        return parse(query)
    return await asyncio.to_thread(parse, query)


def check_supported(expr: pp.Expr) -> None:
    """Raise :class:`Unsupported` for the first construct lossproof does not evaluate (the parser has
    already checked the types)."""
    for node in _walk(expr):
        if isinstance(node, pp.VectorSelector):
            _check_selector(node)
        elif isinstance(node, pp.MatrixSelector):
            _check_selector(node.vector_selector)
            _check_duration(node.range, "range")
        elif isinstance(node, pp.SubqueryExpr):
            if node.at is not None and node.at.type == pp.AtModifierType.At:
                at_ms(node.at)
            _check_duration(node.range, "range")
            _check_duration(node.step, "step")
            _check_duration(node.offset, "offset")
        elif isinstance(node, pp.Call):
            name = node.func.name
            if name not in FUNCTIONS:
                raise Unsupported(f"function {name}()")
        elif isinstance(node, pp.AggregateExpr):
            op = str(node.op)
            if op not in AGGREGATIONS + MORE_AGGREGATIONS:
                raise Unsupported(f"aggregation {op}")


def _walk(expr: pp.Expr) -> Iterable[pp.Expr]:
    stack = [expr]
    while stack:
        e = stack.pop()
        yield e
        if isinstance(e, (pp.ParenExpr, pp.UnaryExpr, pp.SubqueryExpr)):
            stack.append(e.expr)
        elif isinstance(e, pp.MatrixSelector):
            stack.append(e.vector_selector)
        elif isinstance(e, pp.Call):
            stack.extend(e.args)
        elif isinstance(e, pp.AggregateExpr):
            stack.append(e.expr)
            if e.param is not None:
                stack.append(e.param)
        elif isinstance(e, pp.BinaryExpr):
            stack.extend((e.lhs, e.rhs))


def at_ms(at: pp.AtModifier) -> int:
    """The time of ``@ <time>`` in ms. Read from the modifier's text ("@ 123.456"): its ``at``
    attribute converts through a datetime and fails past year 9999 (OverflowError) and before 1970
    (a panic in the parser's Rust code, which also prints a backtrace). Negative times are refused
    by :func:`parse` (the text shows them as 0)."""
    text = str(at).removeprefix("@ ")
    try:
        seconds = float(text)
    except ValueError:
        raise PromQLError(f"invalid PromQL: cannot read the @ time {params.clip(text)!r}") from None
    return params.check_time_ms(round(seconds * 1000), "@")


_NEGATIVE_AT = re.compile(r"@\s*-")


def _check_selector(vs: pp.VectorSelector) -> None:
    if vs.at is not None and vs.at.type == pp.AtModifierType.At:
        at_ms(vs.at)
    if vs.matchers.or_matchers:
        raise Unsupported("'or' inside a selector's braces")
    _check_duration(vs.offset, "offset")


def _check_duration(d: timedelta | None, what: str) -> None:
    try:
        params.check_duration(d, what)
    except params.ParamError as e:
        raise PromQLError(f"invalid PromQL: {e}") from None


# --- limits ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one query may cost (``[query]`` in the configuration); each, when exceeded, ends the
    query with a 422 naming it, before the memory or the read thread is gone."""

    # points read plus points a subquery makes; and, apart, the points of the answer (Prometheus'
    # default; it counts a result's points too)
    max_samples: int = 50_000_000
    max_series: int = 500_000  # series one selector may read
    timeout_s: float = 120.0  # checked between the steps of the evaluation (Prometheus: 2 minutes)
    # values one (series x steps) array of the evaluation may hold, present or not (9 bytes each):
    # the evaluation is dense, so this bounds its memory where max_samples, which counts points,
    # cannot (1,000 series over a subquery of 3.6 M steps hold few points and 32 GB of arrays)
    max_values: int = 100_000_000


class LimitExceeded(ExecutionError):
    """A query over one of its :class:`Limits` (422, ``execution``; ``timeout`` for the time)."""


class QueryCancelled(ExecutionError):
    """The query's client went away (or the server is stopping): its evaluation stops at the next
    check, and nobody reads the answer."""


class Budget:
    """What a query has used so far, shared by its subqueries. :meth:`check_time` is called between
    the steps of the evaluation and inside its long loops: it also stops a query that was
    cancelled (:meth:`cancel`, from another thread)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.samples = 0
        self.deadline = time.monotonic() + limits.timeout_s
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def check_time(self) -> None:
        if self.cancelled:
            raise QueryCancelled("query cancelled: its client went away")
        if time.monotonic() > self.deadline:
            e = LimitExceeded(
                f"query timed out in expression evaluation (timeout_seconds = {self.limits.timeout_s:g}, "
                "[query] in lossproof.toml)"
            )
            e.error_type = "timeout"
            raise e

    def add(self, series: int, samples: int) -> None:
        lim = self.limits
        if series > lim.max_series:
            raise LimitExceeded(
                f"query would read {series} series with one selector, more than max_series = "
                f"{lim.max_series} ([query] in lossproof.toml)"
            )
        self.samples += samples
        if self.samples > lim.max_samples:
            raise self._too_many()
        self.check_time()

    def cells(self, series: int, steps: int) -> None:
        """Before an array of ``series`` x ``steps`` values is made (a selector's lookups over a
        subquery's steps, a range function's answer, ``count_values``'s series), or once an operator
        has made one (``or`` adds series): past ``max_values`` the query ends here."""
        if series * steps > self.limits.max_values:
            raise LimitExceeded(
                f"query would hold {series} series x {steps} steps = {series * steps} values in one "
                f"array, more than max_values = {self.limits.max_values} ([query] in lossproof.toml)"
            )
        self.check_time()

    def answer(self, points: int) -> None:
        """The answer's points (present values), counted apart from what was read, as Prometheus
        counts a result's samples against its limit."""
        if points > self.limits.max_samples:
            raise self._too_many()

    def _too_many(self) -> LimitExceeded:
        return LimitExceeded(
            "query processing would load too many samples into memory in query execution "
            f"(more than max_samples = {self.limits.max_samples}, [query] in lossproof.toml)"
        )


# --- evaluation --------------------------------------------------------------------------------------

SUBQUERY_STEP_MS = 60_000  # a subquery without a step uses the global evaluation interval (1 m)
