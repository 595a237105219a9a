"""What the harness does to a stopped embedded log: a power cut, and a log that loses acknowledged data."""

from __future__ import annotations

from pathlib import Path

from lossproof.log.embedded import segment as seg
from lossproof.log.embedded.damage import lose_records, record_locations
from lossproof.log.embedded.offsets import min_committed


def simulate_power_loss(log_dir: Path, partition: int = 0) -> int:
    """Every byte of the partition not yet fsync'd is gone (the writer publishes its durable
    watermark only after fsync, so cutting at it is the worst a power cut can do). Call only after
    the writer was killed. Returns the number of records dropped."""
    pdir = seg.partition_dir(log_dir, partition)
    try:
        with open(pdir / "durable", "rb") as f:
            watermark = seg.decode_watermark(f.read())
    except FileNotFoundError:
        return 0
    if watermark is None:
        return 0
    dropped = [loc for loc in record_locations(log_dir, partition) if loc.offset >= watermark]
    cut: dict[Path, int] = {}
    for loc in dropped:
        cut[loc.path] = min(cut.get(loc.path, loc.pos), loc.pos)
    for path, pos in cut.items():
        with open(path, "r+b") as f:
            f.truncate(pos)
    return len(dropped)


def lose_unconsumed(log_dir: Path, partition: int = 0) -> int:
    """Make every record past the consumers' committed offset vanish: acknowledged, never stored
    (the second post-mortem). Call only while the partition's writer and readers are stopped."""
    locs = record_locations(log_dir, partition)
    if not locs:
        return 0
    committed = min_committed(log_dir, partition) or 0
    last = max(loc.offset for loc in locs)
    if last < committed:
        return 0
    return lose_records(log_dir, committed, last, partition)


def partitions(log_dir: Path) -> list[int]:
    return seg.list_partitions(log_dir) or [0]
