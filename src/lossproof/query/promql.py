"""A PromQL subset evaluated over the :class:`~lossproof.store.base.Store`.

Parsing is done by ``promql-parser`` (a maintained PromQL parser); this module only evaluates the
parsed tree. The subset:

- selectors with ``=``, ``!=``, ``=~``, ``!~`` (and ``offset``);
- ``rate``, ``irate``, ``increase`` and ``avg/min/max/sum/count/last/stddev/stdvar/quantile/present
  _over_time`` over range selectors;
- ``sum``, ``avg``, ``min``, ``max``, ``count`` with ``by (...)`` or ``without (...)``;
- arithmetic (``+ - * / % ^``) and comparisons (``== != > < >= <=``, with ``bool``) between numbers,
  between a vector and a number, and between two vectors matched one-to-one (``on``/``ignoring``);
- unary minus and parentheses.

Anything else parses but is refused with :class:`Unsupported`, which names the unsupported part.

Semantics follow Prometheus 3: an instant selector takes, at each evaluation time T, the latest sample
in ``(T - lookback, T]`` (lookback 5 minutes); a range selector ``[d]`` takes the samples in
``(T - d, T]``; ``rate``/``increase`` extrapolate like Prometheus (counter resets included).

Metric names: lossproof metric names may contain characters PromQL names cannot (``cpu.user``).
In PromQL every character outside ``[a-zA-Z0-9_:]`` reads as ``_``: ``cpu_user`` selects the stored
``cpu.user``, and results carry ``__name__="cpu_user"``. ``{__name__="cpu.user"}`` (the stored name)
works too. Label names are used as stored.
"""

from __future__ import annotations

import asyncio
import math
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import promql_parser as pp
import re2

from lossproof.query import params
from lossproof.store.base import InvalidMatcher, Matcher, Store

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

NAME = "__name__"
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
RANGE_FUNCS = ("rate", "irate", "increase", *OVER_TIME)
AGGREGATIONS = ("sum", "avg", "min", "max", "count")
ARITH = ("+", "-", "*", "/", "%", "^")
COMPARE = ("==", "!=", ">", "<", ">=", "<=")


class PromQLError(Exception):
    """Answered 400 with ``errorType`` ``bad_data`` (Prometheus' shape)."""

    status = 400
    error_type = "bad_data"


class Unsupported(PromQLError):
    """Valid PromQL outside lossproof's subset; the message names the part."""

    def __init__(self, what: str) -> None:
        super().__init__(f"unsupported PromQL: {what} is not supported by lossproof (see docs/dashboard.md)")


class ExecutionError(PromQLError):
    """The query is valid but cannot be evaluated on this data (Prometheus answers 422)."""

    status = 422
    error_type = "execution"


def promql_name(metric: str) -> str:
    """The PromQL spelling of a stored metric name: ``cpu.user`` -> ``cpu_user``."""
    name = _BAD_NAME_CHARS.sub("_", metric)
    return "_" + name if name[:1].isdigit() else name


# --- values ------------------------------------------------------------------------------------------

Key = tuple[tuple[str, str], ...]
Rows = dict[Key, tuple[dict[str, str], list[float | None]]]


def key_of(labels: dict[str, str]) -> Key:
    return tuple(sorted(labels.items()))


@dataclass
class Scalar:
    values: list[float]  # one per step


@dataclass
class Vector:
    # per series: its labels and one value per step (None: no sample at that step)
    series: Rows


@dataclass
class RawMatrix:
    """A range selector at the top of an instant query: the raw samples."""

    series: list[tuple[dict[str, str], list[tuple[int, float]]]]


Value = Scalar | Vector


