"""PromQL's values as lossproof evaluates them: a :class:`Vector` is one row of labels per series and
(series x steps) arrays of values and presence over a :class:`Grid` of evaluation times; a
:class:`Scalar` one value per step. And the errors a query can end with, in Prometheus' terms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

NAME = "__name__"
Labels = dict[str, str]


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


def drop_name(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != NAME}


def fmt_labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def make_vector(
    labels: list[dict[str, str]], values: F64, present: Mask, duplicate: str | None = None
) -> Vector:
    """A :class:`Vector` of the series that have a value at some step. Series with the same labels
    are one series when they never have a value at the same step (as a range query's result joins
    them); when they do, ExecutionError (``duplicate`` says why, if given)."""
    keep = present.any(axis=1)
    if not keep.all():
        idx = np.flatnonzero(keep)
        labels = [labels[i] for i in idx.tolist()]
        values, present = values[idx], present[idx]
    rows: dict[frozenset[tuple[str, str]], list[int]] = {}
    for i, lab in enumerate(labels):  # equal label sets: equal item sets (no sort needed to group)
        rows.setdefault(frozenset(lab.items()), []).append(i)
    if len(rows) == len(labels):
        return Vector(labels, values, present)
    out_l, out_v, out_p = [], [], []
    for members in rows.values():
        i = members[0]
        if len(members) == 1:
            out_l.append(labels[i])
            out_v.append(values[i])
            out_p.append(present[i])
            continue
        if (present[members].sum(axis=0) > 1).any():
            why = (
                f"multiple matches for labels: {duplicate}"
                if duplicate
                else (f"vector cannot contain metrics with the same labelset {fmt_labels(labels[i])}")
            )
            raise ExecutionError(why)
        p = present[members]
        out_l.append(labels[i])
        out_v.append(values[members][np.argmax(p, axis=0), np.arange(values.shape[1])])
        out_p.append(p.any(axis=0))
    return Vector(out_l, np.vstack(out_v), np.vstack(out_p))
