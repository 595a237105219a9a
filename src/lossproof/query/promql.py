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

Evaluation is on numpy arrays (a :class:`Vector` is a (series x steps) array of values and one of
presence): a range function is computed for every window of every series at once, aggregations and
binary operators over whole arrays. The per-window Python definitions further down (``_range_fn``,
``_agg``, ``_binop``) are the reference: the array code answers the same, bit for bit (checked by
tests/unit/test_promql_arrays.py), and falls back to them where vectorising does not pay (a window
with a NaN or an infinity in a sum, ``quantile_over_time``, ``^``).

Metric names: lossproof metric names may contain characters PromQL names cannot (``cpu.user``).
In PromQL every character outside ``[a-zA-Z0-9_:]`` reads as ``_``: ``cpu_user`` selects the stored
``cpu.user``, and results carry ``__name__="cpu_user"``. ``{__name__="cpu.user"}`` (the stored name)
works too. Label names are used as stored.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import msgspec
import numpy as np
import numpy.typing as npt
import promql_parser as pp
import re2

from lossproof.query import exact, params
from lossproof.store.base import InvalidMatcher, Matcher, SeriesArrays, Store

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
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


def key_of(labels: dict[str, str]) -> Key:
    return tuple(sorted(labels.items()))


@dataclass
class Scalar:
    values: list[float]  # one per step