@dataclass(frozen=True)
class Grid:
    start_ms: int
    end_ms: int
    step_ms: int

    @property
    def n(self) -> int:
        return (self.end_ms - self.start_ms) // self.step_ms + 1

    def times(self) -> list[int]:
        return [self.start_ms + k * self.step_ms for k in range(self.n)]


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
    """Raise :class:`Unsupported` for the first construct outside the subset."""
    if isinstance(expr, pp.NumberLiteral):
        return
    if isinstance(expr, pp.StringLiteral):
        raise Unsupported("a string expression")
    if isinstance(expr, (pp.ParenExpr, pp.UnaryExpr)):
        check_supported(expr.expr)
    elif isinstance(expr, pp.VectorSelector):
        _check_selector(expr)
    elif isinstance(expr, pp.MatrixSelector):
        _check_selector(expr.vector_selector)
        _check_duration(expr.range, "range")
    elif isinstance(expr, pp.SubqueryExpr):
        raise Unsupported("a subquery ([range:step])")
    elif isinstance(expr, pp.Call):
        name = expr.func.name
        if name not in RANGE_FUNCS:
            raise Unsupported(f"function {name}()")
        for a in expr.args:
            if isinstance(a, pp.SubqueryExpr):
                raise Unsupported(f"a subquery as the argument of {name}()")
            check_supported(a)
        if not isinstance(expr.args[-1], pp.MatrixSelector):
            raise PromQLError(f"{name}() expects a range vector selector such as metric[5m]")
        if name == "quantile_over_time" and not isinstance(_unparen(expr.args[0]), pp.NumberLiteral):
            raise Unsupported("a non-literal quantile in quantile_over_time()")
    elif isinstance(expr, pp.AggregateExpr):
        op = str(expr.op)
        if op not in AGGREGATIONS:
            raise Unsupported(f"aggregation {op}")
        check_supported(expr.expr)
    elif isinstance(expr, pp.BinaryExpr):
        op = str(expr.op)
        if op not in ARITH + COMPARE:
            raise Unsupported(f"binary operator {op}")
        mod = expr.modifier
        if mod is not None and mod.card in (
            pp.VectorMatchCardinality.ManyToOne,
            pp.VectorMatchCardinality.OneToMany,
        ):
            raise Unsupported("group_left/group_right")
        check_supported(expr.lhs)
        check_supported(expr.rhs)
    else:
        raise Unsupported(f"expression {type(expr).__name__}")


def _check_selector(vs: pp.VectorSelector) -> None:
    if vs.at is not None:
        raise Unsupported("the @ modifier")
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


# --- evaluation --------------------------------------------------------------------------------------


