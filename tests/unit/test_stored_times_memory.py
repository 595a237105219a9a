"""Review s9-revA: StoredTimes' memory is bounded by its capacity in entries (docs: 8 bytes an entry,
16 at most while an array grows). Series that were each once large keep their arrays' capacity after
forgetting (Vec::drain keeps it): the table then holds many times the memory its entries need."""

from __future__ import annotations

import ctypes

import numpy as np

from lossproof import _native


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_memory_stays_near_capacity_when_series_take_turns() -> None:
    cap = 200_000
    tbl = _native.StoredTimes(cap)
    n_series = 60
    sids_all = np.arange(n_series, dtype=np.int64)
    tbl.learn(sids_all.tobytes(), np.full(n_series, -(1 << 63), dtype=np.int64).tobytes())
    before = rss()
    for s in range(n_series):  # a backfill, series after series
        ts = np.arange(cap, dtype=np.int64)
        tbl.add(np.full(cap, s, dtype=np.int64).tobytes(), ts.tobytes())
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what is freed is not counted
    grown = rss() - before
    assert len(tbl) <= cap
    # 16 bytes an entry at most (docs/store.md, common.py _STORED_MAX's comment), plus slack
    assert grown < 4 * 16 * cap, f"{grown / 2**20:.0f} MiB for {len(tbl)} entries"
