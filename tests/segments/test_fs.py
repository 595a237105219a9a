"""The file-system seam: a FaultyFS handed to a writer fails its writes and syncs, and the writer
refuses (never acknowledges) what it could not make durable, then carries on once the disk is back."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from lossproof.agent.spool import Spool, SpoolError
from lossproof.fallback import journal as jn
from lossproof.segments.fs import FaultyFS, InjectedFault


class Source:
    def __init__(self) -> None:
        self.faults: dict[str, dict[str, Any]] = {}

    def get(self, name: str) -> dict[str, Any] | None:
        return self.faults.get(name)


def body(seq: int) -> bytes:
    return b'{"seq": %d}' % seq


def test_faulty_fs_fails_and_delays_as_told(tmp_path: Path) -> None:
    src = Source()
    fs = FaultyFS(src, "x")
    fs.write_atomic(tmp_path / "a", b"1")
    src.faults = {"x.write": {"mode": "enospc"}}
    with pytest.raises(InjectedFault) as e:
        fs.write_atomic(tmp_path / "a", b"2")
    assert e.value.errno == errno.ENOSPC
    src.faults = {"x.fsync": {"mode": "fail"}}
    with pytest.raises(InjectedFault, match="injected fsync"):
        fs.write_atomic(tmp_path / "a", b"3")
    assert (tmp_path / "a").read_bytes() == b"1"
    src.faults = {"y.fsync": {"mode": "fail"}}  # another writer's fault
    fs.write_atomic(tmp_path / "a", b"4")
    assert (tmp_path / "a").read_bytes() == b"4"


@pytest.mark.parametrize("fault", [{"spool.write": {"mode": "enospc"}}, {"spool.fsync": {"mode": "fail"}}])
def test_spool_refuses_what_it_cannot_sync_and_never_reuses_a_seq(
    tmp_path: Path, fault: dict[str, Any]
) -> None:
    src = Source()
    with Spool(tmp_path, fs=FaultyFS(src, "spool")) as s:
        assert s.append([body, body]) == [1, 2]
        src.faults = fault
        with pytest.raises(SpoolError, match="injected"):
            s.append([body])
        src.faults = {}
        got = s.append([body])
        assert got[0] >= 3
        assert dict(s.read([1, 2, *got])) == {1: body(1), 2: body(2), got[0]: body(got[0])}


def test_journal_refuses_while_fsync_fails_and_recovers(tmp_path: Path) -> None:
    src = Source()

    async def main() -> None:
        w = jn.JournalWriter(tmp_path, fs=FaultyFS(src, "fallback"))
        await w.start()
        e = jn.Entry("t", "a", "application/json", "", [(1, 1)], 1, 1, b"one")
        await w.append(e, 1)
        src.faults = {"fallback.fsync": {"mode": "fail"}}
        with pytest.raises(jn.JournalUnavailable, match="injected fsync"):
            await w.append(e, 2)
        assert not w.healthy()[0]
        src.faults = {}
        await w.append(e, 3)
        assert w.healthy()[0]
        await w.close()

    asyncio.run(main())
    assert [r.received_ms for r in jn.read_all(tmp_path)] == [1, 3]
