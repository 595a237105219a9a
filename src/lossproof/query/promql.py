"""PromQL evaluated over the :class:`~lossproof.store.base.Store`: the whole language (docs/dashboard.md
lists it), with Prometheus' semantics; the native-histogram functions answer nothing, as the store holds
native histograms as classic buckets (float samples, which those functions ignore).

Parsing is done by ``promql-parser`` (a maintained PromQL parser, which also checks the types); this
module evaluates the parsed tree. Constructs lossproof does not evaluate (the newest experimental
functions: ``histogram_quantiles``, ``integral``, ``start``/``end``/``range``/``step``) parse but are
refused with :class:`Unsupported`, which names the part.

Semantics follow Prometheus 3: an instant selector takes, at each evaluation time T, the latest sample
in ``(T - lookback, T]`` (lookback 5 minutes), none if that sample is a staleness marker; a range
selector ``[d]`` takes the samples in ``(T - d, T]``, staleness markers left out; a subquery's steps are
the multiples of its step after ``T - range``; ``rate``/``increase``/``delta`` extrapolate like
Prometheus (counter resets included).

Evaluation is on numpy arrays (a :class:`Vector` is a (series x steps) array of values and one of
presence): a range function is computed for every window of every series at once, aggregations and
binary operators over whole arrays (vector matching over pairs of rows: :mod:`vecmatch`; the values
themselves are in :mod:`promvalues`). The per-window Python definitions further down
(``_range_fn``, ``_agg``) and :func:`binops.binop` are the reference: the array code answers the
same, bit for bit (checked by tests/unit/test_promql_arrays.py), and falls back to them
where vectorising does not pay (a window with a NaN or an infinity in a sum, ``quantile_over_time``,
``^``). A subquery is evaluated by another :class:`Evaluator` over its own grid. What one query may
cost is bounded by :class:`Limits`.

Metric names: lossproof metric names may contain characters PromQL names cannot (``cpu.user``).
In PromQL every character outside ``[a-zA-Z0-9_:]`` reads as ``_``: ``cpu_user`` selects the stored
``cpu.user``, and results carry ``__name__="cpu_user"``. ``{__name__="cpu.user"}`` (the stored name)
works too. Label names are used as stored.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import msgspec
import numpy as np
import promql_parser as pp
import re2

from lossproof.query import exact, params, promagg, promfuncs, promhash, promrange, vecmatch
from lossproof.query.binops import binop, binop_arrays
from lossproof.query.promvalues import (
    F64,
    I64,
    NAME,
    ExecutionError,
    Grid,
    Key,
    Labels,
    Mask,
    PromQLError,
    RawMatrix,
    Rows,
    Scalar,
    Unsupported,
    Value,
    Vector,
    drop_name,
    fmt_labels,
    key_of,
    make_vector,
)
from lossproof.store.base import InvalidMatcher, Matcher, SeriesArrays, Store

# re-exported: the values and operators live in their own modules; callers use them from here
__all__ = [
    "F64",
    "I64",
    "NAME",
    "ExecutionError",
    "Grid",
    "Key",
    "Labels",
    "Mask",
    "PromQLError",
    "RawMatrix",
    "Rows",
    "Scalar",
    "Unsupported",
    "Value",
    "Vector",
    "binop",
    "binop_arrays",
    "drop_name",
    "fmt_labels",
    "key_of",
    "make_vector",
]

# Prometheus 2's name of double_exponential_smoothing (3.x renamed it): dashboards and rules written for
# 2.x use it, and the parser knows only the new name. Registered once, for the whole process.
pp.register_extra_functions(
    [
        pp.Function(
            name="holt_winters",
            arg_types=[pp.ValueType.Matrix, pp.ValueType.Scalar, pp.ValueType.Scalar],
            variadic=0,
            return_type=pp.ValueType.Vector,
        )
    ]
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


def promql_name(metric: str) -> str:
    """The PromQL spelling of a stored metric name: ``cpu.user`` -> ``cpu_user``."""
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


async def parse_async(query: str) -> pp.Expr:
    """:func:`parse` off the event loop, which must keep acknowledging writes meanwhile."""
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


def _unparen(e: pp.Expr) -> pp.Expr:
    while isinstance(e, pp.ParenExpr):
        e = e.expr
    return e


# --- limits ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one query may cost (``[query]`` in the configuration); each, when exceeded, ends the
    query with a 422 naming it, before the memory or the read thread is gone."""

    max_samples: int = 50_000_000  # points read, plus points a subquery makes (Prometheus' default)
    max_series: int = 500_000  # series one selector may read
    timeout_s: float = 120.0  # checked between the steps of the evaluation (Prometheus: 2 minutes)


class LimitExceeded(ExecutionError):
    """A query over one of its :class:`Limits` (422, ``execution``; ``timeout`` for the time)."""