class Evaluator:
    """Evaluates one parsed query for one tenant over a grid of evaluation times. Runs on the store
    thread (every call here may read the store)."""

    def __init__(self, store: Store, tenant: str, grid: Grid, lookback_ms: int = LOOKBACK_MS) -> None:
        self.store = store
        self.tenant = tenant
        self.grid = grid
        self.lookback_ms = lookback_ms
        self._names: list[str] | None = None

    def eval(self, expr: pp.Expr) -> Value:
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
        if isinstance(expr, pp.MatrixSelector):
            raise PromQLError(
                "a range vector cannot be evaluated here: use it inside rate(), *_over_time()..."
            )
        raise Unsupported(f"expression {type(expr).__name__}")

    # selectors

    def matchers(self, vs: pp.VectorSelector) -> list[Matcher] | None:
        """Store matchers for a selector, or None when no stored metric name can match. Matchers on
        the metric name become one ``=~`` over the stored names they select (see the module doc)."""
        out: list[Matcher] = []
        names: set[str] | None = None
        name_matchers = [(_op(m.op), m.value) for m in vs.matchers.matchers if m.name == NAME]
        if vs.name:
            name_matchers.append(("=", vs.name))
        for op, value in name_matchers:
            found = set(self._names_matching(op, value))
            names = found if names is None else names & found
        for m in vs.matchers.matchers:
            if m.name != NAME:
                try:
                    out.append(Matcher(m.name, _op(m.op), m.value))
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

    def _instant(self, vs: pp.VectorSelector) -> Vector:
        ms = self.matchers(vs)
        if ms is None:
            return Vector({})
        off = _ms(vs.offset)
        g = self.grid
        found = self.store.select_last(
            self.tenant, ms, g.start_ms - off, g.end_ms - off, g.step_ms, self.lookback_ms
        )
        out: Rows = {}
        for s in found:
            labels = {**s.labels, NAME: promql_name(s.metric)}
            values = [None if x is None else x[1] for x in s.samples]
            _put(out, labels, values)
        return Vector(out)

    def raw(self, ms: pp.MatrixSelector) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
        """Samples a range selector needs over the whole grid: ``(start - range - offset, end - offset]``."""
        vs = ms.vector_selector
        matchers = self.matchers(vs)
        if matchers is None:
            return []
        off = _ms(vs.offset)
        rng = _ms(ms.range)
        found = self.store.select(
            self.tenant, matchers, self.grid.start_ms - off - rng + 1, self.grid.end_ms - off
        )
        return [({**s.labels, NAME: promql_name(s.metric)}, s.points) for s in found]

    # functions

    def _call(self, call: pp.Call) -> Vector:
        name = call.func.name
        ms = _unparen(call.args[-1])
        assert isinstance(ms, pp.MatrixSelector)
        rng = _ms(ms.range)
        off = _ms(ms.vector_selector.offset)
        if rng <= 0:
            raise PromQLError("range must be positive")
        fn = _range_fn(name, call.args)
        out: Rows = {}
        for labels, pts in self.raw(ms):
            ts = [t for t, _ in pts]
            vs = [v for _, v in pts]
            values: list[float | None] = []
            for at in self.grid.times():
                hi = bisect_right(ts, at - off)
                lo = bisect_right(ts, at - off - rng, 0, hi)
                values.append(fn(ts, vs, lo, hi, at - off, rng) if hi > lo else None)
            if any(v is not None for v in values):
                keep = dict(labels) if name == "last_over_time" else _drop_name(labels)
                _put(out, keep, values)
        return Vector(out)

    # aggregation

    def _aggregate(self, agg: pp.AggregateExpr) -> Vector:
        op = str(agg.op)
        inner = self.eval(agg.expr)
        if not isinstance(inner, Vector):
            raise PromQLError(f"{op}() expects an instant vector, got a number")
        by: set[str] | None = None
        without: set[str] = set()
        if agg.modifier is not None:
            if agg.modifier.type == pp.AggModifierType.By:
                by = set(agg.modifier.labels)
            else:
                without = {*agg.modifier.labels, NAME}
        groups: dict[Key, tuple[dict[str, str], list[list[float | None]]]] = {}
        for labels, values in inner.series.values():
            if by is not None:
                glabels = {k: v for k, v in labels.items() if k in by}
            else:
                glabels = {k: v for k, v in labels.items() if k not in without} if without else {}
            groups.setdefault(key_of(glabels), (glabels, []))[1].append(values)
        n = self.grid.n
        out: Rows = {}
        for k, (glabels, members) in groups.items():
            result: list[float | None] = []
            for i in range(n):
                xs = [m[i] for m in members if m[i] is not None]
                result.append(_agg(op, xs) if xs else None)  # type: ignore[arg-type]
            out[k] = (glabels, result)
        return Vector(out)

    # binary operators

    def _binary(self, b: pp.BinaryExpr) -> Value:
        op = str(b.op)
        mod = b.modifier
        return_bool = bool(mod and mod.return_bool)
        lhs, rhs = self.eval(b.lhs), self.eval(b.rhs)
        fn = _binop(op)
        is_cmp = op in COMPARE
        if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
            if is_cmp and not return_bool:
                raise PromQLError("comparisons between scalars must use the bool modifier")
            return Scalar([fn(x, y) for x, y in zip(lhs.values, rhs.values, strict=True)])
        if isinstance(lhs, Vector) and isinstance(rhs, Vector):
            return self._vector_vector(op, fn, lhs, rhs, mod, return_bool)
        vec, sc, scalar_left = (lhs, rhs, False) if isinstance(lhs, Vector) else (rhs, lhs, True)
        assert isinstance(vec, Vector) and isinstance(sc, Scalar)
        out: Rows = {}
        for labels, values in vec.series.values():
            res: list[float | None] = []
            for v, s in zip(values, sc.values, strict=True):
                if v is None:
                    res.append(None)
                    continue
                r = fn(s, v) if scalar_left else fn(v, s)
                if is_cmp and not return_bool:
                    res.append(v if r == 1.0 else None)
                else:
                    res.append(r)
            keep = labels if (is_cmp and not return_bool) else _drop_name(labels)
            if any(x is not None for x in res):
                _put(out, keep, res)
        return Vector(out)

    def _vector_vector(
        self,
        op: str,
        fn: Callable[[float, float], float],
        lhs: Vector,
        rhs: Vector,
        mod: pp.BinModifier | None,
        return_bool: bool,
    ) -> Vector:
        matching = mod.matching if mod is not None else None

        def sig(labels: dict[str, str]) -> Key:
            if matching is not None and matching.type == pp.LabelModifierType.Include:
                return key_of({k: v for k, v in labels.items() if k in set(matching.labels)})
            drop = {NAME, *(matching.labels if matching is not None else ())}
            return key_of({k: v for k, v in labels.items() if k not in drop})

        right: Rows = {}
        for labels, values in rhs.series.values():
            k = sig(labels)
            if k in right:
                raise ExecutionError(
                    "many-to-many matching not allowed: matching labels must be unique on one side"
                )
            right[k] = (labels, values)
        is_cmp = op in COMPARE
        out: Rows = {}
        seen: set[Key] = set()
        for labels, values in lhs.series.values():
            k = sig(labels)
            if k not in right:
                continue
            if k in seen:
                raise ExecutionError(
                    "many-to-many matching not allowed: matching labels must be unique on one side"
                )
            seen.add(k)
            rvalues = right[k][1]
            res: list[float | None] = []
            for a, c in zip(values, rvalues, strict=True):
                if a is None or c is None:
                    res.append(None)
                    continue
                r = fn(a, c)
                res.append((a if r == 1.0 else None) if is_cmp and not return_bool else r)
            keep = labels if (is_cmp and not return_bool) else _drop_name(labels)
            if matching is not None and matching.type == pp.LabelModifierType.Include:
                keep = {k2: v for k2, v in keep.items() if k2 in set(matching.labels)}
            elif matching is not None:
                keep = {k2: v for k2, v in keep.items() if k2 not in set(matching.labels)}
            if any(x is not None for x in res):
                _put(out, keep, res)
        return Vector(out)


