"""Review s9-revA: the worker's remote-write path into the embedded store with a tiny stored-times
table (forgetting all the time): every point once, first write wins."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lossproof.store.embedded.core as core

_spec = importlib.util.spec_from_file_location(
    "revA_promrw_native", Path(__file__).parent.parent / "protocols" / "test_promrw_native.py"
)
t = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(t)


def test_worker_with_a_tiny_stored_times_table() -> None:
    old = core._STORED_MAX
    core._STORED_MAX = 3
    try:
        t.test_the_worker_stores_every_point_once_first_write_wins()
    finally:
        core._STORED_MAX = old