class Budget:
    """What a query has used so far, shared by its subqueries."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.samples = 0
        self.deadline = time.monotonic() + limits.timeout_s

    def check_time(self) -> None:
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
            raise LimitExceeded(
                "query processing would load too many samples into memory in query execution "
                f"(more than max_samples = {lim.max_samples}, [query] in lossproof.toml)"
            )
        self.check_time()


# --- evaluation --------------------------------------------------------------------------------------

SUBQUERY_STEP_MS = 60_000  # a subquery without a step uses the global evaluation interval (1 m)


class Evaluator:
    """Evaluates one parsed query for one tenant over a grid of evaluation times. Runs on the store
    thread (every call here may read the store).

    Values are numpy arrays, one row per series and one column per step (:class:`Vector`); range
    functions are computed for every step of every series at once (:func:`range_function`), with
    the same results, bit for bit, as the per-window Python definitions (``_range_fn``).
    A subquery is another evaluator over its own grid (aligned to its step, as Prometheus aligns
    it), whose answer becomes the points of a range vector."""

    def __init__(
        self,
        store: Store,
        tenant: str,
        grid: Grid,
        lookback_ms: int = LOOKBACK_MS,
        limits: Limits | None = None,
        *,
        budget: Budget | None = None,
        query_grid: Grid | None = None,
    ) -> None:
        self.store = store
        self.tenant = tenant
        self.grid = grid
        self.lookback_ms = lookback_ms
        self.budget = budget if budget is not None else Budget(limits or Limits())
        self.query_grid = query_grid or grid  # start() and end() of @
        self._names: list[str] | None = None

    def eval(self, expr: pp.Expr) -> Value:
        self.budget.check_time()
        if isinstance(expr, pp.NumberLiteral):
            return Scalar([float(expr.val)] * self.grid.n)
        if isinstance(expr, pp.ParenExpr):
            return self.eval(expr.expr)
        if isinstance(expr, pp.UnaryExpr):
            return _unary_minus(self.eval(expr.expr))
        if isinstance(expr, pp.VectorSelector):
            return self._instant(expr)
        if isinstance(expr, pp.Call):
            return self._call(expr)
        if isinstance(expr, pp.AggregateExpr):
            return self._aggregate(expr)
        if isinstance(expr, pp.BinaryExpr):
            return self._binary(expr)
        if isinstance(expr, (pp.MatrixSelector, pp.SubqueryExpr)):
            raise PromQLError(
                "a range vector cannot be evaluated here: use it inside rate(), *_over_time()..."
            )
        if isinstance(expr, pp.StringLiteral):
            raise PromQLError("a string cannot be evaluated here")
        raise Unsupported(f"expression {type(expr).__name__}")

    def scalar(self, expr: pp.Expr) -> F64:
        """A scalar argument, one value per step."""
        v = self.eval(expr)
        if not isinstance(v, Scalar):
            raise PromQLError("expected a scalar")
        return np.array(v.values, dtype=np.float64)

    def vector(self, expr: pp.Expr) -> Vector:
        v = self.eval(expr)
        if not isinstance(v, Vector):
            raise PromQLError("expected an instant vector")
        return v

    # selectors

    def matchers(self, vs: pp.VectorSelector) -> list[Matcher] | None:
        """Store matchers for a selector, or None when no stored metric name can match. Matchers on
        the metric name become one ``=~`` over the stored names they select (see the module doc)."""
        triples = [(m.name, _op(m.op), m.value) for m in vs.matchers.matchers]
        if vs.name:
            triples.append((NAME, "=", vs.name))
        return self.store_matchers(triples)

    def store_matchers(self, triples: Sequence[tuple[str, str, str]]) -> list[Matcher] | None:
        """:meth:`matchers` of ``(label, op, value)`` triples."""
        out: list[Matcher] = []
        names: set[str] | None = None
        for label, op, value in triples:
            if label == NAME:
                found = set(self._names_matching(op, value))
                names = found if names is None else names & found
                continue
            try:
                out.append(Matcher(label, op, value))
            except InvalidMatcher as e:
                raise PromQLError(str(e)) from None
        if names is not None:
            if not names:
                return None
            if len(names) == 1:  # an equality: the stores narrow their read to that metric
                out.append(Matcher(NAME, "=", next(iter(names))))
            else:
                out.append(Matcher(NAME, "=~", "|".join(re2.escape(n) for n in sorted(names))))
        return out

    def _names_matching(self, op: str, value: str) -> list[str]:
        """Stored metric names whose PromQL spelling (or, for ``=``, stored spelling) matches."""
        if self._names is None:
            self._names = self.store.metric_names(self.tenant)
        try:
            m = Matcher(NAME, op, value)
        except InvalidMatcher as e:
            raise PromQLError(str(e)) from None
        if op == "=":
            return [n for n in self._names if n == value or promql_name(n) == value]
        return [n for n in self._names if m.matches(promql_name(n))]

    def _read(self, vs: pp.VectorSelector, from_ms: int, to_ms: int) -> list[SeriesArrays]:
        """The points of the selector's series in ``[from_ms, to_ms]``, counted against the limits."""
        ms = self.matchers(vs)
        if ms is None or to_ms < from_ms:
            return []
        found = self.store.select_arrays(self.tenant, ms, from_ms, to_ms)
        self.budget.add(len(found), sum(len(s.t) for s in found))
        return found

    def _times(self, at: pp.AtModifier | None) -> I64:
        """The evaluation times of a selector or subquery: the grid's, or the one time of its ``@``."""
        if at is None:
            return self.grid.array()
        if at.type == pp.AtModifierType.Start:
            ms = self.query_grid.start_ms
        elif at.type == pp.AtModifierType.End:
            ms = self.query_grid.end_ms
        else:
            ms = at_ms(at)
        return np.array([ms], dtype=np.int64)

    def _widen(self, values: F64, present: Mask) -> tuple[F64, Mask]:
        """Columns computed at one ``@`` time, repeated over every step of the grid."""
        n = self.grid.n
        if values.shape[1] == n:
            return values, present
        return np.repeat(values, n, axis=1), np.repeat(present, n, axis=1)

    def _instant(self, vs: pp.VectorSelector, sample_times: bool = False) -> Vector:
        """An instant selector (:func:`lookup` per series); with ``sample_times`` the value is the
        time of the sample taken, in seconds (``timestamp()``)."""
        at = self._times(vs.at) - _ms(vs.offset)
        found = self._read(vs, int(at[0]) - self.lookback_ms + 1, int(at[-1]))
        labels = [{**s.labels, NAME: promql_name(s.metric)} for s in found]
        values = np.empty((len(found), len(at)))
        present = np.zeros((len(found), len(at)), dtype=bool)
        for i, s in enumerate(found):
            values[i], present[i] = lookup(s.t, s.v, at, self.lookback_ms, times=sample_times)
        if sample_times:
            values /= 1000
        return make_vector(labels, *self._widen(values, present))

    def raw_arrays(self, ms: pp.MatrixSelector) -> list[SeriesArrays]:
        """Samples a range selector needs over the whole grid: ``(start - range - offset, end - offset]``
        (staleness markers left out)."""
        vs = ms.vector_selector
        ends = self._times(vs.at) - _ms(vs.offset)
        return without_stale(self._read(vs, int(ends[0]) - _ms(ms.range) + 1, int(ends[-1])))

    def raw(
        self, e: pp.MatrixSelector | pp.SubqueryExpr
    ) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
        """A range vector's points in ``(T - range, T]`` of the grid's one time T, as
        ``(labels, [(t, v), ...])`` (the labels with ``__name__``)."""
        found, ends, rng = self._range_arg(e)
        end = int(ends[-1])
        out = []
        for s in found:
            keep = (s.t > end - rng) & (s.t <= end)
            if keep.any():
                pts = list(zip(s.t[keep].tolist(), s.v[keep].tolist(), strict=True))
                out.append((_full_labels(s), pts))
        out.sort(key=lambda row: key_of(row[0]))
        return out

    def _range_arg(self, e: pp.Expr) -> tuple[list[SeriesArrays], I64, int]:
        """A range vector argument: its series' points, the end of its window at each step (one end
        when fixed by ``@``) and its range."""
        e = _unparen(e)
        if isinstance(e, pp.MatrixSelector):
            vs = e.vector_selector
            return self.raw_arrays(e), self._times(vs.at) - _ms(vs.offset), _ms(e.range)
        if isinstance(e, pp.SubqueryExpr):
            return self._subquery(e)
        raise PromQLError(f"expected a range vector, got {type(e).__name__}")

    def _subquery(self, sq: pp.SubqueryExpr) -> tuple[list[SeriesArrays], I64, int]:
        rng, off = _ms(sq.range), _ms(sq.offset)
        step = _ms(sq.step) or SUBQUERY_STEP_MS
        ends = self._times(sq.at) - off
        first = int(ends[0]) - rng
        # Prometheus 3: the first multiple of the step after the first window's (open) start
        start = step * (first // step)
        if start <= first:
            start += step
        end = int(ends[-1])
        if start > end:
            return [], ends, rng
        inner = Grid(start, end, step)
        if inner.n > self.budget.limits.max_samples:
            self.budget.add(0, inner.n)
        ev = Evaluator(
            self.store, self.tenant, inner, self.lookback_ms, budget=self.budget, query_grid=self.query_grid
        )
        v = ev.vector(sq.expr)
        times = inner.array()
        self.budget.add(0, int(v.present.sum()))
        found = []
        for lab, vals, pres in zip(v.labels, v.values, v.present, strict=True):
            if pres.any():
                found.append(SeriesArrays(lab.get(NAME, ""), drop_name(lab), times[pres], vals[pres]))
        return found, ends, rng

    # functions

    def _call(self, call: pp.Call) -> Value:
        name = call.func.name
        args = list(call.args)
        g = self.grid
        if name in RANGE_FUNCS:
            return self._range_call(name, args)
        if name == "time":
            return Scalar([t / 1000 for t in g.times()])
        if name == "pi":
            return Scalar([math.pi] * g.n)
        if name == "vector":
            s = self.scalar(args[0])
            return Vector([{}], s[None, :], np.ones((1, g.n), dtype=bool))
        if name == "scalar":
            v = self.vector(args[0])
            one = v.present.sum(axis=0) == 1
            val = np.where(v.present, v.values, 0.0).sum(axis=0) if len(v.labels) else np.zeros(g.n)
            return Scalar(np.where(one, val, math.nan).tolist())
        if name in promfuncs.MATH:
            v = self.vector(args[0])
            return make_vector(_names_dropped(v), promfuncs.apply_math(name, v.values), v.present)
        if name in promfuncs.DATE_FUNCS:
            if args:
                v = self.vector(args[0])
                labels = _names_dropped(v)
            else:
                v = Vector([{}], (g.array() / 1000)[None, :], np.ones((1, g.n), dtype=bool))
                labels = [{}]
            return make_vector(labels, promfuncs.date_part(name, v.values), v.present)
        if name == "timestamp":
            arg = _unparen(args[0])
            if isinstance(arg, pp.VectorSelector):
                v = self._instant(arg, sample_times=True)
            else:
                v = self.vector(arg)
                v = Vector(v.labels, np.broadcast_to(g.array() / 1000, v.values.shape).copy(), v.present)
            return make_vector(_names_dropped(v), v.values, v.present)
        if name == "round":
            v = self.vector(args[0])
            to = self.scalar(args[1]) if len(args) > 1 else np.ones(g.n)
            return make_vector(_names_dropped(v), promfuncs.round_to(v.values, to[None, :]), v.present)
        if name in ("clamp", "clamp_min", "clamp_max"):
            return self._clamp(name, args)
        if name == "histogram_quantile":
            return self._histogram_quantile(self.scalar(args[0]), self.vector(args[1]))
        if name in NATIVE_HISTOGRAM_FUNCS:
            # "Samples that are not native histograms are ignored": every stored sample is a float
            for a in args[:-1]:
                self.scalar(a)
            self.vector(args[-1])
            return Vector.empty(g.n)
        if name == "info":
            return self._info(args)
        if name == "label_replace":
            return self._label_replace(args)
        if name == "label_join":
            return self._label_join(args)
        if name in ("sort", "sort_desc", "sort_by_label", "sort_by_label_desc"):
            return self.vector(args[0])  # the order is the API's business (see instant_order)
        if name == "absent":
            v = self.vector(args[0])
            none: Mask = v.present.sum(axis=0) == 0
            return make_vector([_absent_labels(args[0])], np.ones((1, g.n)), none[None, :])
        raise Unsupported(f"function {name}()")

    def _range_call(self, name: str, args: list[pp.Expr]) -> Vector:
        g = self.grid
        arg_at = {"quantile_over_time": 1}.get(name, 0)
        found, ends, rng = self._range_arg(args[arg_at])
        if rng <= 0:
            raise PromQLError("range must be positive")
        extra = [self.scalar(a) for i, a in enumerate(args) if i != arg_at]
        if name == "absent_over_time":
            _, present = range_function("present_over_time", found, ends, rng)
            nothing: Mask = present.sum(axis=0) == 0
            none = nothing[None, :]
            return make_vector([_absent_labels(args[0])], *self._widen(np.ones(none.shape), none))
        # one computation per distinct value of the scalar arguments (they may vary with the step)
        values = np.empty((len(found), g.n))
        present = np.zeros((len(found), g.n), dtype=bool)
        cols_by: dict[tuple[float, ...], list[int]] = {}
        for k in range(g.n):
            cols_by.setdefault(tuple(float(x[k]) for x in extra), []).append(k)
        off = _range_offset(args[arg_at])
        for key, cols in cols_by.items():
            fn = _parametrised(name, key, off)
            if len(ends) == 1:
                v1, p1 = range_function(name, found, ends, rng, key[0] if key else 0.0, fn)
                values[:, cols], present[:, cols] = v1, p1
            else:
                idx = np.array(cols)
                vk, pk = range_function(name, found, ends[idx], rng, key[0] if key else 0.0, fn)
                values[:, idx], present[:, idx] = vk, pk
        keep_name = name in ("last_over_time", "first_over_time")
        labels = [_full_labels(s) if keep_name else dict(s.labels) for s in found]
        return make_vector(labels, values, present)

    def _clamp(self, name: str, args: list[pp.Expr]) -> Vector:
        v = self.vector(args[0])
        n = self.grid.n
        lo = self.scalar(args[1]) if name in ("clamp", "clamp_min") else np.full(n, -math.inf)
        hi = self.scalar(args[-1]) if name in ("clamp", "clamp_max") else np.full(n, math.inf)
        if name == "clamp_min":
            out = np.maximum(lo[None, :], v.values)  # Go: math.Max(min, v)
        elif name == "clamp_max":
            out = np.minimum(hi[None, :], v.values)
        else:
            out = promfuncs.clamp(v.values, lo[None, :], hi[None, :])
        present = v.present & ~(hi < lo)[None, :] if name == "clamp" else v.present
        return make_vector(_names_dropped(v), out, present)

    def _histogram_quantile(self, q: F64, v: Vector) -> Vector:
        """Per group of series equal but for ``le`` (and the name), the quantile over the buckets
        present at each step (:func:`promfuncs.bucket_quantile`)."""
        groups: dict[Key, tuple[Labels, list[tuple[float, int]]]] = {}
        for i, lab in enumerate(v.labels):
            le = _parse_le(lab.get("le"))
            if le is None:
                continue  # Prometheus ignores a series without a valid le
            rest = {k: x for k, x in lab.items() if k not in ("le", NAME)}
            groups.setdefault(key_of(rest), (rest, []))[1].append((le, i))
        labels, rows_v, rows_p = [], [], []
        for rest, members in groups.values():
            bounds = sorted({le for le, _ in members})
            at = {b: j for j, b in enumerate(bounds)}
            counts = np.zeros((len(bounds), self.grid.n))
            present = np.zeros((len(bounds), self.grid.n), dtype=bool)
            for le, i in members:  # two series with one bound: their counts add up (coalesceBuckets)
                j = at[le]
                counts[j] = np.where(v.present[i], counts[j] + v.values[i], counts[j])
                present[j] |= v.present[i]
            upper = np.array(bounds, dtype=np.float64)
            labels.append(rest)
            rows_v.append(promfuncs.bucket_quantile(q, upper, counts, present))
            rows_p.append(present.any(axis=0))
        if not labels:
            return Vector.empty(self.grid.n)
        return make_vector(labels, np.vstack(rows_v), np.vstack(rows_p))

    def _info(self, args: list[pp.Expr]) -> Vector:
        """``info(v [, {data-label selector}])``, Prometheus 3's ``promql/info.go``: each series of
        ``v`` gains the labels of the info series (``target_info`` unless the selector names others)
        with the same identifying labels (``instance``, ``job``: those the series has), the newest
        info sample within the lookback at each step; only the labels the selector names when it
        names some. A series is left out at a step where no info series matches and a selector's
        matcher does not match the empty string; info series in ``v`` itself are left as they are."""
        base = self.vector(args[0])
        data: dict[str, list[Matcher]] = {}
        name_ms: list[Matcher] = []
        if len(args) > 1:
            sel = _unparen(args[1])
            if not isinstance(sel, pp.VectorSelector):
                raise PromQLError("expected a label selector as the second argument of info()")
            triples = [(m.name, _op(m.op), m.value) for m in sel.matchers.matchers]
            if sel.name:
                triples.append((NAME, "=", sel.name))
            for label, op, value in triples:
                try:
                    m = Matcher(label, op, value)
                except InvalidMatcher as e:
                    raise PromQLError(str(e)) from None
                data.setdefault(label, []).append(m)
                if label == NAME:
                    name_ms.append(m)
        else:
            triples = []
            name_ms = [Matcher(NAME, "=", TARGET_INFO)]
        ignored = [bool(name_ms) and all(m.matches(x.get(NAME, "")) for m in name_ms) for x in base.labels]
        ids: dict[str, set[str]] = {}
        for lab, ign in zip(base.labels, ignored, strict=True):
            if not ign:
                for idl in IDENTIFYING_LABELS:
                    if lab.get(idl):
                        ids.setdefault(idl, set()).add(lab[idl])
        has_name = NAME in data
        data.pop(NAME, None)
        info_labels: list[Labels] = []
        info_t = np.empty((0, self.grid.n))
        info_p = np.zeros((0, self.grid.n), dtype=bool)
        if ids:
            want = [(idl, "=~", "|".join(re2.escape(x) for x in sorted(xs))) for idl, xs in ids.items()]
            want += triples
            if not has_name:
                want.insert(0, (NAME, "=", TARGET_INFO))
            ms = self.store_matchers(want)
            at, off = _info_hints(args[0])
            ends = self._times(at)
            start = int(ends[0]) - self.lookback_ms + 1 - off
            end = int(ends[-1]) - off
            found = []
            if ms is not None and start <= end:
                found = self.store.select_arrays(self.tenant, ms, start, end)
                self.budget.add(len(found), sum(len(s.t) for s in found))
            # the info series as Prometheus evaluates them: at every step (no offset), the time of
            # the newest sample within the lookback, of the samples inside the read's bounds
            grid = self.grid.array()
            info_t = np.empty((len(found), len(grid)))
            info_p = np.zeros((len(found), len(grid)), dtype=bool)
            for i, s in enumerate(found):
                info_t[i], info_p[i] = lookup(s.t, s.v, grid, self.lookback_ms, times=True)
                info_labels.append({**s.labels, NAME: promql_name(s.metric)})
        names = sorted({lab[NAME] for lab in info_labels})

        def sig(name: str, lab: Labels) -> Key:
            return ((NAME, name), *((idl, lab[idl]) for idl in IDENTIFYING_LABELS if lab.get(idl)))

        info_sigs = [sig(lab[NAME], lab) for lab in info_labels]
        base_sigs = [[sig(nm, lab) for nm in names] for lab in base.labels]
        drop_unmatched = any(not m.matches("") for ms_ in data.values() for m in ms_)
        rows: dict[Key, tuple[Labels, F64, Mask]] = {}
        n = self.grid.n
        for k in range(n):  # k: the step
            self.budget.check_time()
            if not base.present[:, k].any():
                continue  # nothing to enrich: Prometheus looks no further (no duplicate error)
            chosen: dict[Key, int] = {}
            for j in np.flatnonzero(info_p[:, k]).tolist():
                sj = info_sigs[j]
                other = chosen.get(sj)
                if other is None or info_t[other, k] < info_t[j, k]:
                    chosen[sj] = j
                elif info_t[other, k] == info_t[j, k]:
                    raise ExecutionError(
                        f"found duplicate series for info metric: existing {fmt_labels(info_labels[other])} "
                        f"@ {int(info_t[other, k])}, new {fmt_labels(info_labels[j])} @ {int(info_t[j, k])}"
                    )
            for i in np.flatnonzero(base.present[:, k]).tolist():
                lab = base.labels[i]
                if not ignored[i]:
                    added: Labels = {}
                    matched = False
                    for sg in base_sigs[i]:
                        chosen_j = chosen.get(sg)
                        if chosen_j is None:
                            continue
                        matched = True
                        for name, value in info_labels[chosen_j].items():
                            if name == NAME or (data and name not in data):
                                continue
                            if added.get(name, value) != value:
                                raise ExecutionError(f"conflicting label: {name}")
                            if name not in lab:
                                added[name] = value
                    if not matched and drop_unmatched:
                        continue
                    lab = {**lab, **added} if added else lab
                key = key_of(lab)
                row = rows.get(key)
                if row is None:
                    row = rows[key] = (lab, np.zeros(n), np.zeros(n, dtype=bool))
                elif row[2][k]:
                    raise ExecutionError("vector cannot contain metrics with the same labelset")
                row[1][k] = base.values[i, k]
                row[2][k] = True
        if not rows:
            return Vector.empty(n)
        return Vector(
            [r[0] for r in rows.values()],
            np.vstack([r[1] for r in rows.values()]),
            np.vstack([r[2] for r in rows.values()]),
        )

    def _label_replace(self, args: list[pp.Expr]) -> Vector:
        v = self.vector(args[0])
        dst, repl, src, regex = (_string(a) for a in args[1:5])
        try:
            pattern = re2.compile(f"^(?s:{regex})$")
        except re2.error as e:
            raise PromQLError(f"invalid regular expression in label_replace(): {regex}: {e}") from None
        if not _LABEL_NAME.fullmatch(dst):
            raise PromQLError(f"invalid destination label name in label_replace(): {dst}")
        labels = []
        for lab in v.labels:
            m = pattern.search(lab.get(src, ""))
            if m is None:
                labels.append(lab)
            else:
                labels.append(vecmatch.set_label(lab, dst, _expand(repl, m)))
        return make_vector(labels, v.values, v.present)

    def _label_join(self, args: list[pp.Expr]) -> Vector:
        v = self.vector(args[0])
        dst, sep, *srcs = (_string(a) for a in args[1:])
        if not _LABEL_NAME.fullmatch(dst):
            raise PromQLError(f"invalid destination label name in label_join(): {dst}")
        for s in srcs:
            if not _LABEL_NAME.fullmatch(s):
                raise PromQLError(f"invalid source label name in label_join(): {s}")
        labels = [vecmatch.set_label(lab, dst, sep.join(lab.get(s, "") for s in srcs)) for lab in v.labels]
        return make_vector(labels, v.values, v.present)

    # aggregation

    def _aggregate(self, agg: pp.AggregateExpr) -> Vector:
        op = str(agg.op)
        param: F64 | None = None
        label = ""
        if op == "count_values":
            assert agg.param is not None
            label = _string(agg.param)
            if not _LABEL_NAME.fullmatch(label):
                raise PromQLError(f"invalid label name {label!r}")
        elif agg.param is not None:
            param = self.scalar(agg.param)
        inner = self.vector(agg.expr)
        by: set[str] | None = None
        without: set[str] = set()
        if agg.modifier is not None:
            if agg.modifier.type == pp.AggModifierType.By:
                by = set(agg.modifier.labels)
            else:
                without = {*agg.modifier.labels, NAME}
        groups: dict[Key, int] = {}
        glabels: list[dict[str, str]] = []
        gid = np.empty(len(inner.labels), dtype=np.int64)
        for i, labels in enumerate(inner.labels):
            if by is not None:
                g = {k: v for k, v in labels.items() if k in by}
            else:
                g = {k: v for k, v in labels.items() if k not in without} if without else {}
            k = key_of(g)
            if k not in groups:
                groups[k] = len(glabels)
                glabels.append(g)
            gid[i] = groups[k]
        ng = len(glabels)
        if op in AGGREGATIONS:
            values, present = aggregate(op, inner.values, inner.present, gid, ng)
        elif op in ("stddev", "stdvar"):
            values, present = promagg.stdvar(inner.values, inner.present, gid, ng, op == "stddev")
        elif op == "group":
            values, present = promagg.group(inner.present, gid, ng)
        elif op == "quantile":
            assert param is not None
            values, present = promagg.quantile(param, inner.values, inner.present, gid, ng)
        elif op == "limit_ratio":
            assert param is not None
            if np.isnan(param).any():
                raise PromQLError("Ratio value NaN is NaN")
            ratio = np.clip(param, -1.0, 1.0)  # Prometheus warns and clamps a ratio outside [-1, 1]
            offsets = np.array([promhash.sample_offset(lab) for lab in inner.labels])
            keep = inner.present & promagg.ratio_keep(ratio, offsets)
            return make_vector(inner.labels, inner.values, keep)
        elif op in ("topk", "bottomk", "limitk"):
            assert param is not None
            _check_k(param)
            if op == "limitk":
                keep = promagg.limit(param, inner.present, gid, ng)
            else:
                keep = promagg.top(param, inner.values, inner.present, gid, ng, op == "topk")
            return make_vector(inner.labels, inner.values, keep)
        elif op == "count_values":
            return self._count_values(label, inner, gid, glabels)
        else:
            raise Unsupported(f"aggregation {op}")
        return Vector(glabels, values, present)

    def _count_values(self, label: str, inner: Vector, gid: I64, glabels: list[Labels]) -> Vector:
        """Per group and step, how many series have each value; one series per (group, value), the
        value (printed as Prometheus prints it) in ``label``."""
        groups, values, counts = promagg.count_values(inner.values, inner.present, gid)
        if not len(groups):
            return Vector.empty(self.grid.n)
        texts = format_values(values.tolist())
        labels = [{**glabels[g], label: t} for g, t in zip(groups.tolist(), texts, strict=True)]
        return make_vector(labels, counts, counts > 0)

    # binary operators

    def _binary(self, b: pp.BinaryExpr) -> Value:
        op = str(b.op)
        mod = b.modifier
        return_bool = bool(mod and mod.return_bool)
        lhs, rhs = self.eval(b.lhs), self.eval(b.rhs)
        is_cmp = op in COMPARE
        if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
            if is_cmp and not return_bool:
                raise PromQLError("comparisons between scalars must use the bool modifier")
            fn = binop(op)
            return Scalar([fn(x, y) for x, y in zip(lhs.values, rhs.values, strict=True)])
        if isinstance(lhs, Vector) and isinstance(rhs, Vector):
            if op in SET_OPS:
                return vecmatch.set_operation(op, lhs, rhs, mod)
            return vecmatch.vector_binop(op, lhs, rhs, mod, return_bool)
        vec, sc, scalar_left = (lhs, rhs, False) if isinstance(lhs, Vector) else (rhs, lhs, True)
        assert isinstance(vec, Vector) and isinstance(sc, Scalar)
        s = np.array(sc.values, dtype=np.float64)[None, :]
        filtering = is_cmp and not return_bool
        r = (
            binop_arrays(op, s, vec.values, vec.present)
            if scalar_left
            else binop_arrays(op, vec.values, s, vec.present)
        )
        if filtering:
            values, present = vec.values, vec.present & (r == 1.0)
            labels = vec.labels
        else:
            values, present = r, vec.present
            labels = vec.labels if op == "atan2" else _names_dropped(vec)
        return make_vector(labels, values, present)


def evaluate(store: Store, tenant: str, expr: pp.Expr, grid: Grid) -> Value:
    return Evaluator(store, tenant, grid).eval(expr)


def instant_raw(
    store: Store,
    tenant: str,
    expr: pp.MatrixSelector | pp.SubqueryExpr,
    at_ms: int,
    limits: Limits | None = None,
) -> RawMatrix:
    """A range vector at the top of an instant query: its points in ``(at - range, at]``."""
    ev = Evaluator(store, tenant, Grid(at_ms, at_ms, 1), limits=limits)
    return RawMatrix(ev.raw(expr))


def instant_order(expr: pp.Expr, v: Vector) -> list[int]:
    """The order of an instant query's series: by labels, or as the outermost ``sort``,
    ``sort_desc``, ``sort_by_label`` or ``sort_by_label_desc`` asks (NaN last, as Prometheus 3)."""
    by_labels = sorted(range(len(v.labels)), key=lambda i: key_of(v.labels[i]))
    e = _unparen(expr)
    if not isinstance(e, pp.Call):
        return by_labels
    name = e.func.name
    if name in ("sort", "sort_desc"):
        vals = v.values[:, 0]
        desc = name == "sort_desc"
        return sorted(by_labels, key=lambda i: (math.isnan(vals[i]), -vals[i] if desc else vals[i]))
    if name in ("sort_by_label", "sort_by_label_desc"):
        names = [_string(a) for a in e.args[1:]]
        keyed = sorted(by_labels, key=lambda i: [_natural(v.labels[i].get(n, "")) for n in names])
        return keyed[::-1] if name == "sort_by_label_desc" else keyed
    return by_labels


def _natural(s: str) -> list[tuple[int, int | str]]:
    """A natural-order key: digit runs compare as numbers (``a2`` before ``a10``)."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|\D+", s)]


# --- helpers of the evaluator -----------------------------------------------------------------------

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_EXPAND = re.compile(r"\$(?:\$|\{([a-zA-Z0-9_]+)\}|([a-zA-Z0-9_]+))")


def _expand(template: str, m: re2._Match[str]) -> str:
    """Go's ``Regexp.ExpandString``: ``$1``, ``${1}``, ``$name``, ``${name}`` and ``$$``; a name
    takes as many name characters as follow (``$1x`` is the group named ``1x``: empty)."""

    def one(r: re.Match[str]) -> str:
        if r.group(0) == "$$":
            return "$"
        ref = r.group(1) or r.group(2)
        try:
            got = m.group(int(ref)) if ref.isdigit() else m.group(ref)
        except (IndexError, KeyError, ValueError):
            return ""
        return got or ""

    return _EXPAND.sub(one, template)


def _string(e: pp.Expr) -> str:
    e = _unparen(e)
    if not isinstance(e, pp.StringLiteral):
        raise PromQLError(f"expected a string, got {type(e).__name__}")
    return str(e.val)


def _parse_le(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _check_k(k: F64) -> None:
    if np.isnan(k).any():
        raise PromQLError("Parameter value is NaN")
    if (np.abs(k) >= 2.0**63).any():
        raise PromQLError("Scalar value overflows int64")


def _absent_labels(arg: pp.Expr) -> Labels:
    """The labels ``absent()`` answers with: those of the selector's equality matchers (as
    Prometheus: a label with any other matcher, or with two, gets none)."""
    e = _unparen(arg)
    if isinstance(e, pp.MatrixSelector):
        e = e.vector_selector
    elif isinstance(e, pp.SubqueryExpr) and isinstance(_unparen(e.expr), pp.VectorSelector):
        e = _unparen(e.expr)
    if not isinstance(e, pp.VectorSelector):
        return {}
    out: Labels = {}
    for m in e.matchers.matchers:
        if m.name == NAME:
            continue
        if _op(m.op) == "=" and m.name not in out:
            out[m.name] = m.value
        else:
            out.pop(m.name, None)
    return out


TARGET_INFO = "target_info"
IDENTIFYING_LABELS = ("instance", "job")


def _info_hints(e: pp.Expr) -> tuple[pp.AtModifier | None, int]:
    """The ``@`` and the offset of the first selector in ``e`` (Prometheus' ``infoSelectHints``):
    they bound the read of the info series."""
    e = _unparen(e)
    if isinstance(e, pp.VectorSelector):
        return e.at, _ms(e.offset)
    children: list[pp.Expr] = []
    if isinstance(e, (pp.UnaryExpr, pp.SubqueryExpr)):
        children = [e.expr]
    elif isinstance(e, pp.MatrixSelector):
        children = [e.vector_selector]
    elif isinstance(e, pp.Call):
        children = list(e.args)
    elif isinstance(e, pp.AggregateExpr):
        children = [e.expr] if e.param is None else [e.param, e.expr]
    elif isinstance(e, pp.BinaryExpr):
        children = [e.lhs, e.rhs]
    for c in children:  # depth first, in order (Prometheus' parser.Inspect)
        if _first_selector_in(c):
            return _info_hints(c)
    return None, 0


def _first_selector_in(e: pp.Expr) -> bool:
    return any(isinstance(n, pp.VectorSelector) for n in _walk(e))


def _range_offset(e: pp.Expr) -> int:
    e = _unparen(e)
    if isinstance(e, pp.MatrixSelector):
        return _ms(e.vector_selector.offset)
    if isinstance(e, pp.SubqueryExpr):
        return _ms(e.offset)
    return 0


def _parametrised(name: str, key: tuple[float, ...], offset_ms: int) -> RangeArrays | None:
    """The array function of a range function with scalar arguments, for one value of them."""
    if name == "predict_linear":
        return promrange.predict_linear(key[0], offset_ms)
    if name in ("double_exponential_smoothing", "holt_winters"):
        sf, tf = key
        if not 0 < sf < 1:
            raise PromQLError(f"invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:f}")
        if not 0 < tf < 1:
            raise PromQLError(f"invalid trend factor. Expected: 0 < tf < 1, got: {tf:f}")
        return promrange.double_exponential_smoothing(sf, tf)
    return None


def _full_labels(s: SeriesArrays) -> Labels:
    """A read series' labels with its (PromQL) name; a subquery's points carry the name as
    their metric, or none."""
    return {**s.labels, NAME: promql_name(s.metric)} if s.metric else dict(s.labels)


def _names_dropped(v: Vector) -> list[Labels]:
    return [drop_name(lab) for lab in v.labels]


# Prometheus' staleness marker: the NaN (one bit pattern of many) that a scraper writes when a target
# or series disappears. It is not a value: range windows skip it, and it ends an instant selector's
# lookback (the series has no value until its next real sample). Any other NaN is a value.
STALE_NAN_BITS = 0x7FF0000000000002
STALE_NAN = float(np.array([STALE_NAN_BITS], dtype=np.uint64).view(np.float64)[0])


def is_stale(v: F64) -> Mask:
    """Which entries of ``v`` are staleness markers (compared by bits: NaN equals nothing)."""
    out: Mask = np.ascontiguousarray(v, dtype=np.float64).view(np.uint64) == STALE_NAN_BITS
    return out


def without_stale(found: list[SeriesArrays]) -> list[SeriesArrays]:
    """``found`` without its staleness markers (and without the series left with no point)."""
    out = []
    for s in found:
        stale = is_stale(s.v)
        if not stale.any():
            out.append(s)
        elif not stale.all():
            keep = ~stale
            out.append(SeriesArrays(s.metric, s.labels, s.t[keep], s.v[keep]))
    return out


def lookup(t: I64, v: F64, at: I64, lookback_ms: int, times: bool = False) -> tuple[F64, Mask]:
    """An instant selector over one series' points: at each ``at[k]`` the newest point in
    ``(at[k] - lookback_ms, at[k]]``, absent when there is none or when it is a staleness marker.
    With ``times``, the values are the points' times (ms)."""
    idx = np.searchsorted(t, at, side="right") - 1
    ok = idx >= 0
    j = np.where(ok, idx, 0)
    if len(t) == 0:
        return np.full(len(at), math.nan), np.zeros(len(at), dtype=bool)
    ok &= t[j] > at - lookback_ms
    vals = v[j]
    ok &= ~is_stale(vals)
    if times:
        return t[j].astype(np.float64), ok
    return vals, ok


# --- range functions, vectorised ---------------------------------------------------------------------


def range_function(
    name: str,
    found: Sequence[SeriesArrays],
    at: I64,
    rng: int,
    q: float = 0.0,
    fn: RangeArrays | None = None,
) -> tuple[F64, Mask]:
    """``name`` (a range function) over the windows ``(at[k] - rng, at[k]]`` of every series of
    ``found``: values and presence, shaped (series, steps). Exactly (bit for bit) what ``_range_fn``
    answers window by window.

    The series are concatenated (series i's points are ``t[starts[i]:starts[i + 1]]``) with one
    sentinel point at the end (t 0, v NaN), so that ``lo`` and ``hi - 1`` of any window, empty or
    not, index a point: the functions gather for every window and mask the result."""
    m, n = len(found), len(at)
    values = np.empty((m, n))
    present = np.zeros((m, n), dtype=bool)
    block = max(1, BLOCK // n)  # series at a time: the temporaries stay in the CPU's cache
    for r0 in range(0, m, block):
        r1 = min(m, r0 + block)
        values[r0:r1], present[r0:r1] = _range_block(fn or _RANGE[name], found[r0:r1], at, rng, q)
    return values, present


BLOCK = 16_384  # windows computed at a time


def _range_block(
    fn: RangeArrays, found: Sequence[SeriesArrays], at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    m = len(found)
    starts = np.zeros(m + 1, dtype=np.int64)
    np.cumsum([len(s.t) for s in found], out=starts[1:])
    t = np.concatenate([*(s.t for s in found), np.zeros(1, dtype=np.int64)]).astype(np.int64, copy=False)
    v = np.concatenate([*(s.v for s in found), np.full(1, math.nan)]).astype(np.float64, copy=False)
    lo, hi = _bounds(found, at, rng, starts[:-1, None])
    with np.errstate(all="ignore"):
        return fn(t, v, starts, lo, hi, at, rng, q)


def _bounds(found: Sequence[SeriesArrays], at: I64, rng: int, offset: I64) -> tuple[I64, I64]:
    """Each window ``(at[k] - rng, at[k]]`` of each series i as indexes ``[lo, hi)`` into its points,
    plus ``offset[i]`` (lo and hi may be views of one array).
    When the range is a multiple ``r`` of the (regular) step, ``at[k] - rng`` is ``at[k - r]``: one
    search over the grid extended ``r`` steps back answers both."""
    m, n = len(found), len(at)
    step = int(at[1] - at[0]) if n > 1 else 0
    r = rng // step if step > 0 and rng % step == 0 else 0
    if 0 < r <= n and bool(np.all(np.diff(at) == step)):
        ext = int(at[0]) - rng + step * np.arange(n + r, dtype=np.int64)
        both = np.empty((m, n + r), dtype=np.int64)
        for i in range(m):  # per series: its points stay in the cache while searched
            both[i] = np.searchsorted(found[i].t, ext, side="right")
        both += offset
        return both[:, :n], both[:, r:]
    lo = np.empty((m, n), dtype=np.int64)
    hi = np.empty((m, n), dtype=np.int64)
    start_at = at - rng
    for i in range(m):
        hi[i] = np.searchsorted(found[i].t, at, side="right")
        lo[i] = np.searchsorted(found[i].t, start_at, side="right")
    lo += offset
    hi += offset
    return lo, hi


RangeArrays = Callable[[I64, F64, I64, I64, I64, I64, int, float], tuple[F64, Mask]]


def _rate_arrays(is_rate: bool, is_counter: bool = True) -> RangeArrays:
    def rate(t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float) -> tuple[F64, Mask]:
        """``_extrapolated_rate`` for every window, the same operations in the same order."""
        cnt = hi - lo
        ok = cnt >= 2
        last = hi - 1
        # Times as floats, exact in any window with points: stored times are at most year 2100
        # (MAX_TIME_MS of the protocols), ranges at most ~292 years, so at and at - rng of such a
        # window are below 2**53 ms too; their differences are then exact, as in Python.
        tf = t.astype(np.float64)
        first_t, last_t = tf[lo], tf[last]
        first_v = v[lo]
        result = v[last]
        result -= first_v
        if is_counter:
            _add_resets(result, v, starts, lo, hi, ok)
        duration_to_start = first_t - (at - rng).astype(np.float64)
        duration_to_start /= 1000
        duration_to_end = at.astype(np.float64) - last_t
        duration_to_end /= 1000
        sampled = last_t - first_t
        sampled /= 1000
        ok &= sampled > 0
        average_between = sampled / np.maximum(cnt - 1, 1)
        duration_to_zero = first_v / result
        duration_to_zero *= sampled
        if is_counter:
            shorter = (result > 0) & (first_v >= 0) & (duration_to_zero < duration_to_start)
            np.copyto(duration_to_start, duration_to_zero, where=shorter)
        threshold = average_between * 1.1
        half = average_between / 2
        interval = np.where(duration_to_start < threshold, duration_to_start, half)
        interval += sampled  # (sampled + to start) + to end, as _extrapolated_rate adds them
        interval += np.where(duration_to_end < threshold, duration_to_end, half)
        interval /= sampled
        result *= interval
        if is_rate:
            result /= rng / 1000
        return result, ok

    return rate


def _add_resets(result: F64, v: F64, starts: I64, lo: I64, hi: I64, ok: Mask) -> None:
    """Counter resets: to each window's ``result`` add, in order, the value before each drop
    (``v[i] < v[i - 1]``) inside the window, as ``_extrapolated_rate`` does."""
    points = v[: starts[-1]]
    drop = np.flatnonzero(points[1:] < points[:-1]) + 1
    drop = drop[~np.isin(drop, starts)]  # not across two series
    if not len(drop):
        return
    rows = np.unique(np.searchsorted(starts, drop, side="right") - 1)  # series with a drop
    lo_r, hi_r = lo[rows], hi[rows]
    a = np.searchsorted(drop, lo_r + 1, side="left")
    nd = np.where(ok[rows], np.searchsorted(drop, hi_r, side="left") - a, 0)
    before = v[drop - 1]
    sub = result[rows]
    for j in range(int(nd.max(initial=0))):
        sel = nd > j
        sub[sel] += before[a[sel] + j]
    result[rows] = sub


def _irate_arrays(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    ok = hi - lo >= 2
    i = hi - 1
    j = np.where(ok, hi - 2, i)
    last, prev = v[i], v[j]
    dt = (t[i] - t[j]) / 1000
    ok &= dt != 0
    return np.where(last < prev, last, last - prev) / dt, ok


def _count_arrays(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    cnt = hi - lo
    return cnt.astype(np.float64), cnt > 0


def _present_arrays(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    ok = hi > lo
    return np.ones(ok.shape), ok


def _last_arrays(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    return v[hi - 1], hi > lo


def _extreme_arrays(is_min: bool) -> RangeArrays:
    def extreme(
        t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
    ) -> tuple[F64, Mask]:
        ok = hi > lo
        return window_extremes(v, lo, hi, ok, is_min), ok

    return extreme


def window_extremes(v: F64, lo: I64, hi: I64, ok: Mask, is_min: bool) -> F64:
    """``min(x for x in v[lo:hi] if not isnan(x))`` (max), NaN when all are NaN, for the non-empty
    windows ``ok``: a sparse table (``level[k][i]`` the extreme of ``v[i : i + 2**k]``), two look-ups
    a window. Like Python's min, the first of equal values wins (which matters for -0.0 and 0.0)."""
    f = np.fmin if is_min else np.fmax
    out = np.full(lo.shape, math.nan)
    if not ok.any():
        return out
    cnt = np.where(ok, hi - lo, 1)
    level = np.frexp(cnt.astype(np.float64))[1] - 1  # floor(log2(cnt))
    table = v
    for k in range(int(level.max()) + 1):
        if k:
            w = 1 << (k - 1)
            table = f(table[:-w], table[w:])
        sel = ok & (level == k)
        if sel.any():
            out[sel] = f(table[lo[sel]], table[hi[sel] - (1 << k)])
    zero = v == 0
    if zero.any() and np.signbit(v[zero]).any() and not np.signbit(v[zero]).all():
        # both signs of zero: the extreme is the window's first zero
        zeros = np.flatnonzero(zero)
        fix = ok & (out == 0)
        out[fix] = v[zeros[np.searchsorted(zeros, lo[fix])]]
    return out


def _sum_arrays(is_avg: bool) -> RangeArrays:
    def total(t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float) -> tuple[F64, Mask]:
        ok = hi > lo
        sums = window_sums(v, starts, lo, hi, ok)
        return (sums / np.where(ok, hi - lo, 1) if is_avg else sums), ok

    return total


def window_sums(v: F64, starts: I64, lo: I64, hi: I64, ok: Mask) -> F64:
    """``_sum(v[lo:hi])`` for the windows ``ok`` (rows: series), exactly: :mod:`exact` where it
    applies, ``_sum`` on the window otherwise (a window with a NaN or an infinity, or values whose
    exact sum does not fit; see :func:`exact.split`). Series are taken in blocks of about a million
    points, so that the limbs of one block are in memory at a time."""
    out = np.zeros(lo.shape)
    finite = np.isfinite(v)
    bad = np.zeros(len(v) + 1, dtype=np.int64)
    np.cumsum(~finite, out=bad[1:])
    slow = ok & (bad[hi] - bad[lo] > 0)
    fast = ok & ~slow
    clean = np.where(finite, v, 0.0)
    m = len(starts) - 1
    i = 0
    while i < m:
        j = int(np.searchsorted(starts, starts[i] + 1_000_000, side="right")) - 1
        j = min(max(j, i + 1), m)
        s0, s1 = int(starts[i]), int(starts[j])
        rows = fast[i:j]
        if rows.any():
            got = exact.window_sums(clean[s0:s1], lo[i:j][rows] - s0, hi[i:j][rows] - s0)
            if got is None:
                slow[i:j] |= rows
            else:
                out[i:j][rows] = got
        i = j
    if slow.any():
        vl = v.tolist()
        rows_i, cols_k = np.nonzero(slow)
        lo_l, hi_l = lo[rows_i, cols_k].tolist(), hi[rows_i, cols_k].tolist()
        out[rows_i, cols_k] = [_sum(vl[a:b]) for a, b in zip(lo_l, hi_l, strict=True)]
    return out


def _stdvar_arrays(is_dev: bool) -> RangeArrays:
    def spread(
        t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
    ) -> tuple[F64, Mask]:
        """``_stdvar``: the mean as ``avg_over_time``, then the squared deviations summed in order,
        one sample position at a time over every window."""
        ok = hi > lo
        cnt = np.where(ok, hi - lo, 0)
        mean = window_sums(v, starts, lo, hi, ok) / np.maximum(cnt, 1)
        acc = np.zeros(lo.shape)
        for j in range(int(cnt.max(initial=0))):
            sel = cnt > j
            d = v[lo[sel] + j] - mean[sel]
            acc[sel] += d * d
        var = acc / np.maximum(cnt, 1)
        return (np.sqrt(var) if is_dev else var), ok

    return spread


def _quantile_arrays(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    """Per window in Python (a sort each): ``_quantile``."""
    ok = hi > lo
    out = np.zeros(lo.shape)
    if ok.any():
        vl = v.tolist()
        idx = np.nonzero(ok)
        pairs = zip(lo[idx].tolist(), hi[idx].tolist(), strict=True)
        out[idx] = [_quantile(q, vl[a:b]) for a, b in pairs]
    return out, ok


_RANGE: dict[str, RangeArrays] = {
    "rate": _rate_arrays(True),
    "increase": _rate_arrays(False),
    "irate": _irate_arrays,
    "avg_over_time": _sum_arrays(True),
    "sum_over_time": _sum_arrays(False),
    "min_over_time": _extreme_arrays(True),
    "max_over_time": _extreme_arrays(False),
    "count_over_time": _count_arrays,
    "last_over_time": _last_arrays,
    "stddev_over_time": _stdvar_arrays(True),
    "stdvar_over_time": _stdvar_arrays(False),
    "quantile_over_time": _quantile_arrays,
    "present_over_time": _present_arrays,
    "delta": _rate_arrays(False, is_counter=False),
    "idelta": promrange.idelta,
    "deriv": promrange.deriv,
    "changes": promrange.changes,
    "resets": promrange.resets,
    "first_over_time": promrange.first_over_time,
    "mad_over_time": promrange.mad_over_time,
    "ts_of_first_over_time": promrange.ts_of_first_over_time,
    "ts_of_last_over_time": promrange.ts_of_last_over_time,
    "ts_of_max_over_time": promrange.ts_of_extreme(True),
    "ts_of_min_over_time": promrange.ts_of_extreme(False),
}


# --- aggregation and binary operators, vectorised ----------------------------------------------------


def aggregate(op: str, values: F64, present: Mask, gid: I64, groups: int) -> tuple[F64, Mask]:
    """``_agg(op, xs)`` per group and step, ``xs`` the group's present values in series order;
    shaped (groups, steps). Bit for bit what ``_agg`` answers."""
    m, n = values.shape
    block = max(1, 4 * BLOCK // max(m, 1))  # steps at a time: the temporaries stay in the CPU's cache
    if n <= block:
        return _aggregate_block(op, values, present, gid, groups)
    out = np.empty((groups, n))
    out_present = np.empty((groups, n), dtype=bool)
    for k0 in range(0, n, block):
        k1 = min(n, k0 + block)
        got = _aggregate_block(op, values[:, k0:k1], present[:, k0:k1], gid, groups)
        out[:, k0:k1], out_present[:, k0:k1] = got
    return out, out_present


def _aggregate_block(op: str, values: F64, present: Mask, gid: I64, groups: int) -> tuple[F64, Mask]:
    n = values.shape[1]
    if groups == 0:
        return np.empty((0, n)), np.zeros((0, n), dtype=bool)
    order = np.argsort(gid, kind="stable")
    gsorted = gid[order]
    first = np.flatnonzero(np.r_[True, gsorted[1:] != gsorted[:-1]])
    vals, pres = values[order], present[order]
    count = np.add.reduceat(pres.astype(np.int64), first, axis=0)
    out_present = count > 0
    with np.errstate(all="ignore"):
        if op == "count":
            return count.astype(np.float64), out_present
        if op in ("min", "max"):
            f = np.fmin if op == "min" else np.fmax
            out = f.reduceat(np.where(pres, vals, math.nan), first, axis=0)
            zero = pres & (vals == 0)
            if zero.any() and np.signbit(vals[zero]).any() and not np.signbit(vals[zero]).all():
                slow = out_present & (out == 0)  # both signs of zero: the first one wins
                _agg_cells(op, out, slow, vals, pres, first)
            return out, out_present
        # sum, avg
        finite = np.isfinite(vals)
        nonfinite = np.add.reduceat((pres & ~finite).astype(np.int64), first, axis=0) > 0
        out = np.zeros((groups, n))
        got = exact.split(np.where(pres & finite, vals, 0.0))
        if got is None:
            slow = out_present
        else:
            limbs, c0 = got
            out = exact.to_float(np.add.reduceat(limbs, first, axis=1), c0)
            slow = out_present & nonfinite
        _agg_cells("sum", out, slow, vals, pres, first)
        if op == "avg":
            out = out / np.maximum(count, 1)
        return out, out_present


def _agg_cells(op: str, out: F64, cells: Mask, vals: F64, pres: Mask, first: I64) -> None:
    """``out[g, k] = _agg(op, xs)`` in Python, for the few cells where the vectorised way differs."""
    bounds = np.r_[first, len(vals)].tolist()
    for g, k in zip(*(x.tolist() for x in np.nonzero(cells)), strict=True):
        col = vals[bounds[g] : bounds[g + 1], k]
        xs = col[pres[bounds[g] : bounds[g + 1], k]].tolist()
        out[g, k] = _agg(op, xs)


# --- helpers -----------------------------------------------------------------------------------------


def _op(op: pp.MatchOp) -> str:
    # (MatchOp values are not hashable)
    if op == pp.MatchOp.Equal:
        return "="
    if op == pp.MatchOp.NotEqual:
        return "!="
    if op == pp.MatchOp.Re:
        return "=~"
    return "!~"


def _ms(d: timedelta | None) -> int:
    return 0 if d is None else round(d.total_seconds() * 1000)


def _unary_minus(v: Value) -> Value:
    if isinstance(v, Scalar):
        return Scalar([-x for x in v.values])
    # the name goes; two series left with one labelset are an error where both have a value (as
    # Prometheus), one series where they never do at the same step
    return make_vector([drop_name(lab) for lab in v.labels], -v.values, v.present)


def _agg(op: str, xs: list[float]) -> float:
    if op == "sum":
        return _sum(xs)
    if op == "avg":
        return _sum(xs) / len(xs)
    if op == "count":
        return float(len(xs))
    if op == "min":
        real = [x for x in xs if not math.isnan(x)]
        return min(real) if real else math.nan
    real = [x for x in xs if not math.isnan(x)]
    return max(real) if real else math.nan


# The per-window definitions: the reference the array code above matches (see the module doc).
RangeFn = Callable[[list[int], list[float], int, int, int, int], "float | None"]


def _range_fn(name: str, args: Sequence[pp.Expr]) -> RangeFn:
    if name in ("rate", "increase"):
        is_rate = name == "rate"

        def rate(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
            return _extrapolated_rate(ts, vs, lo, hi, at, rng, is_rate)

        return rate
    if name == "delta":

        def delta(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
            return _extrapolated_rate(ts, vs, lo, hi, at, rng, False, is_counter=False)

        return delta
    if name == "irate":
        return _irate
    if name in _MORE_REFERENCES:
        return _MORE_REFERENCES[name]
    if name == "quantile_over_time":
        q_expr = _unparen(args[0])
        assert isinstance(q_expr, pp.NumberLiteral)
        q = float(q_expr.val)

        def quantile(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
            return _quantile(q, vs[lo:hi])

        return quantile
    simple: dict[str, Callable[[list[float]], float]] = {
        "avg_over_time": lambda xs: _sum(xs) / len(xs),
        "min_over_time": lambda xs: min((x for x in xs if not math.isnan(x)), default=math.nan),
        "max_over_time": lambda xs: max((x for x in xs if not math.isnan(x)), default=math.nan),
        "sum_over_time": _sum,
        "count_over_time": lambda xs: float(len(xs)),
        "last_over_time": lambda xs: xs[-1],
        "stddev_over_time": lambda xs: math.sqrt(_stdvar(xs)),
        "stdvar_over_time": _stdvar,
        "present_over_time": lambda xs: 1.0,
    }
    f = simple[name]

    def over(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
        return f(vs[lo:hi])

    return over


def _sum(xs: list[float]) -> float:
    """Compensated sum; fsum refuses infinities and NaN, and raises OverflowError when a partial sum
    leaves the float range (two values of 1e308), where plain sum gives the IEEE answer (+Inf, as
    Prometheus answers)."""
    if not all(map(math.isfinite, xs)):
        return sum(xs)
    try:
        return math.fsum(xs)
    except OverflowError:
        return sum(xs)


def _stdvar(xs: list[float]) -> float:
    mean = _sum(xs) / len(xs)
    # d * d, not d ** 2: float ** raises OverflowError where * gives +Inf
    return sum((x - mean) * (x - mean) for x in xs) / len(xs)


def _quantile(q: float, xs: list[float]) -> float:
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    s = [x for x in xs if math.isnan(x)] + sorted(x for x in xs if not math.isnan(x))  # Go: NaN first
    rank = q * (len(s) - 1)
    lower = max(0, math.floor(rank))
    upper = min(len(s) - 1, lower + 1)
    weight = rank - math.floor(rank)
    return s[lower] * (1 - weight) + s[upper] * weight


def _irate(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
    if hi - lo < 2:
        return None
    last, prev = vs[hi - 1], vs[hi - 2]
    dt = (ts[hi - 1] - ts[hi - 2]) / 1000
    if dt == 0:
        return None
    return (last if last < prev else last - prev) / dt


def _extrapolated_rate(
    ts: list[int],
    vs: list[float],
    lo: int,
    hi: int,
    at: int,
    rng: int,
    is_rate: bool,
    is_counter: bool = True,
) -> float | None:
    """Prometheus' extrapolatedRate: for counters (rate and increase) and gauges (delta)."""
    if hi - lo < 2:
        return None
    first_t, last_t = ts[lo], ts[hi - 1]
    first_v = vs[lo]
    result = vs[hi - 1] - first_v
    prev = first_v
    for i in range(lo + 1, hi):
        v = vs[i]
        if v < prev and is_counter:
            result += prev
        prev = v
    range_start = at - rng
    duration_to_start = (first_t - range_start) / 1000
    duration_to_end = (at - last_t) / 1000
    sampled = (last_t - first_t) / 1000
    if sampled <= 0:
        return None
    average_between = sampled / (hi - lo - 1)
    if is_counter and result > 0 and first_v >= 0:
        duration_to_zero = sampled * (first_v / result)
        if duration_to_zero < duration_to_start:
            duration_to_start = duration_to_zero
    threshold = average_between * 1.1
    interval = sampled
    interval += duration_to_start if duration_to_start < threshold else average_between / 2
    interval += duration_to_end if duration_to_end < threshold else average_between / 2
    result *= interval / sampled
    if is_rate:
        result /= rng / 1000
    return result


def _idelta(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
    return vs[hi - 1] - vs[hi - 2] if hi - lo >= 2 else None


def _changes(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
    n = 0
    for i in range(lo + 1, hi):
        cur, prev = vs[i], vs[i - 1]
        if cur != prev and not (math.isnan(cur) and math.isnan(prev)):
            n += 1
    return float(n)


def _resets(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
    return float(sum(1 for i in range(lo + 1, hi) if vs[i] < vs[i - 1]))


def _median(xs: list[float]) -> float:
    s = [x for x in xs if math.isnan(x)] + sorted(x for x in xs if not math.isnan(x))
    rank = 0.5 * (len(s) - 1)
    lower = max(0, math.floor(rank))
    upper = min(len(s) - 1, lower + 1)
    weight = rank - math.floor(rank)
    return s[lower] * (1 - weight) + s[upper] * weight


def _mad(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
    med = _median(vs[lo:hi])
    return _median([abs(x - med) for x in vs[lo:hi]])


def _kahan(inc: float, total: float, c: float) -> tuple[float, float]:
    t = total + inc
    if math.isinf(t):
        c = 0.0
    elif abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def linear_regression(ts: list[int], vs: list[float], intercept_ms: int) -> tuple[float, float]:
    """Prometheus' linearRegression, line by line: the reference of :func:`promrange.regression`."""
    n = 0.0
    sx = cx = sy = cy = sxy = cxy = sx2 = cx2 = 0.0
    init_y = vs[0]
    const_y = True
    for i, (t, y) in enumerate(zip(ts, vs, strict=True)):
        if const_y and i > 0 and y != init_y:
            const_y = False
        n += 1.0
        x = (t - intercept_ms) / 1e3
        sx, cx = _kahan(x, sx, cx)
        sy, cy = _kahan(y, sy, cy)
        sxy, cxy = _kahan(x * y, sxy, cxy)
        sx2, cx2 = _kahan(x * x, sx2, cx2)
    if const_y:
        return (math.nan, math.nan) if math.isinf(init_y) else (0.0, init_y)
    sx, sy, sxy, sx2 = sx + cx, sy + cy, sxy + cxy, sx2 + cx2
    with np.errstate(all="ignore"):  # Go's float division: x/0 is ±Inf or NaN, never an error
        f = np.float64
        cov = f(sxy) - f(sx) * f(sy) / f(n)
        var = f(sx2) - f(sx) * f(sx) / f(n)
        slope = cov / var
        intercept = f(sy) / f(n) - slope * f(sx) / f(n)
    return float(slope), float(intercept)


def _deriv(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
    if hi - lo < 2:
        return None
    return linear_regression(ts[lo:hi], vs[lo:hi], ts[lo])[0]


_MORE_REFERENCES: dict[str, RangeFn] = {
    "idelta": _idelta,
    "changes": _changes,
    "resets": _resets,
    "first_over_time": lambda ts, vs, lo, hi, at, rng: vs[lo],
    "mad_over_time": _mad,
    "deriv": _deriv,
    "ts_of_first_over_time": lambda ts, vs, lo, hi, at, rng: ts[lo] / 1000,
    "ts_of_last_over_time": lambda ts, vs, lo, hi, at, rng: ts[hi - 1] / 1000,
    "ts_of_max_over_time": lambda ts, vs, lo, hi, at, rng: _ts_of_extreme(ts, vs, lo, hi, True),
    "ts_of_min_over_time": lambda ts, vs, lo, hi, at, rng: _ts_of_extreme(ts, vs, lo, hi, False),
}


def _ts_of_extreme(ts: list[int], vs: list[float], lo: int, hi: int, largest: bool) -> float:
    """Go's compareOverTime returning the time: the last point at the extreme (``>=``/``<=``)."""
    best, best_t = vs[lo], ts[lo]
    for t, v in zip(ts[lo:hi], vs[lo:hi], strict=True):
        if (v >= best if largest else v <= best) or math.isnan(best):
            best, best_t = v, t
    return best_t / 1000


def format_value(v: float) -> str:
    """A sample value the way Prometheus prints it (Go's FormatFloat(v, 'f', -1, 64))."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    r = repr(v)
    if "e" in r or "E" in r:
        from decimal import Decimal

        r = format(Decimal(r), "f")
    if r.endswith(".0"):
        r = r[:-2]
    return r


def format_values(vs: list[float]) -> list[str]:
    """``[format_value(v) for v in vs]``, faster: msgspec writes the shortest digits that read back
    as the same float (as repr and Go do), in C; written without an exponent, such a number differs
    from Go's 'f' format only by a trailing ``.0``. The others (an ``e``: an exponent; an ``n``: NaN
    and the infinities, which JSON writes as null) take :func:`format_value` one by one."""
    if not vs:
        return []
    text = _FLOATS.encode(vs)[1:-1].decode() + ","
    out = text.replace(".0,", ",")[:-1].split(",")
    if "e" in text or "n" in text:
        for i, tok in enumerate(out):
            if "e" in tok or "n" in tok:
                out[i] = format_value(vs[i])
    return out


_FLOATS = msgspec.json.Encoder()


def matrix_rows(
    value: Value, times: list[int], ts: Callable[[int], float | int]
) -> list[tuple[dict[str, str], list[tuple[float | int, str]]]]:
    """A range query's answer in Prometheus' JSON shape: per series (sorted by labels; a number is
    one series without labels), its labels and ``[[ts(t), "value"], ...]`` over the steps with a
    value; series without any are left out. The points are tuples (msgspec writes them as arrays)."""
    stamps = np.array([ts(t) for t in times], dtype=object)
    rows: list[tuple[dict[str, str], F64, Mask]]
    if isinstance(value, Scalar):
        rows = [({}, np.array(value.values, dtype=np.float64), np.ones(len(times), dtype=bool))]
    else:
        order = sorted(range(len(value.labels)), key=lambda i: key_of(value.labels[i]))
        rows = [(value.labels[i], value.values[i], value.present[i]) for i in order]
    out = []
    for labels, vals, pres in rows:
        if not pres.any():
            continue
        strs = format_values(vals[pres].tolist())
        # tuples (JSON arrays to msgspec): the cyclic GC stops tracking them, where a list per
        # point makes every collection walk all the points built so far
        out.append((labels, list(zip(stamps[pres].tolist(), strs, strict=True))))
    return out


def iter_points(values: Iterable[float | None], times: list[int]) -> list[tuple[int, float]]:
    return [(t, v) for t, v in zip(times, values, strict=True) if v is not None]