def evaluate(store: Store, tenant: str, expr: pp.Expr, grid: Grid) -> Value:
    return Evaluator(store, tenant, grid).eval(expr)


def instant_raw(store: Store, tenant: str, expr: pp.MatrixSelector, at_ms: int) -> RawMatrix:
    """A range selector at the top of an instant query: its raw samples in ``(at - range, at]``."""
    ev = Evaluator(store, tenant, Grid(at_ms, at_ms, 1))
    return RawMatrix(ev.raw(expr))


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


def _drop_name(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != NAME}


def _put(
    out: Rows,
    labels: dict[str, str],
    values: list[float | None],
) -> None:
    k = key_of(labels)
    if k in out:
        raise ExecutionError(f"vector cannot contain metrics with the same labelset {_fmt(labels)}")
    out[k] = (labels, values)


def _fmt(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _unary_minus(v: Value) -> Value:
    if isinstance(v, Scalar):
        return Scalar([-x for x in v.values])
    return Vector(
        {
            key_of(_drop_name(lab)): (_drop_name(lab), [None if x is None else -x for x in vals])
            for lab, vals in v.series.values()
        }
    )


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


def _binop(op: str) -> Callable[[float, float], float]:
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
        try:
            return math.pow(a, b)
        except (OverflowError, ValueError):
            if a == 0 and b < 0:
                return math.inf
            return math.inf if abs(a) > 1 else math.nan

    def b(x: bool) -> float:
        return 1.0 if x else 0.0

    table: dict[str, Callable[[float, float], float]] = {
        "+": lambda a, c: a + c,
        "-": lambda a, c: a - c,
        "*": lambda a, c: a * c,
        "/": div,
        "%": mod,
        "^": pow_,
        "==": lambda a, c: b(a == c),
        "!=": lambda a, c: b(a != c),
        ">": lambda a, c: b(a > c),
        "<": lambda a, c: b(a < c),
        ">=": lambda a, c: b(a >= c),
        "<=": lambda a, c: b(a <= c),
    }
    return table[op]


RangeFn = Callable[[list[int], list[float], int, int, int, int], "float | None"]


def _range_fn(name: str, args: Sequence[pp.Expr]) -> RangeFn:
    if name in ("rate", "increase"):
        is_rate = name == "rate"

        def rate(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
            return _extrapolated_rate(ts, vs, lo, hi, at, rng, is_rate)

        return rate
    if name == "irate":
        return _irate
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
    s = sorted(xs)
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
    ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int, is_rate: bool
) -> float | None:
    """Prometheus' extrapolatedRate for counters (rate and increase)."""
    if hi - lo < 2:
        return None
    first_t, last_t = ts[lo], ts[hi - 1]
    first_v = vs[lo]
    result = vs[hi - 1] - first_v
    prev = first_v
    for i in range(lo + 1, hi):
        v = vs[i]
        if v < prev:
            result += prev
        prev = v
    range_start = at - rng
    duration_to_start = (first_t - range_start) / 1000
    duration_to_end = (at - last_t) / 1000
    sampled = (last_t - first_t) / 1000
    if sampled <= 0:
        return None
    average_between = sampled / (hi - lo - 1)
    if result > 0 and first_v >= 0:
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


def iter_points(values: Iterable[float | None], times: list[int]) -> list[tuple[int, float]]:
    return [(t, v) for t, v in zip(times, values, strict=True) if v is not None]