class Vector:
    """An instant vector over the grid's steps: per series its labels, and per step a value and
    whether there is one (``values[i, k]``, ``present[i, k]``; an absent value is meaningless).
    No two series have the same labels."""

    __slots__ = ("_rows", "labels", "present", "values")

    def __init__(self, labels: list[dict[str, str]], values: F64, present: Mask) -> None:
        assert values.shape == present.shape == (len(labels), values.shape[1])
        self.labels = labels
        self.values = values
        self.present = present
        self._rows: Rows | None = None

    @classmethod
    def empty(cls, n: int) -> Vector:
        return cls([], np.empty((0, n)), np.zeros((0, n), dtype=bool))

    @property
    def series(self) -> Rows:
        """Per series: its labels and one value per step (None: no sample at that step)."""
        if self._rows is None:
            self._rows = {key_of(lab): (lab, vals) for lab, vals in self.rows()}
        return self._rows

    def rows(self) -> list[tuple[dict[str, str], list[float | None]]]:
        out = []
        for lab, vals, pres in zip(self.labels, self.values.tolist(), self.present.tolist(), strict=True):
            out.append((lab, [v if p else None for v, p in zip(vals, pres, strict=True)]))
        return out


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

    def array(self) -> I64:
        return self.start_ms + self.step_ms * np.arange(self.n, dtype=np.int64)


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
    thread (every call here may read the store).

    Values are numpy arrays, one row per series and one column per step (:class:`Vector`); range
    functions are computed for every step of every series at once (:func:`range_function`), with
    the same results, bit for bit, as the per-window Python definitions (``_range_fn``)."""

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
        g = self.grid
        if ms is None:
            return Vector.empty(g.n)
        off = _ms(vs.offset)
        at = g.array() - off
        found = self.store.select_arrays(self.tenant, ms, int(at[0]) - self.lookback_ms + 1, int(at[-1]))
        labels = [{**s.labels, NAME: promql_name(s.metric)} for s in found]
        values = np.empty((len(found), g.n))
        present = np.zeros((len(found), g.n), dtype=bool)
        for i, s in enumerate(found):
            values[i], present[i] = lookup(s.t, s.v, at, self.lookback_ms)
        return _vector(labels, values, present)

    def raw_arrays(self, ms: pp.MatrixSelector) -> list[SeriesArrays]:
        """Samples a range selector needs over the whole grid: ``(start - range - offset, end - offset]``."""
        vs = ms.vector_selector
        matchers = self.matchers(vs)
        if matchers is None:
            return []
        off = _ms(vs.offset)
        rng = _ms(ms.range)
        found = self.store.select_arrays(
            self.tenant, matchers, self.grid.start_ms - off - rng + 1, self.grid.end_ms - off
        )
        return without_stale(found)

    def raw(self, ms: pp.MatrixSelector) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
        """:meth:`raw_arrays` as ``(labels, [(t, v), ...])`` (the labels with ``__name__``)."""
        return [
            ({**s.labels, NAME: promql_name(s.metric)}, list(zip(s.t.tolist(), s.v.tolist(), strict=True)))
            for s in self.raw_arrays(ms)
        ]

    # functions

    def _call(self, call: pp.Call) -> Vector:
        name = call.func.name
        ms = _unparen(call.args[-1])
        assert isinstance(ms, pp.MatrixSelector)
        rng = _ms(ms.range)
        off = _ms(ms.vector_selector.offset)
        if rng <= 0:
            raise PromQLError("range must be positive")
        q = 0.0
        if name == "quantile_over_time":
            q_expr = _unparen(call.args[0])
            assert isinstance(q_expr, pp.NumberLiteral)
            q = float(q_expr.val)
        found = self.raw_arrays(ms)
        values, present = range_function(name, found, self.grid.array() - off, rng, q)
        keep_name = name == "last_over_time"
        labels = [{**s.labels, NAME: promql_name(s.metric)} if keep_name else dict(s.labels) for s in found]
        return _vector(labels, values, present)

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
        values, present = aggregate(op, inner.values, inner.present, gid, len(glabels))
        return Vector(glabels, values, present)

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
            fn = _binop(op)
            return Scalar([fn(x, y) for x, y in zip(lhs.values, rhs.values, strict=True)])
        if isinstance(lhs, Vector) and isinstance(rhs, Vector):
            return self._vector_vector(op, lhs, rhs, mod, return_bool)
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
            labels = [_drop_name(lab) for lab in vec.labels]
        return _vector(labels, values, present)

    def _vector_vector(
        self,
        op: str,
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

        right: dict[Key, int] = {}
        for j, labels in enumerate(rhs.labels):
            k = sig(labels)
            if k in right:
                raise ExecutionError(
                    "many-to-many matching not allowed: matching labels must be unique on one side"
                )
            right[k] = j
        is_cmp = op in COMPARE
        filtering = is_cmp and not return_bool
        seen: set[Key] = set()
        li: list[int] = []
        ri: list[int] = []
        out_labels: list[dict[str, str]] = []
        for i, labels in enumerate(lhs.labels):
            k = sig(labels)
            if k not in right:
                continue
            if k in seen:
                raise ExecutionError(
                    "many-to-many matching not allowed: matching labels must be unique on one side"
                )
            seen.add(k)
            li.append(i)
            ri.append(right[k])
            keep = labels if filtering else _drop_name(labels)
            if matching is not None and matching.type == pp.LabelModifierType.Include:
                keep = {k2: v for k2, v in keep.items() if k2 in set(matching.labels)}
            elif matching is not None:
                keep = {k2: v for k2, v in keep.items() if k2 not in set(matching.labels)}
            out_labels.append(keep)
        left_v, right_v = lhs.values[li], rhs.values[ri]
        both = lhs.present[li] & rhs.present[ri]
        r = binop_arrays(op, left_v, right_v, both)
        if filtering:
            return _vector(out_labels, left_v, both & (r == 1.0))
        return _vector(out_labels, r, both)


def evaluate(store: Store, tenant: str, expr: pp.Expr, grid: Grid) -> Value:
    return Evaluator(store, tenant, grid).eval(expr)


def instant_raw(store: Store, tenant: str, expr: pp.MatrixSelector, at_ms: int) -> RawMatrix:
    """A range selector at the top of an instant query: its raw samples in ``(at - range, at]``."""
    ev = Evaluator(store, tenant, Grid(at_ms, at_ms, 1))
    return RawMatrix(ev.raw(expr))


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


def lookup(t: I64, v: F64, at: I64, lookback_ms: int) -> tuple[F64, Mask]:
    """An instant selector over one series' points: at each ``at[k]`` the newest point in
    ``(at[k] - lookback_ms, at[k]]``, absent when there is none or when it is a staleness marker."""
    idx = np.searchsorted(t, at, side="right") - 1
    ok = idx >= 0
    j = np.where(ok, idx, 0)
    if len(t) == 0:
        return np.full(len(at), math.nan), np.zeros(len(at), dtype=bool)
    ok &= t[j] > at - lookback_ms
    vals = v[j]
    ok &= ~is_stale(vals)
    return vals, ok


def _vector(labels: list[dict[str, str]], values: F64, present: Mask) -> Vector:
    """A :class:`Vector` of the series that have a value at some step; ExecutionError when two of
    them have the same labels."""
    keep = present.any(axis=1)
    if not keep.all():
        idx = np.flatnonzero(keep)
        labels = [labels[i] for i in idx.tolist()]
        values, present = values[idx], present[idx]
    seen: set[Key] = set()
    for lab in labels:
        k = key_of(lab)
        if k in seen:
            raise ExecutionError(f"vector cannot contain metrics with the same labelset {_fmt(lab)}")
        seen.add(k)
    return Vector(labels, values, present)


# --- range functions, vectorised ---------------------------------------------------------------------


def range_function(
    name: str, found: Sequence[SeriesArrays], at: I64, rng: int, q: float = 0.0
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
        values[r0:r1], present[r0:r1] = _range_block(name, found[r0:r1], at, rng, q)
    return values, present


BLOCK = 16_384  # windows computed at a time


def _range_block(name: str, found: Sequence[SeriesArrays], at: I64, rng: int, q: float) -> tuple[F64, Mask]:
    m = len(found)
    starts = np.zeros(m + 1, dtype=np.int64)
    np.cumsum([len(s.t) for s in found], out=starts[1:])
    t = np.concatenate([*(s.t for s in found), np.zeros(1, dtype=np.int64)]).astype(np.int64, copy=False)
    v = np.concatenate([*(s.v for s in found), np.full(1, math.nan)]).astype(np.float64, copy=False)
    lo, hi = _bounds(found, at, rng, starts[:-1, None])
    with np.errstate(all="ignore"):
        return _RANGE[name](t, v, starts, lo, hi, at, rng, q)


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


def _rate_arrays(is_rate: bool) -> RangeArrays:
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


def binop_arrays(op: str, a: F64, b: F64, where: Mask) -> F64:
    """``_binop(op)`` elementwise (broadcasting ``a`` and ``b``); entries outside ``where`` are
    meaningless. ``^`` runs ``_binop``'s Python function on each entry in ``where`` (numpy's power
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
        if op == "^":
            a2, b2 = np.broadcast_arrays(a, b)
            out = np.zeros(a2.shape)
            fn = _binop("^")
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


def _fmt(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _unary_minus(v: Value) -> Value:
    if isinstance(v, Scalar):
        return Scalar([-x for x in v.values])
    # as a dict would: one series per labelset, the last one's values (in the first one's place)
    last: dict[Key, int] = {}
    for i, lab in enumerate(v.labels):
        last[key_of(_drop_name(lab))] = i
    rows = list(last.values())
    return Vector([_drop_name(v.labels[i]) for i in rows], -v.values[rows], v.present[rows])


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


# The per-window definitions: the reference the array code above matches (see the module doc).
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
