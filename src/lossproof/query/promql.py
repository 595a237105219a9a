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
Prometheus (counter resets included). With ``closed`` windows (``[query] windows = "prometheus2"``)
the windows are Prometheus 2's instead: ``[T - lookback, T]``, ``[T - d, T]``, and a subquery's
steps the multiples of its step from ``T - range`` on (:func:`promwindows.window_first`).

Evaluation is on numpy arrays (a :class:`Vector` is a (series x steps) array of values and one of
presence): a range function is computed for every window of every series at once, aggregations and
binary operators over whole arrays (vector matching over pairs of rows: :mod:`vecmatch`; the values
themselves are in :mod:`promvalues`). The per-window Python definitions in :mod:`promref`
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

import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta

import msgspec
import numpy as np
import promql_parser as pp
import re2

from lossproof.native_ext import _native
from lossproof.points import STALE_NAN_BITS
from lossproof.query import exact, promagg, promfuncs, promhash, promrange, vecmatch
from lossproof.query.binops import binop, binop_arrays
from lossproof.query.gofloat import parse_go_float
from lossproof.query.promparse import (
    AGGREGATIONS as AGGREGATIONS,
)
from lossproof.query.promparse import (
    ARITH as ARITH,
)
from lossproof.query.promparse import (
    COMPARE as COMPARE,
)
from lossproof.query.promparse import (
    FUNCTIONS as FUNCTIONS,
)
from lossproof.query.promparse import (
    LOOKBACK_MS as LOOKBACK_MS,
)
from lossproof.query.promparse import (
    MAX_NESTING as MAX_NESTING,
)
from lossproof.query.promparse import (
    MAX_OPERATORS as MAX_OPERATORS,
)
from lossproof.query.promparse import (
    MAX_POINTS as MAX_POINTS,
)
from lossproof.query.promparse import (
    MAX_QUERY_CHARS as MAX_QUERY_CHARS,
)
from lossproof.query.promparse import (
    MORE_AGGREGATIONS as MORE_AGGREGATIONS,
)
from lossproof.query.promparse import (
    MORE_RANGE_FUNCS as MORE_RANGE_FUNCS,
)
from lossproof.query.promparse import (
    NATIVE_HISTOGRAM_FUNCS as NATIVE_HISTOGRAM_FUNCS,
)
from lossproof.query.promparse import (
    OVER_TIME as OVER_TIME,
)
from lossproof.query.promparse import (
    RANGE_FUNCS as RANGE_FUNCS,
)
from lossproof.query.promparse import (
    SET_OPS as SET_OPS,
)
from lossproof.query.promparse import (
    SUBQUERY_STEP_MS as SUBQUERY_STEP_MS,
)
from lossproof.query.promparse import (
    Budget as Budget,
)
from lossproof.query.promparse import (
    LimitExceeded as LimitExceeded,
)
from lossproof.query.promparse import (
    Limits as Limits,
)
from lossproof.query.promparse import (
    QueryCancelled as QueryCancelled,
)
from lossproof.query.promparse import (
    _walk,
)
from lossproof.query.promparse import (
    at_ms as at_ms,
)
from lossproof.query.promparse import (
    check_bounds as check_bounds,
)
from lossproof.query.promparse import (
    check_supported as check_supported,
)
from lossproof.query.promparse import (
    parse as parse,
)
from lossproof.query.promparse import (
    parse_async as parse_async,
)
from lossproof.query.promparse import (
    promql_name as promql_name,
)
from lossproof.query.promref import _agg, unparen
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
from lossproof.query.promwindows import (
    BLOCK,
    FEW_STEPS,
    NATIVE_RATE,
    RangeArrays,
    range_function,
    rate_windows,
    window_first,
)
from lossproof.store import chunks
from lossproof.store.base import InvalidMatcher, Matcher, RatePiece, RateWindows, SeriesArrays, StoreReader

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


