"""PromQL's aggregations beyond ``sum avg min max count`` (those are in :mod:`lossproof.query.promql`
with their exact sums), over numpy arrays: ``values[i, k]`` and ``present[i, k]`` of series i at
step k, ``gid[i]`` series i's group (0 .. groups - 1). Each answers per group and step, or, for the
selecting ones (``topk``, ``bottomk``, ``limitk``), which cells of the input are kept.

They follow Prometheus' ``promql/engine.go`` (``aggregation``): the variance is the running
(Welford) one, in series order; ``quantile`` sorts NaN first (Go's ``sort.Float64s``);
``topk``/``bottomk`` prefer any number to NaN.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


def stdvar(values: F64, present: Mask, gid: I64, groups: int, dev: bool) -> tuple[F64, Mask]:
    """``stdvar`` (``stddev`` when ``dev``): Welford's running mean and sum of squares, one series at
    a time in series order, as Prometheus adds them."""
    n = values.shape[1]
    count = np.zeros((groups, n))
    mean = np.zeros((groups, n))
    m2 = np.zeros((groups, n))
    with np.errstate(all="ignore"):
        for i in range(len(gid)):
            g = int(gid[i])
            p = present[i]
            if not p.any():
                continue
            x = values[i]
            c = count[g] + p
            delta = x - mean[g]
            new_mean = np.where(p, mean[g] + delta / np.maximum(c, 1), mean[g])
            m2[g] = np.where(p, m2[g] + delta * (x - new_mean), m2[g])
            mean[g], count[g] = new_mean, c
        var = m2 / np.maximum(count, 1)
        return (np.sqrt(var) if dev else var), count > 0


def group(present: Mask, gid: I64, groups: int) -> tuple[F64, Mask]:
    out = np.zeros((groups, present.shape[1]), dtype=bool)
    np.logical_or.at(out, gid, present)
    return np.ones(out.shape), out


def quantile(q: F64, values: F64, present: Mask, gid: I64, groups: int) -> tuple[F64, Mask]:
    """``quantile(q, ...)`` per group and step: the values sorted (NaN first, as Go sorts them), the
    rank ``q * (count - 1)`` interpolated between its neighbours; -Inf below 0, +Inf above 1."""
    n = values.shape[1]
    out = np.full((groups, n), math.nan)
    has = np.zeros((groups, n), dtype=bool)
    for g in range(groups):
        rows = np.flatnonzero(gid == g)
        vals, pres = values[rows], present[rows]
        cnt = pres.sum(axis=0)
        # sort each column: absent last, NaN first among the present
        category = np.where(pres, np.where(np.isnan(vals), 0, 1), 2)
        order = np.lexsort((np.where(np.isnan(vals), 0.0, vals), category), axis=0)
        s = np.take_along_axis(vals, order, axis=0)
        with np.errstate(all="ignore"):
            rank = q * (cnt - 1)
            lower = np.maximum(0, np.floor(rank))
            upper = np.minimum(cnt - 1, lower + 1)
            weight = rank - np.floor(rank)
            li = np.clip(np.nan_to_num(lower), 0, max(len(rows) - 1, 0)).astype(np.int64)
            ui = np.clip(np.nan_to_num(upper), 0, max(len(rows) - 1, 0)).astype(np.int64)
            cols = np.arange(n)
            got = s[li, cols] * (1 - weight) + s[ui, cols] * weight
        got = np.where(q < 0, -math.inf, np.where(q > 1, math.inf, got))
        out[g] = np.where(np.isnan(q), math.nan, got)
        has[g] = cnt > 0
    return out, has


def top(k: F64, values: F64, present: Mask, gid: I64, groups: int, largest: bool) -> Mask:
    """The cells ``topk`` (``largest``) or ``bottomk`` keep: per group and step the ``k[step]``
    present series with the largest (smallest) values, numbers before NaN, ties in series order."""
    keep = np.zeros(values.shape, dtype=bool)
    kk = np.where(np.isnan(k), 0, np.trunc(np.clip(k, -1, len(gid) + 1)))
    for g in range(groups):
        rows = np.flatnonzero(gid == g)
        vals, pres = values[rows], present[rows]
        nan = np.isnan(vals)
        category = np.where(pres, np.where(nan, 1, 0), 2)
        key = np.where(nan, 0.0, -vals if largest else vals)
        order = np.lexsort((key, category), axis=0)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(len(rows))[:, None].repeat(vals.shape[1], axis=1), axis=0)
        keep[rows] = pres & (rank < kk[None, :])
    return keep


def limit(k: F64, present: Mask, gid: I64, groups: int) -> Mask:
    """``limitk``: per group and step the first ``k[step]`` present series, in series order."""
    keep = np.zeros(present.shape, dtype=bool)
    kk = np.where(np.isnan(k), 0, np.trunc(np.clip(k, -1, len(gid) + 1)))
    for g in range(groups):
        rows = np.flatnonzero(gid == g)
        before = np.cumsum(present[rows], axis=0)  # present series up to and including this one
        keep[rows] = present[rows] & (before <= kk[None, :])
    return keep
