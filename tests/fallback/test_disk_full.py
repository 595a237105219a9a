"""The fallback on a disk that is really full (a small tmpfs): the receiver refuses without piling up
files, and `lossproof replay` still drains its journal.

The fallback's disk is the one that fills during an outage, so both must work there. Injected
faults (``fallback.write``) fail every write alike; only a real file system has room for a 32-byte
segment header and none for a record, or room for a journal read and none for a progress file.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lossproof.fallback import journal as jn
from lossproof.fallback import progress as pg
from lptest.fallback import (
    HTTP,
    Fallback,
    Target,
    ack_of_raw,
    encode_body,
    journal_seqs,
    lossproof,
    post_raw,
    run_replay,
)
from lptest.pipeline import report


def fill_up(mnt: Path, leave: int = 0) -> Path:
    """Fill the file system at ``mnt`` but for about ``leave`` bytes; returns the filler file
    (deleting it makes room again)."""
    slack = mnt / "slack"
    if leave:
        slack.write_bytes(b"\1" * leave)
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096):  # to the last block
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    finally:
        os.close(fd)
    if leave:
        slack.unlink()
    return filler


def health(fb: Fallback) -> int:
    return HTTP.request("GET", fb.url + "/healthz").status


def test_a_full_disk_costs_no_new_segment_file_per_refused_write(
    tiny_fs: Path, fallback_factory: Callable[..., Fallback]
) -> None:
    fb = fallback_factory("tiny")  # its data dir is the tmpfs
    fb.start()
    assert fb.post("full", [report(1)]).status == 200
    # Room for a segment header (a page), none for these ~360 KB requests: each one fails after its
    # write took what was left, which cutting it off frees again.
    filler = fill_up(tiny_fs, leave=256 * 1024)
    files_before = len(jn.list_segments(fb.journal))
    statuses = [fb.post("full", [report(seq, 4000)]).status for seq in range(2, 32)]
    assert statuses == [503] * 30, statuses
    time.sleep(2.5)  # the writer probes the disk every second meanwhile
    files = jn.list_segments(fb.journal)
    # at most the one segment it moved to after the first failure, however many attempts
    assert len(files) <= files_before + 1, (files_before, files)
    assert health(fb) == 503  # the probe is as large as the write that failed

    filler.unlink()
    deadline = time.monotonic() + 10
    while health(fb) != 200:  # healthy again by itself, without traffic
        assert time.monotonic() < deadline, "never healthy again once the disk had room"
        time.sleep(0.1)
    assert fb.post("full", [report(40, 4000)]).status == 200
    assert fb.post("full", [report(41)]).status == 200
    # exactly what was acknowledged, nothing of the refused writes
    assert [s for _t, _a, s in journal_seqs(fb.journal)] == [1, 40, 41]
    assert len(jn.list_segments(fb.journal)) <= files_before + 1


def _journal_of(fb: Fallback, requests: int) -> list[bytes]:
    """``requests`` acknowledged requests of a few agents in the journal; their bodies."""
    bodies = []
    for i in range(1, requests + 1):
        body, enc = encode_body({"agent": f"a{i % 3}", "reports": [report(i)]}, "identity")
        assert post_raw(fb.url, body, enc, fb.key).status == 200
        bodies.append(body)
    return bodies


def test_replay_drains_a_journal_whose_disk_is_full(
    tiny_fs: Path, fallback_factory: Callable[..., Fallback]
) -> None:
    fb = fallback_factory("tiny")
    fb.start()
    bodies = _journal_of(fb, 20)
    fill_up(tiny_fs)
    assert fb.post("more", [report(99, 4000)]).status == 503  # full indeed (a small one may fit)

    def slow(n: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        time.sleep(0.1)  # long enough for a second replay to try meanwhile
        return ack_of_raw(headers, body)

    target = Target(slow)
    try:
        first = subprocess.Popen(
            lossproof(
                "replay",
                "--from",
                str(fb.data_dir),
                "--to",
                target.url,
                "--api-key",
                "lp_replay",
                "--batch-points",
                "0",
                "--concurrency",
                "1",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("LOSSPROOF_")},
        )
        deadline = time.monotonic() + 30
        while not target.requests:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # one replay per data dir, and the lock needs no room either
        second = run_replay(fb.data_dir, target.url, "lp_replay")
        assert second.returncode == 1, (second.stdout, second.stderr)
        assert f"another replay (pid {first.pid}) is running from {fb.data_dir}" in second.stderr
        out, err = first.communicate(timeout=120)
    finally:
        target.close()
    assert first.returncode == 0, (out, err)
    assert "replayed 20 requests" in out and "progress NOT saved" in out, out
    # each failed save is logged as an event of its own (the first one at least), on one line
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    unsaved = [e for e in events if e["event"] == "replay.progress_not_saved"]
    assert unsaved and unsaved[0]["errno"] == "ENOSPC" and unsaved[0]["component"] == "replay", err
    # everything was sent, in journal order; nothing was written next to the journal
    sent = [body for _headers, body in target.requests]
    assert sent == bodies
    assert not pg.progress_path(fb.data_dir).exists()


def test_replay_state_elsewhere_when_the_fallback_disk_is_full(
    tiny_fs: Path, tmp_path: Path, fallback_factory: Callable[..., Fallback]
) -> None:
    """A rejected request must be written down before it counts as done: on a full disk the replay
    stops before it (nothing skipped), and ``--state-dir`` puts that record, and the progress, on
    a disk with room."""
    fb = fallback_factory("tiny")
    fb.start()
    bodies = _journal_of(fb, 6)
    fill_up(tiny_fs)
    refused = bodies[3]

    def script(n: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if body == refused:
            return 400, {}, b'{"error": "malformed: refused for the test"}'
        return ack_of_raw(headers, body)

    state = tmp_path / "replay-state"
    target = Target(script)
    try:
        one_by_one = ("--batch-points", "0", "--concurrency", "1")
        stopped = run_replay(fb.data_dir, target.url, "lp_replay", *one_by_one)
        assert stopped.returncode == 1, (stopped.stdout, stopped.stderr)
        last = stopped.stderr.strip().splitlines()[-1]
        assert "cannot record a rejected request in" in last and "No space left" in last, last
        assert "--state-dir" in last and "nothing was skipped" in last, last
        n = len(target.requests)

        done = run_replay(
            fb.data_dir, target.url, "lp_replay", "--batch-points", "0", "--state-dir", str(state)
        )
        assert done.returncode == 3, (done.stdout, done.stderr)
        assert "1 REJECTED" in done.stdout and "NOT saved" not in done.stdout, done.stdout
        again = run_replay(fb.data_dir, target.url, "lp_replay", "--state-dir", str(state))
    finally:
        target.close()
    assert again.returncode == 0 and "replayed 0 requests" in again.stdout, (again.stdout, again.stderr)
    # the refused request was never counted as done without its record: sent again, then recorded
    assert [b for _h, b in target.requests[:n]].count(refused) == 1
    assert [b for _h, b in target.requests[n:]].count(refused) == 1
    lines = (state / pg.REJECTED_FILE).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["ledger"]["reported"] is True
    progress = pg.load_progress(fb.data_dir, state)
    assert progress is not None and progress.position == jn.read_all(fb.journal)[-1].next_position
    assert not pg.progress_path(fb.data_dir).exists()


def _entry(n: int, size: int) -> jn.Entry:
    return jn.Entry("t", f"a{n}", "application/json", "", [(n, n)], 1, 1, os.urandom(size))


def test_the_segment_written_again_after_failed_writes_reads_back_exactly_the_acknowledged(
    tiny_fs: Path,
) -> None:
    """The writer stays in a segment that holds no record yet after its writes failed (it cuts
    them off): what it writes there once the disk has room is read back, before and after a crash
    and a restart, and nothing of the failed writes is."""
    journal = tiny_fs / "journal"

    async def full_then_room() -> jn.JournalWriter:
        w = jn.JournalWriter(journal)
        await w.start()
        await w.append(_entry(1, 100), 1)
        filler = fill_up(tiny_fs, leave=128 * 1024)
        for n in range(2, 8):  # room for a segment header, not for these
            with pytest.raises(jn.JournalUnavailable, match="No space left"):
                await w.append(_entry(n, 200_000), n)
        bases = jn.list_segments(journal)
        assert len(bases) == 2, bases  # the first one, and the one it moved to after the first failure
        assert jn.segment_path(journal, bases[-1]).stat().st_size == jn.HEADER_SIZE  # failed bytes cut off
        filler.unlink()
        await w.append(_entry(8, 200_000), 8)
        await w.append(_entry(9, 100), 9)
        assert [r.entry.agent for r in jn.read_all(journal)] == ["a1", "a8", "a9"]  # a live reader
        assert jn.list_segments(journal) == bases
        return w

    w = asyncio.run(full_then_room())
    w._gc.abandon()  # kill -9
    w._close_files()
    assert [r.entry.agent for r in jn.read_all(journal)] == ["a1", "a8", "a9"]

    async def restart() -> None:
        w = jn.JournalWriter(journal)
        await w.start()
        await w.append(_entry(10, 100), 10)
        await w.close()

    asyncio.run(restart())
    records = jn.read_all(journal)
    assert [r.entry.agent for r in records] == ["a1", "a8", "a9", "a10"]
