"""promql._rows_of_one: pieces that are consecutive rows of one array are taken as that array's
slice (what their concatenation is, without the copy); anything else is left to concatenate."""

from __future__ import annotations

import numpy as np

from lossproof.query.promql import _rows_of_one


def test_consecutive_rows_of_one_array_are_its_slice() -> None:
    whole = np.arange(60.0).reshape(12, 5).copy()  # (an array of its own: its rows' base)
    parts = [whole[2:5], whole[5:6], whole[6:11]]
    got = _rows_of_one(parts)
    assert got is not None
    assert np.shares_memory(got, whole)
    assert np.array_equal(got, np.concatenate(parts))
    flags = whole > 20
    got_b = _rows_of_one([flags[0:4], flags[4:12]])
    assert got_b is not None and np.array_equal(got_b, flags)


def test_anything_else_is_none() -> None:
    whole = np.arange(60.0).reshape(12, 5).copy()  # (an array of its own: its rows' base)
    other = whole.copy()
    assert _rows_of_one([whole[0:3], whole[4:6]]) is None  # a gap
    assert _rows_of_one([whole[3:6], whole[0:3]]) is None  # out of order
    assert _rows_of_one([whole[0:3], other[3:6]]) is None  # two arrays
    assert _rows_of_one([whole[0:3, 1:], whole[3:6, 1:]]) is None  # columns cut
    assert _rows_of_one([whole[0:3].copy(), whole[3:6]]) is None  # not a view
    assert _rows_of_one([whole[::2][0:2], whole[::2][2:4]]) is None  # strided rows
    assert _rows_of_one([whole.T[0:2], whole.T[2:4]]) is None  # not C-contiguous
