"""The PostgreSQL writer's stored-times table (store/pg/parts.py, StoredTops) against a dict model:
per series the highest time raised to, and whether its chunks were probed."""

from __future__ import annotations

import numpy as np

from lossproof.store.pg.parts import NONE, StoredTops


def test_raise_to_keeps_the_highest_top_and_the_probed_mark_per_series() -> None:
    rng = np.random.default_rng(1)
    table = StoredTops()
    model: dict[int, tuple[int, bool]] = {}
    for _ in range(300):
        sids = np.unique(rng.integers(0, 500, int(rng.integers(0, 60)))).astype(np.int64)
        tops = rng.integers(-5, 100, len(sids)).astype(np.int64)
        probed = [True, None][int(rng.integers(0, 2))]
        table.raise_to(sids, tops, probed)
        for s, t in zip(sids.tolist(), tops.tolist(), strict=True):
            top, was = model.get(s, (NONE, False))
            model[s] = (max(top, t), was or bool(probed))
        keys = sorted(model)
        assert table.sids.tolist() == keys
        assert table.top.tolist() == [model[k][0] for k in keys]
        assert table.probed.tolist() == [model[k][1] for k in keys]
    _, hit = table.find(np.array([-1, 0, 499, 1000], dtype=np.int64))
    assert hit.tolist() == [False, 0 in model, 499 in model, False]
    table.clear()
    assert len(table) == 0 and not table.seen and table.removed is None
