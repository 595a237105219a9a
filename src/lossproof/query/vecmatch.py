"""PromQL's operators between two instant vectors: the set operators (``and``, ``or``, ``unless``)
and the arithmetic/comparison operators with vector matching (one-to-one, ``group_left``,
``group_right``; ``on``/``ignoring``), each pair of matching series computed over every step at once.
Prometheus' rules and error messages (``promql/engine.go``: ``VectorBinop``, ``VectorAnd``, ...)."""

from __future__ import annotations

import numpy as np
import promql_parser as pp

from lossproof.query.binops import binop_arrays
from lossproof.query.promvalues import (
    I64,
    NAME,
    ExecutionError,
    Key,
    Labels,
    Mask,
    Vector,
    drop_name,
    fmt_labels,
    key_of,
    make_vector,
)

COMPARE = ("==", "!=", ">", "<", ">=", "<=")


def set_label(labels: Labels, name: str, value: str) -> Labels:
    out = dict(labels)
    if value:
        out[name] = value
    else:
        out.pop(name, None)
    return out


def signature(labels: Labels, matching: pp.LabelModifier | None) -> Key:
    """The labels two series are matched on: those of ``on (...)``, or all but the name and those
    of ``ignoring (...)``."""
    if matching is not None and matching.type == pp.LabelModifierType.Include:
        keep = set(matching.labels)
        return key_of({k: v for k, v in labels.items() if k in keep})
    drop = {NAME, *(matching.labels if matching is not None else ())}
    return key_of({k: v for k, v in labels.items() if k not in drop})


def set_operation(op: str, lhs: Vector, rhs: Vector, mod: pp.BinModifier | None) -> Vector:
    """``and``, ``or``, ``unless``: per step, on the signatures (``on``/``ignoring``) present on
    the other side at that step."""
    matching = mod.matching if mod is not None else None
    sig_ids: dict[Key, int] = {}
    ls = np.array(
        [sig_ids.setdefault(signature(lab, matching), len(sig_ids)) for lab in lhs.labels], dtype=np.int64
    )
    rs = np.array(
        [sig_ids.setdefault(signature(lab, matching), len(sig_ids)) for lab in rhs.labels], dtype=np.int64
    )
    n = lhs.values.shape[1]

    def presence(ids: I64, present: Mask) -> Mask:
        out = np.zeros((len(sig_ids), n), dtype=bool)
        if len(ids):
            np.logical_or.at(out, ids, present)
        return out

    right = presence(rs, rhs.present)
    if op == "and":
        return make_vector(lhs.labels, lhs.values, lhs.present & right[ls] if len(ls) else lhs.present)
    if op == "unless":
        return make_vector(lhs.labels, lhs.values, lhs.present & ~right[ls] if len(ls) else lhs.present)
    left = presence(ls, lhs.present)
    rp = rhs.present & ~left[rs] if len(rs) else rhs.present
    return make_vector(
        lhs.labels + rhs.labels,
        np.vstack([lhs.values, rhs.values]),
        np.vstack([lhs.present, rp]),
    )


def vector_binop(op: str, lhs: Vector, rhs: Vector, mod: pp.BinModifier | None, return_bool: bool) -> Vector:
    """An arithmetic or comparison operator between two vectors: one-to-one, or many-to-one
    (``group_left``) / one-to-many (``group_right``), each pair of matching series computed over
    every step at once. At each step, in Prometheus' order (``VectorBinop``): nothing when either side
    has no sample (before any check); the "one" side must have at most one series per signature;
    and, one-to-one, at most one sample per signature may survive a comparison (``bool`` keeps all)."""
    matching = mod.matching if mod is not None else None
    card = mod.card if mod is not None else pp.VectorMatchCardinality.OneToOne
    group_right = card == pp.VectorMatchCardinality.OneToMany
    group_left = card == pp.VectorMatchCardinality.ManyToOne
    include = list(mod.group_labels or ()) if mod is not None and (group_left or group_right) else []
    many, one = (rhs, lhs) if group_right else (lhs, rhs)
    filtering = op in COMPARE and not return_bool
    # Prometheus returns nothing at a step where either side is empty before it looks for duplicates
    # (a range query's other steps are evaluated as usual)
    live: Mask = np.logical_and(lhs.present.any(axis=0), rhs.present.any(axis=0))
    one_by_sig: dict[Key, list[int]] = {}
    for j, lab in enumerate(one.labels):
        one_by_sig.setdefault(signature(lab, matching), []).append(j)
    check_unique(one, one_by_sig, "right" if not group_right else "left", live)
    matching_labels = set(matching.labels) if matching is not None else set()
    sig_ids: dict[Key, int] = {}
    mi: list[int] = []
    oi: list[int] = []
    pair_sig: list[int] = []
    out_labels: list[Labels] = []
    for i, lab in enumerate(many.labels):
        sig = signature(lab, matching)
        for j in one_by_sig.get(sig, ()):
            mi.append(i)
            oi.append(j)
            pair_sig.append(sig_ids.setdefault(sig, len(sig_ids)))
            keep = lab if filtering or op == "atan2" else drop_name(lab)
            if group_left or group_right:
                other = one.labels[j]
                keep = dict(keep)
                for name in include:
                    keep = set_label(keep, name, other.get(name, ""))
            elif matching is not None and matching.type == pp.LabelModifierType.Include:
                keep = {k: v for k, v in keep.items() if k in matching_labels}
            elif matching is not None:
                keep = {k: v for k, v in keep.items() if k not in matching_labels}
            if return_bool and NAME in keep:
                # a comparison keeps the name for the group_x labels to overwrite, but bool drops
                # it after them (resultMetric, then DropMetricName): group_left(__name__) included
                keep = drop_name(keep)
            out_labels.append(keep)
    mv, ov = many.values[mi], one.values[oi]
    both = many.present[mi] & one.present[oi]
    left_v, right_v = (ov, mv) if group_right else (mv, ov)
    r = binop_arrays(op, left_v, right_v, both)
    kept = both & (r == 1.0) if filtering else both
    if not (group_left or group_right) and len(pair_sig) > len(sig_ids):
        # one-to-one: Prometheus counts only the samples a comparison keeps (a series of the one side
        # has at most one sample per signature and step, so each pair here is another many-side sample)
        per_sig = np.zeros((len(sig_ids), kept.shape[1]), dtype=np.int64)
        np.add.at(per_sig, np.array(pair_sig, dtype=np.int64), kept)
        if (per_sig > 1).any():
            raise ExecutionError(
                "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
            )
    what = "grouping labels must ensure unique matches" if include or group_left or group_right else None
    if filtering:
        return make_vector(out_labels, left_v, kept, duplicate=what)
    return make_vector(out_labels, r, kept, duplicate=what)


def check_unique(v: Vector, by_sig: dict[Key, list[int]], side: str, steps: Mask) -> None:
    """At most one series per signature present at any of ``steps`` (ExecutionError naming the
    labels): the "one" side of a match."""
    for sig, rows in by_sig.items():
        if len(rows) > 1 and ((v.present[rows].sum(axis=0) > 1) & steps).any():
            raise ExecutionError(
                f"found duplicate series for the match group {fmt_labels(dict(sig))} on the {side} hand-side "
                "of the operation; many-to-many matching not allowed: "
                "matching labels must be unique on one side"
            )
