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
from collections.abc import Callable

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


def _sorted_within_groups(
    keys: tuple[npt.NDArray[np.generic], ...], gid: I64, groups: int
) -> tuple[I64, I64]:
    """Each column sorted by group, then by ``keys`` (the last the most significant), stably:
    ``order[p, k]`` is the row at position p of column k; ``first[g]`` the position of group g's
    first row (the same in every column: each column holds every row)."""
    m, n = keys[0].shape
    g2 = np.broadcast_to(gid[:, None], (m, n))
    order: I64 = np.lexsort((*keys, g2), axis=0)
    first = np.zeros(groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(gid, minlength=groups), out=first[1:])
    return order, first


def quantile(q: F64, values: F64, present: Mask, gid: I64, groups: int) -> tuple[F64, Mask]:
    """``quantile(q, ...)`` per group and step: the values sorted (NaN first, as Go sorts them), the
    rank ``q * (count - 1)`` interpolated between its neighbours; -Inf below 0, +Inf above 1. One
    sort of every column for all groups at once."""
    m, n = values.shape
    if groups == 0 or m == 0:
        return np.full((groups, n), math.nan), np.zeros((groups, n), dtype=bool)
    nan = np.isnan(values)
    category = np.where(present, np.where(nan, 0, 1), 2)  # NaN first, then numbers, absent last
    order, first = _sorted_within_groups((np.where(nan, 0.0, values), category), gid, groups)
    s = np.take_along_axis(values, order, axis=0)
    cnt = np.zeros((groups, n))
    np.add.at(cnt, gid, present.astype(np.float64))
    cols = np.arange(n)
    with np.errstate(all="ignore"):
        rank = q[None, :] * (cnt - 1)
        lower = np.maximum(0, np.floor(rank))
        upper = np.minimum(cnt - 1, lower + 1)
        weight = rank - np.floor(rank)
        base = first[:-1, None]
        li = np.clip(base + np.nan_to_num(lower).astype(np.int64), 0, m - 1)
        ui = np.clip(base + np.nan_to_num(upper).astype(np.int64), 0, m - 1)
        got = s[li, cols] * (1 - weight) + s[ui, cols] * weight
    got = np.where(q < 0, -math.inf, np.where(q > 1, math.inf, got))
    return np.where(np.isnan(q), math.nan, got), cnt > 0


def top(k: F64, values: F64, present: Mask, gid: I64, groups: int, largest: bool) -> Mask:
    """The cells ``topk`` (``largest``) or ``bottomk`` keep: per group and step the ``k[step]``
    present series with the largest (smallest) values, numbers before NaN, ties in series order.
    One sort of every column for all groups at once."""
    m = values.shape[0]
    if m == 0:
        return np.zeros(values.shape, dtype=bool)
    kk = np.where(np.isnan(k), 0, np.trunc(np.clip(k, -1, m + 1)))
    nan = np.isnan(values)
    category = np.where(present, np.where(nan, 1, 0), 2)
    key = np.where(nan, 0.0, -values if largest else values)
    order, first = _sorted_within_groups((key, category), gid, groups)
    pos = np.arange(m)[:, None]
    rank_sorted = pos - first[gid[order]]  # position within its group
    rank = np.empty_like(rank_sorted)
    np.put_along_axis(rank, order, rank_sorted, axis=0)
    keep: Mask = present & (rank < kk[None, :])
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


def ratio_keep(ratio: F64, offsets: F64) -> Mask:
    """``limit_ratio``: which series (rows) are kept at each step (columns), from each series'
    :func:`promhash.sample_offset` and the step's ratio (in [-1, 1]; 0 keeps none): ``AddRatioSample``
    for every cell at once."""
    r = ratio[None, :]
    o = offsets[:, None]
    keep: Mask = ((r >= 0) & (o < r)) | ((r < 0) & (o >= 1.0 + r))
    return keep


def count_values(
    values: F64, present: Mask, gid: I64, cells: Callable[[int, int], None]
) -> tuple[I64, F64, F64]:
    """``count_values``: per distinct (group, value) the number of series with it at each step, from
    one sort of the present cells (not one pass per distinct value). Answers each pair's group,
    value and counts (pairs x steps). Values are told apart by their bits (``-0`` is not ``0``, as
    Prometheus prints them apart), all NaN being one. ``cells(pairs, steps)`` is asked before the
    counts are made (a value that changes at every step makes a series of each)."""
    n = values.shape[1]
    ii, kk = np.nonzero(present)
    vals = values[ii, kk]
    bits = np.where(np.isnan(vals), math.nan, vals).view(np.uint64)
    pairs = np.stack([gid[ii].astype(np.uint64), bits])
    if not pairs.shape[1]:
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros((0, n))
    uniq, inverse = np.unique(pairs, axis=1, return_inverse=True)
    cells(uniq.shape[1], n)
    counts = np.zeros((uniq.shape[1], n))
    np.add.at(counts, (inverse.reshape(-1), kk), 1.0)
    return uniq[0].astype(np.int64), uniq[1].view(np.float64), counts
