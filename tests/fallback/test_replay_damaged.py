"""`lossproof replay --skip-damaged`: damage in an older journal segment (a flipped byte, zeroed bytes
across two records, a damaged segment header, a record whose payload does not decode) stops a plain
replay as before; with the flag every intact record before and after it is sent exactly once, in
order, each damaged stretch is logged and counted, the exit status is 4, and the progress (a rerun,
``--prune``, the receiver's pending bytes) passes the damage only in journal order."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lossproof.fallback import journal as jn
from lossproof.fallback import progress as pg
from lossproof.segments.framing import HEADER_SIZE
from lptest.fallback import Fallback, Target, ack_of_raw, record_seqs, run_replay, sent_seqs
from lptest.pipeline import report

ONE_A_REQUEST = ("--batch-points", "0")  # each journal record in a request of its own
SKIPPED = 4  # the exit status of a replay that skipped damage (docs/fallback.md)


@dataclass
class Damage:
    """What a test did to the journal, and what a replay with --skip-damaged must make of it."""

    path: Path
    stops_at: int  # the byte a plain replay names
    stretches: list[tuple[int, int]]  # [from, to) of each stretch skipped, in journal order
    lost: list[jn.Record]  # records inside the damaged bytes (not sent)
    sent_before_stop: list[jn.Record]  # what a plain replay still sends before it stops


def journal_of(fallback_factory: Callable[..., Fallback], n: int = 40) -> tuple[Fallback, list[jn.Record]]:
    """A receiver (still running) whose journal holds ``n`` one-report requests of agent ``c`` in
    segments of about 4 KiB."""
    fb = fallback_factory(extra_args=["--segment-bytes", "4K"])
    fb.start()
    for i in range(1, n + 1):
        assert fb.post("c", [report(i)]).status == 200
    records = jn.read_all(fb.journal)
    assert len({r.segment for r in records}) >= 4
    return fb, records


def damage(kind: str, fb: Fallback, records: list[jn.Record]) -> Damage:
    segments = sorted({r.segment for r in records})
    first = [r for r in records if r.segment == segments[0]]
    # (the damage is in an older segment, not the one being written)
    a = first[len(first) // 2]
    b, c = records[records.index(a) + 1], records[records.index(a) + 2]
    assert a.segment == b.segment == c.segment
    path = jn.segment_path(fb.journal, a.segment)
    before = records[: records.index(a)]
    with open(path, "r+b") as f:
        if kind == "flipped byte":
            f.seek(a.pos + HEADER_SIZE + 3)
            byte = f.read(1)[0]
            f.seek(a.pos + HEADER_SIZE + 3)
            f.write(bytes([byte ^ 0x40]))
            return Damage(path, a.pos, [(a.pos, b.pos)], [a], before)
        if kind == "zeros across two records":
            # from inside a's payload to inside b's: b's header is gone, c is the next intact record
            f.seek(a.pos + HEADER_SIZE + 5)
            f.write(bytes(b.pos + HEADER_SIZE + 5 - (a.pos + HEADER_SIZE + 5)))
            return Damage(path, a.pos, [(a.pos, c.pos)], [a, b], before)
        if kind == "payload that does not decode":
            # the frame stays intact (its CRC is recomputed): only the payload is not an entry
            f.seek(a.pos)
            f.write(jn.FRAMING.encode(a.index, a.received_ms, 0, b"\xc1" * (a.size - HEADER_SIZE)))
            return Damage(path, a.pos, [(a.pos, a.end)], [a], before)
    if kind == "segment header":
        # the second segment's header: its records are intact, the first segment's durable end
        # (held in that header) is unknown; a plain replay cannot even start (as before)
        second = jn.segment_path(fb.journal, segments[1])
        with open(second, "r+b") as f:
            f.seek(20)
            byte = f.read(1)[0]
            f.seek(20)
            f.write(bytes([byte ^ 0x01]))
        return Damage(second, 0, [(0, HEADER_SIZE)], [], [])
    raise AssertionError(kind)


def skip_events(stderr: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [e for e in events if e["event"] == "replay.skipped_damage"]


KINDS = ["flipped byte", "zeros across two records", "segment header", "payload that does not decode"]


@pytest.mark.parametrize("kind", KINDS)
def test_skip_damaged_sends_every_intact_record_once_and_accounts_for_the_damage(
    fallback_factory: Callable[..., Fallback], kind: str
) -> None:
    fb, records = journal_of(fallback_factory)
    d = damage(kind, fb, records)
    # one target for all the runs: progress is kept per target URL
    target = Target(lambda n, h, b: ack_of_raw(h, b))
    try:
        check_runs(fb, target, records, d)
    finally:
        target.close()


def check_runs(fb: Fallback, target: Target, records: list[jn.Record], d: Damage) -> None:
    intact = [r for r in records if r not in d.lost]
    segments = jn.list_segments(fb.journal)

    # without the flag: stops at the damage as before (after what precedes it), suggesting the flag
    out = run_replay(fb.data_dir, target.url, "k", "--concurrency", "1", "--prune", "--retention", "0")
    assert out.returncode == 1, (out.stdout, out.stderr)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: journal corrupt: {d.path} at byte {d.stops_at}: "), last
    assert "--skip-damaged" in last, last
    sent = sent_seqs(target.requests)
    assert sent == record_seqs(d.sent_before_stop)
    assert not skip_events(out.stderr)
    assert jn.list_segments(fb.journal) == segments  # nothing pruned

    # with it: everything intact, once, in journal order; each stretch logged and counted; exit 4
    target.requests.clear()
    out = run_replay(fb.data_dir, target.url, "k", "--concurrency", "1", "--skip-damaged")
    assert out.returncode == SKIPPED, (out.stdout, out.stderr)
    # (it resumed where the plain replay stopped: the two together sent each intact record once)
    assert sent + sent_seqs(target.requests) == record_seqs(intact)
    events = skip_events(out.stderr)
    assert [(e["file"], e["from_byte"], e["to_byte"], e["bytes"]) for e in events] == [
        (str(d.path), a, b, b - a) for a, b in d.stretches
    ], events
    assert all(e["level"] == "warning" and e["component"] == "replay" and e["reason"] for e in events)
    # the last intact record before the damage, though this run resumed right at it
    before = d.sent_before_stop[-1].index if d.sent_before_stop else records[0].index - 1
    if d.lost:
        assert events[0]["after_index"] == before, events
    skipped_bytes = sum(b - a for a, b in d.stretches)
    n = len(d.stretches)
    assert f"SKIPPED {n} damaged stretch of the journal ({skipped_bytes:,} bytes" in out.stdout, out.stdout
    assert out.stdout.startswith(f"replayed {len(intact) - len(d.sent_before_stop)} requests"), out.stdout
    progress = pg.load_progress(fb.data_dir)
    assert progress is not None and progress.position == records[-1].next_position
    metric = re.search(r"^lossproof_fallback_pending_replay_bytes (\S+)$", fb.metrics(), re.M)
    assert metric is not None and float(metric.group(1)) == 0.0

    # a rerun resumes past it: sends nothing, skips nothing; --prune deletes what was passed
    target.requests.clear()
    out = run_replay(fb.data_dir, target.url, "k", "--skip-damaged", "--prune", "--retention", "0")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert target.requests == [] and out.stdout.startswith("replayed 0 requests"), out.stdout
    assert not skip_events(out.stderr) and "SKIPPED" not in out.stdout
    assert jn.list_segments(fb.journal) == segments[-1:]  # all but the newest, the damaged one too


def test_progress_passes_skipped_bytes_only_in_journal_order(
    fallback_factory: Callable[..., Fallback],
) -> None:
    """A replay stopped on the record just before the damage has not passed the damage, even if it
    read past it already: its rerun starts at that record and skips (and tells of) the damage again."""
    fb, records = journal_of(fallback_factory)
    d = damage("zeros across two records", fb, records)
    stop_on = d.sent_before_stop[-1]  # the last record before the damage

    refuse = [True]

    def script(n: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if refuse[0] and body == stop_on.entry.body:
            return 401, {}, b'{"error": "missing or unknown API key (Authorization: Bearer <key>)"}'
        return ack_of_raw(headers, body)

    target = Target(script)
    try:
        out = run_replay(fb.data_dir, target.url, "k", "--concurrency", "1", "--skip-damaged", *ONE_A_REQUEST)
        assert out.returncode == 1, (out.stdout, out.stderr)
        progress = pg.load_progress(fb.data_dir)
        assert progress is not None and progress.position == stop_on.position

        refuse[0] = False
        target.requests.clear()
        out = run_replay(fb.data_dir, target.url, "k", "--skip-damaged")
    finally:
        target.close()
    assert out.returncode == SKIPPED, (out.stdout, out.stderr)
    rest = [r for r in records[records.index(stop_on) :] if r not in d.lost]
    assert sorted(sent_seqs(target.requests)) == sorted(record_seqs(rest))
    assert [(e["from_byte"], e["to_byte"]) for e in skip_events(out.stderr)] == d.stretches
