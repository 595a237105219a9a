"""The soak's memory check: growth per process from the first to the last quarter of its life."""

from __future__ import annotations

from pathlib import Path

from lossproof.chaos.runner import MAX_RSS_GROWTH, memory_grown
from lossproof.chaos.topology import Topology

MB = 2**20


def samples(start: float, seconds: int, rss: list[int]) -> list[tuple[float, int]]:
    step = seconds / len(rss)
    return [(start + i * step, r) for i, r in enumerate(rss)]


def test_growth_is_per_process_and_ignores_short_lives(tmp_path: Path) -> None:
    topo = Topology(tmp_path)
    topo.rss_samples = {
        ("ingest", 10): samples(0, 600, [50 * MB] * 10 + [60 * MB] * 20 + [200 * MB] * 10),  # grows
        ("ingest", 11): samples(0, 600, [40 * MB] * 40),  # flat: the role shows the worst process
        ("worker", 20): samples(0, 600, [90 * MB] * 10 + [50 * MB] * 30),  # shrinks
        ("agent", 30): samples(0, 30, [10 * MB] * 5 + [500 * MB] * 5),  # lived 30 s: tells nothing
    }
    g = topo.rss_growth()
    assert g == {"ingest": 150 * MB, "worker": -40 * MB}
    assert memory_grown(g) == "ingest +150 MB"


def test_brokers_and_small_growth_do_not_fail() -> None:
    assert memory_grown({"broker": 300 * MB, "worker": MAX_RSS_GROWTH}) == ""