class Evaluator:
    """Evaluates one parsed query for one tenant over a grid of evaluation times. Runs on the store
    thread (every call here may read the store).

    Values are numpy arrays, one row per series and one column per step (:class:`Vector`); range
    functions are computed for every step of every series at once (:func:`range_function`), with
    the same results, bit for bit, as the per-window Python definitions (``_range_fn``).
    A subquery is another evaluator over its own grid (aligned to its step, as Prometheus aligns
    it), whose answer becomes the points of a range vector.

    ``closed``: Prometheus 2's closed windows (the sample exactly at a window's start, the
    lookback's start or a subquery's start counts) instead of Prometheus 3's left-open ones; what
    users of rules and dashboards written for 2.x may want (``[query] windows``)."""

    def __init__(
        self,
        store: StoreReader,
        tenant: str,
        grid: Grid,
        lookback_ms: int = LOOKBACK_MS,
        limits: Limits | None = None,
        *,
        budget: Budget | None = None,
        query_grid: Grid | None = None,
        closed: bool = False,
    ) -> None:
        self.store = store
        self.tenant = tenant
        self.grid = grid
        self.lookback_ms = lookback_ms
        self.budget = budget if budget is not None else Budget(limits or Limits())
        self.query_grid = query_grid or grid  # start() and end() of @
        self.closed = closed
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

    def answer(self, expr: pp.Expr) -> Value:
        """:meth:`eval` of a query's whole expression, its answer's points counted against
        ``max_samples`` (:meth:`Budget.answer`)."""
        v = self.eval(expr)
        if isinstance(v, Vector):
            self.budget.answer(int(np.count_nonzero(v.present)))
        return v

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
        self.store.charge_brief(3 * len(self._names))  # a regex (or two compares) a name
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
        self.budget.cells(values.shape[0], n)
        return np.repeat(values, n, axis=1), np.repeat(present, n, axis=1)

    def _instant(self, vs: pp.VectorSelector, sample_times: bool = False) -> Vector:
        """An instant selector (:func:`lookup` per series); with ``sample_times`` the value is the
        time of the sample taken, in seconds (``timestamp()``)."""
        at = self._times(vs.at) - _ms(vs.offset)
        found = self._read(vs, window_first(int(at[0]), self.lookback_ms, self.closed), int(at[-1]))
        self.budget.cells(len(found), self.grid.n)
        labels = [{**s.labels, NAME: promql_name(s.metric)} for s in found]
        values, present = lookup_all(found, at, self.lookback_ms, sample_times, self.closed)
        if sample_times:
            values /= 1000
        return make_vector(labels, *self._widen(values, present))

    def raw_arrays(self, ms: pp.MatrixSelector) -> list[SeriesArrays]:
        """Samples a range selector needs over the whole grid: ``(start - range - offset, end - offset]``
        (closed: ``[start - range - offset, ...``; staleness markers left out)."""
        vs = ms.vector_selector
        ends = self._times(vs.at) - _ms(vs.offset)
        first = window_first(int(ends[0]), _ms(ms.range), self.closed)
        return without_stale(self._read(vs, first, int(ends[-1])))

    def raw(
        self, e: pp.MatrixSelector | pp.SubqueryExpr
    ) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
        """A range vector's points in ``(T - range, T]`` (closed: ``[T - range, T]``) of the grid's one
        time T, as ``(labels, [(t, v), ...])`` (the labels with ``__name__``)."""
        found, ends, rng = self._range_arg(e)
        end = int(ends[-1])
        first = window_first(end, rng, self.closed)
        out = []
        for s in found:
            keep = (s.t >= first) & (s.t <= end)
            if keep.any():
                pts = list(zip(s.t[keep].tolist(), s.v[keep].tolist(), strict=True))
                out.append((_full_labels(s), pts))
        out.sort(key=lambda row: key_of(row[0]))
        return out

    def _range_arg(self, e: pp.Expr) -> tuple[list[SeriesArrays], I64, int]:
        """A range vector argument: its series' points, the end of its window at each step (one end
        when fixed by ``@``) and its range."""
        e = unparen(e)
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
        # the first multiple of the step in the first window: after its start (Prometheus 3), or
        # at it (Prometheus 2)
        first = window_first(int(ends[0]), rng, self.closed)
        start = -(-first // step) * step
        end = int(ends[-1])
        if start > end:
            return [], ends, rng
        inner = Grid(start, end, step)
        if inner.n > self.budget.limits.max_samples:
            self.budget.add(0, inner.n)
        ev = Evaluator(
            self.store,
            self.tenant,
            inner,
            self.lookback_ms,
            budget=self.budget,
            query_grid=self.query_grid,
            closed=self.closed,
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
            arg = unparen(args[0])
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
        arg = unparen(args[0]) if args else None
        if name in NATIVE_RATE and isinstance(arg, pp.MatrixSelector) and arg.vector_selector.at is None:
            return self._rate_in_pieces(name, arg)
        arg_at = {"quantile_over_time": 1}.get(name, 0)
        found, ends, rng = self._range_arg(args[arg_at])
        if rng <= 0:
            raise PromQLError("range must be positive")
        extra = [self.scalar(a) for i, a in enumerate(args) if i != arg_at]
        self.budget.cells(len(found), g.n)
        if name == "predict_linear" and len(ends) < g.n:
            # fixed by @, the window is the same at every step, but the prediction is not: it starts
            # from each step's own time (Prometheus' enh.Ts), so each step computes its own
            ends = np.repeat(ends, g.n)
        if name == "absent_over_time":
            _, present = range_function("present_over_time", found, ends, rng, closed=self.closed)
            nothing: Mask = present.sum(axis=0) == 0
            none = nothing[None, :]
            return make_vector([_absent_labels(args[0])], *self._widen(np.ones(none.shape), none))
        # one computation per distinct value of the scalar arguments (they may vary with the step)
        values = np.empty((len(found), g.n))
        present = np.zeros((len(found), g.n), dtype=bool)
        cols_by: dict[tuple[float, ...], list[int]] = {}
        for k in range(g.n):
            cols_by.setdefault(tuple(float(x[k]) for x in extra), []).append(k)
        times = g.array()
        tick = self.budget.check_time
        for key, cols in cols_by.items():
            tick()
            fn = _parametrised(name, key, times[cols])
            q = key[0] if key else 0.0
            if len(cols_by) == 1 and len(ends) == g.n:  # one computation for every step
                values, present = range_function(name, found, ends, rng, q, fn, self.closed, tick)
                break
            if len(ends) == 1:
                v1, p1 = range_function(name, found, ends, rng, q, fn, self.closed, tick)
                values[:, cols], present[:, cols] = v1, p1
            else:
                idx = np.array(cols)
                vk, pk = range_function(name, found, ends[idx], rng, q, fn, self.closed, tick)
                values[:, idx], present[:, idx] = vk, pk
        keep_name = name in ("last_over_time", "first_over_time")
        labels = [_full_labels(s) if keep_name else dict(s.labels) for s in found]
        return make_vector(labels, values, present)

    def _rate_in_pieces(self, name: str, ms: pp.MatrixSelector) -> Vector:
        """``rate`` / ``increase`` / ``delta`` of a range selector at every step (what
        :meth:`_range_call` computes from :meth:`raw_arrays`), the store read a few hundred series
        at a time (:meth:`StoreReader.select_rate_each`) and each piece's windows computed before
        the next is read: a day of 10,000 series is never in memory at once (600 MB of columns,
        which cost more to fault in than to decode). The store computes the windows as it reads
        (the embedded store from each series' chunks while they are in the CPU's cache), or from a
        piece's arrays with ``of_arrays``. The limits are counted as :meth:`_read` counts them (once
        the whole read is done, the same error); the windows of pieces past a limit are left out
        (``RateWindows.wanted``: the embedded store's rows' way computes a piece's windows before
        ``each`` counts it, so at most one piece past a limit)."""
        vs = ms.vector_selector
        ends = self._times(None) - _ms(vs.offset)
        rng = _ms(ms.range)
        matchers = self.matchers(vs)
        from_ms, to_ms = window_first(int(ends[0]), rng, self.closed), int(ends[-1])
        lim = self.budget.limits
        labels: list[Labels] = []
        values: list[F64] = []
        present: list[Mask] = []
        counted = [0, 0]  # series, samples

        def within(series: int, samples: int) -> bool:
            return (
                series <= lim.max_series
                and self.budget.samples + samples <= lim.max_samples
                and series * len(ends) <= lim.max_values  # the answer's values (Budget.cells)
            )

        def of_arrays(piece: list[SeriesArrays]) -> tuple[F64, Mask]:
            if not within(counted[0] + len(piece), counted[1] + sum(len(s.t) for s in piece)):
                # past a limit: each leaves the piece out, so its windows are not computed (nor
                # their memory touched: zeros from calloc), as before select_rate_each
                shape = (len(piece), len(ends))
                return np.zeros(shape), np.zeros(shape, dtype=bool)
            # (the staleness markers left out natively, as without_stale would: a series of
            # nothing else has no window, and make_vector drops its row)
            return rate_windows(piece, ends, rng, *NATIVE_RATE[name], skip_stale=True, closed=self.closed)

        def each(piece: RatePiece) -> None:
            counted[0] += len(piece.labels)
            counted[1] += piece.points
            if not within(*counted):
                return  # the limit's error comes once everything is counted
            if rng > 0 and piece.labels:
                values.append(piece.values)
                present.append(piece.present)
                labels.extend(piece.labels)

        if matchers is not None and to_ms >= from_ms:
            rate = RateWindows(
                ends, rng, *NATIVE_RATE[name], of_arrays, lambda: within(*counted), closed=self.closed
            )
            self.store.select_rate_each(self.tenant, matchers, from_ms, to_ms, rate, each)
            self.budget.add(*counted)
            self.budget.cells(counted[0], len(ends))
        if rng <= 0:
            raise PromQLError("range must be positive")
        n = self.grid.n
        if not values:
            return make_vector([], np.empty((0, n)), np.zeros((0, n), dtype=bool))
        if len(values) == 1:
            return make_vector(labels, values[0], present[0])
        whole_v, whole_p = _rows_of_one(values), _rows_of_one(present)
        if whole_v is not None and whole_p is not None:
            return make_vector(labels, whole_v, whole_p)
        return make_vector(labels, np.concatenate(values), np.concatenate(present))

    def _clamp(self, name: str, args: list[pp.Expr]) -> Vector:
        v = self.vector(args[0])
        n = self.grid.n
        lo = self.scalar(args[1]) if name in ("clamp", "clamp_min") else np.full(n, -math.inf)
        hi = self.scalar(args[-1]) if name in ("clamp", "clamp_max") else np.full(n, math.inf)
        if name == "clamp_min":
            out = promfuncs.go_max(lo[None, :], v.values)  # Go: math.Max(min, v)
        elif name == "clamp_max":
            out = promfuncs.go_min(hi[None, :], v.values)
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
            sel = unparen(args[1])
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
            start = window_first(int(ends[0]), self.lookback_ms, self.closed) - off
            end = int(ends[-1]) - off
            found = []
            if ms is not None and start <= end:
                found = self.store.select_arrays(self.tenant, ms, start, end)
                self.budget.add(len(found), sum(len(s.t) for s in found))
            # the info series as Prometheus evaluates them: at every step (no offset), the time of
            # the newest sample within the lookback, of the samples inside the read's bounds
            info_t, info_p = lookup_all(found, self.grid.array(), self.lookback_ms, True, self.closed)
            info_labels.extend({**s.labels, NAME: promql_name(s.metric)} for s in found)
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
        value_kept = True
        if op == "count_values":
            # Prometheus sets the value label on each series before it computes the grouping key
            # (engine.go, aggregationCountValues): the series' own value of that label never
            # separates groups; ``by`` keeps the value label whether named or not, ``without`` drops
            # it only when named (then the series of a group are counted whatever their values).
            if by is not None:
                by = by - {label}
            elif without:
                value_kept = label not in without
                without = without | {label}
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
            if not value_kept:
                counted, _ = aggregate("count", inner.values, inner.present, gid, ng)
                return make_vector(glabels, counted, counted > 0)
            return self._count_values(label, inner, gid, glabels)
        else:
            raise Unsupported(f"aggregation {op}")
        return Vector(glabels, values, present)

    def _count_values(self, label: str, inner: Vector, gid: I64, glabels: list[Labels]) -> Vector:
        """Per group and step, how many series have each value; one series per (group, value), the
        value (printed as Prometheus prints it) in ``label``."""
        groups, values, counts = promagg.count_values(inner.values, inner.present, gid, self.budget.cells)
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
                out = vecmatch.set_operation(op, lhs, rhs, mod)
            else:
                out = vecmatch.vector_binop(op, lhs, rhs, mod, return_bool)
            # `or` adds the series of both sides, many-to-one matching repeats the one side's: a chain
            # of them grows past what each operand was checked for
            self.budget.cells(len(out.labels), self.grid.n)
            return out
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


def _rows_of_one(parts: Sequence[np.ndarray]) -> np.ndarray | None:
    """The rows of ``parts`` as one array without a copy, where they are consecutive rows of one
    C-contiguous 2-D array, in order (the embedded store's pieces are: see its select_rate_each):
    that array's slice, what their concatenation would be. None where they are not."""
    base = parts[0].base
    if not isinstance(base, np.ndarray) or base.ndim != 2 or not base.flags.c_contiguous:
        return None
    row = base.strides[0]
    origin = base.__array_interface__["data"][0]
    at = parts[0].__array_interface__["data"][0]
    if row <= 0 or (at - origin) % row:
        return None
    first, rows = (at - origin) // row, 0
    for p in parts:
        if p.base is not base or p.ndim != 2 or p.strides != base.strides or p.shape[1] != base.shape[1]:
            return None
        if p.__array_interface__["data"][0] != at:
            return None
        at += row * p.shape[0]
        rows += p.shape[0]
    return base[first : first + rows]


def evaluate(store: StoreReader, tenant: str, expr: pp.Expr, grid: Grid, closed: bool = False) -> Value:
    return Evaluator(store, tenant, grid, closed=closed).eval(expr)


def instant_raw(
    store: StoreReader,
    tenant: str,
    expr: pp.MatrixSelector | pp.SubqueryExpr,
    at_ms: int,
    limits: Limits | None = None,
    closed: bool = False,
    lookback_ms: int = LOOKBACK_MS,
    budget: Budget | None = None,
) -> RawMatrix:
    """A range vector at the top of an instant query: its points in ``(at - range, at]`` (closed:
    ``[at - range, at]``); ``lookback_ms`` that of a subquery's instant selectors."""
    ev = Evaluator(
        store, tenant, Grid(at_ms, at_ms, 1), lookback_ms, limits=limits, budget=budget, closed=closed
    )
    rows = ev.raw(expr)
    ev.budget.answer(sum(len(points) for _, points in rows))
    return RawMatrix(rows)


def instant_order(expr: pp.Expr, v: Vector) -> list[int]:
    """The order of an instant query's series: by labels, or as the outermost ``sort``,
    ``sort_desc``, ``sort_by_label`` or ``sort_by_label_desc`` asks (NaN last, as Prometheus 3)."""
    by_labels = sorted(range(len(v.labels)), key=lambda i: key_of(v.labels[i]))
    e = unparen(expr)
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
    e = unparen(e)
    if not isinstance(e, pp.StringLiteral):
        raise PromQLError(f"expected a string, got {type(e).__name__}")
    return str(e.val)


def _parse_le(raw: str | None) -> float | None:
    """A bucket's bound as Prometheus reads it (``strconv.ParseFloat``, not ``float()``: see
    :mod:`~lossproof.query.gofloat`); None where it does not parse, and Prometheus ignores the bucket."""
    return None if raw is None else parse_go_float(raw)


def _check_k(k: F64) -> None:
    if np.isnan(k).any():
        raise PromQLError("Parameter value is NaN")
    if (np.abs(k) >= 2.0**63).any():
        raise PromQLError("Scalar value overflows int64")


def _absent_labels(arg: pp.Expr) -> Labels:
    """The labels ``absent()`` / ``absent_over_time()`` answer with, Prometheus'
    ``createLabelsForAbsentFunction``: of a plain selector or range selector only (a subquery, even of
    a selector, gives none), a label's first equality matcher sets it, and any matcher of that label
    after it removes it (one before it does nothing: ``{a!="z",a="y"}`` gives ``{a="y"}``); an empty
    value sets no label (a label set has no empty labels) but still counts as the first."""
    e = unparen(arg)
    if isinstance(e, pp.MatrixSelector):
        e = e.vector_selector
    if not isinstance(e, pp.VectorSelector):
        return {}
    out: Labels = {}
    has: set[str] = set()  # Go's ``has``: the labels whose first equality matcher was seen
    for m in e.matchers.matchers:
        if m.name == NAME:
            continue
        if _op(m.op) == "=" and m.name not in has:
            has.add(m.name)
            if m.value:
                out[m.name] = m.value
        else:
            out.pop(m.name, None)
    return out


TARGET_INFO = "target_info"
IDENTIFYING_LABELS = ("instance", "job")


def _info_hints(e: pp.Expr) -> tuple[pp.AtModifier | None, int]:
    """The ``@`` and the offset of the first selector in ``e`` (Prometheus' ``infoSelectHints``):
    they bound the read of the info series."""
    e = unparen(e)
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


def _parametrised(name: str, key: tuple[float, ...], eval_ms: I64) -> RangeArrays | None:
    """The array function of a range function with scalar arguments, for one value of them, at the
    steps whose evaluation times are ``eval_ms``."""
    if name == "predict_linear":
        return promrange.predict_linear(key[0], eval_ms)
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


# the staleness marker (STALE_NAN_BITS: defined with the points, decoders need it too) as a float
STALE_NAN = float(np.array([STALE_NAN_BITS], dtype=np.uint64).view(np.float64)[0])


def is_stale(v: F64) -> Mask:
    """Which entries of ``v`` are staleness markers (compared by bits: NaN equals nothing)."""
    out: Mask = np.ascontiguousarray(v, dtype=np.float64).view(np.uint64) == STALE_NAN_BITS
    return out


_STALE_CHECK_AT_ONCE = 1 << 20  # points (8 MiB of values copied at most)


def without_stale(found: list[SeriesArrays]) -> list[SeriesArrays]:
    """``found`` without its staleness markers (and without the series left with no point)."""
    out = []
    with np.errstate(invalid="ignore", over="ignore"):  # once: entering it costs microseconds
        # the usual case, no NaN in any series, in one sum over all of them (one a series cost
        # ~2.5 us each: half a millisecond of an instant query over 200 series); not for reads so
        # large that the copy would be a memory spike of its own (max_samples allows 50 M)
        if (
            len(found) > 1
            and sum(len(s.v) for s in found) <= _STALE_CHECK_AT_ONCE
            and not math.isnan(float(np.add.reduce(np.concatenate([s.v for s in found]))))
        ):
            return list(found)
        for s in found:
            if not math.isnan(
                float(np.add.reduce(s.v))
            ):  # no NaN (a sum allocates nothing; inf - inf is NaN)
                out.append(s)
                continue
            stale = is_stale(s.v)
            if not stale.any():
                out.append(s)
            elif not stale.all():
                keep = ~stale
                out.append(SeriesArrays(s.metric, s.labels, s.t[keep], s.v[keep]))
    return out


def lookup_all(
    found: Sequence[SeriesArrays], at: I64, lookback_ms: int, times: bool = False, closed: bool = False
) -> tuple[F64, Mask]:
    """:func:`lookup` of every series of ``found``, shaped (series, steps). For a few steps (an
    instant query), each step's newest points searched in every series at once
    (:func:`chunks.search_runs`): a lookup a series cost ~10 us of numpy calls, 2 ms of a plain
    instant selector over 200 series."""
    m, n = len(found), len(at)
    values = np.empty((m, n))
    present = np.zeros((m, n), dtype=bool)
    if n > FEW_STEPS or m < 2:
        for i, s in enumerate(found):
            values[i], present[i] = lookup(s.t, s.v, at, lookback_ms, times, closed)
        return values, present
    starts = np.zeros(m + 1, dtype=np.int64)
    np.cumsum([len(s.t) for s in found], out=starts[1:])
    if not starts[-1]:
        values.fill(math.nan)
        return values, present
    t = np.concatenate([s.t for s in found]).astype(np.int64, copy=False)
    v = np.concatenate([s.v for s in found]).astype(np.float64, copy=False)
    first = window_first(at, lookback_ms, closed)
    for k in range(n):
        newest = chunks.search_runs(t, starts[:-1], starts[1:], int(at[k]), right=True) - 1
        # (a series whose newest is before its own first point has none at or before at[k])
        values[:, k], present[:, k] = _newest(t, v, newest, newest >= starts[:-1], first[k], times)
    return values, present


def lookup(
    t: I64, v: F64, at: I64, lookback_ms: int, times: bool = False, closed: bool = False
) -> tuple[F64, Mask]:
    """An instant selector over one series' points: at each ``at[k]`` the newest point in
    ``(at[k] - lookback_ms, at[k]]`` (``closed``: ``[at[k] - lookback_ms, at[k]]``), absent when
    there is none or when it is a staleness marker. With ``times``, the values are the points'
    times (ms)."""
    if len(t) == 0:
        return np.full(len(at), math.nan), np.zeros(len(at), dtype=bool)
    idx = np.searchsorted(t, at, side="right") - 1
    return _newest(t, v, idx, idx >= 0, window_first(at, lookback_ms, closed), times)


def _newest(t: I64, v: F64, idx: I64, has: Mask, first: I64 | int, times: bool) -> tuple[F64, Mask]:
    """The points ``idx`` of ``t``/``v`` (where ``has``: else none) as an instant selector takes
    them: present when at or after ``first`` and not a staleness marker; their values, or with
    ``times`` their times."""
    j = np.where(has, idx, 0)
    ok = has & (t[j] >= first)
    vals = v[j]
    ok &= ~is_stale(vals)
    return (t[j].astype(np.float64) if times else vals), ok


# --- aggregation and binary operators, vectorised ----------------------------------------------------


def aggregate(op: str, values: F64, present: Mask, gid: I64, groups: int) -> tuple[F64, Mask]:
    """``_agg(op, xs)`` per group and step, ``xs`` the group's present values in series order;
    shaped (groups, steps). Bit for bit what ``_agg`` answers."""
    m, n = values.shape
    if op in ("sum", "avg") and groups:
        return _sum_by_group(op, values, present, gid, groups)
    # steps at a time: the temporaries stay in the CPU's cache (2 MB each: fewer, larger blocks cost
    # less; with 4 * BLOCK, 9 steps of 7,000 series a block, the per-block work was a third of it)
    block = max(1, 16 * BLOCK // max(m, 1))
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
        # each (group, step) a run of the present values, column by column: fsum of each run
        cols = np.where(pres & finite, vals, 0.0).T  # zeros do not change an fsum
        m = len(gid)
        lo = first[:, None] + m * np.arange(n, dtype=np.int64)[None, :]
        hi = np.r_[first[1:], m][:, None] + m * np.arange(n, dtype=np.int64)[None, :]
        out, unsummed = exact.fsum_windows(cols, lo, hi)
        out = out.copy()
        slow = out_present & (nonfinite | unsummed)
        _agg_cells("sum", out, slow, vals, pres, first)
        if op == "avg":
            out = out / np.maximum(count, 1)
            # an infinite mean again by _agg, which keeps the mean of finite values finite
            _agg_cells("avg", out, out_present & ~np.isfinite(out), vals, pres, first)
        return out, out_present


def _sum_by_group(op: str, values: F64, present: Mask, gid: I64, groups: int) -> tuple[F64, Mask]:
    """``sum`` / ``avg`` of :func:`aggregate`: each (group, step) summed by the native extension
    (``_native.group_sums``: one pass over the matrix, each cell what :func:`_aggregate_block` gave
    ``fsum_windows``), the cells it does not answer (a present NaN or infinity, fsum's overflow) by
    ``_agg`` as there."""
    n = values.shape[1]
    sums_b, counts_b, flags_b = _native.group_sums(
        np.ascontiguousarray(values, dtype=np.float64),
        np.ascontiguousarray(present, dtype=bool).view(np.uint8),
        np.ascontiguousarray(gid, dtype=np.int64).tobytes(),
        groups,
    )
    out = np.frombuffer(sums_b, dtype=np.float64).reshape(groups, n).copy()
    count = np.frombuffer(counts_b, dtype=np.int64).reshape(groups, n)
    out_present = count > 0
    slow = out_present & (np.frombuffer(flags_b, dtype=np.uint8).reshape(groups, n) != 0)
    if op == "avg":
        out = out / np.maximum(count, 1)
    if slow.any():  # (avg: by _agg's mean, which keeps the mean of finite values past the range finite)
        order = np.argsort(gid, kind="stable")
        gsorted = gid[order]
        first = np.flatnonzero(np.r_[True, gsorted[1:] != gsorted[:-1]])
        _agg_cells(op, out, slow, values[order], present[order], first)
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


def format_value(v: float) -> str:
    """A sample value the way Prometheus prints it (its jsonutil.MarshalValue: Go's FormatFloat(v,
    'f', -1, 64), but 'e' below 1e-6 and from 1e21 on, as encoding/json does: ``1e+308``, not 309
    digits)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    r = repr(v)
    if v and not 1e-6 <= abs(v) < 1e21:
        # repr writes these with an exponent, of Go's 'e' form: the same shortest digits, a sign,
        # two digits at least (1e-07, 1.5e+21)
        return r
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
) -> list[tuple[dict[str, str], msgspec.Raw]]:
    """A range query's answer in Prometheus' JSON shape: per series (sorted by labels; a number is
    one series without labels), its labels and its points ``[[ts(t), "value"], ...]`` over the steps
    with a value, as JSON already (``msgspec.Raw``: encoded as it is, where a tuple per point cost
    more to build and to encode than the numbers cost to format); series without any are left out.
    Each time is written as msgspec writes ``ts(t)``, each value as :func:`format_value` (by the
    native extension: ``_native.points_json``; digits, signs, ``.``, ``NaN``, ``+Inf``: nothing JSON
    escapes)."""
    stamps = _FLOATS.encode([ts(t) for t in times])[1:-1].decode().split(",") if times else []
    if isinstance(value, Scalar):
        labels: list[Labels] = [{}]
        values = np.array([value.values], dtype=np.float64)
        present = np.ones((1, len(times)), dtype=np.uint8)
        order = [0]
    else:
        labels = value.labels
        values = np.ascontiguousarray(value.values, dtype=np.float64)
        present = np.ascontiguousarray(value.present, dtype=bool).view(np.uint8)
        order = sorted(range(len(labels)), key=lambda i: key_of(labels[i]))
    texts = _native.points_json(values, present, stamps, order)
    return [(labels[i], msgspec.Raw(t)) for i, t in zip(order, texts, strict=True) if t is not None]


def iter_points(values: Iterable[float | None], times: list[int]) -> list[tuple[int, float]]:
    return [(t, v) for t, v in zip(times, values, strict=True) if v is not None]
