"""A group-commit thread that died answers every append with an error at once, for good: ingest then
answers 503 forever. It counts as stalled from its death, so ingest stops beating and `up` restarts
the one process that a restart mends (found by review: it stayed at 0)."""
from __future__ import annotations

import asyncio

import pytest

from lossproof.segments.commit import CommitHooks, CommitLimits, GroupCommitter


class Refused(Exception):
    pass


class Req(int):
    @property
    def size(self) -> int:
        return 1


def test_a_dead_commit_thread_counts_as_stalled() -> None:
    def housekeeping() -> None:
        raise RuntimeError("a bug in housekeeping")  # outside commit(): kills the thread

    async def main() -> None:
        gc: GroupCommitter[Req, int] = GroupCommitter(
            "w",
            lambda b: [int(x) for x in b],
            Refused,
            CommitLimits(),
            CommitHooks(housekeeping=housekeeping),
        )
        gc.start(asyncio.get_running_loop())
        await asyncio.sleep(1.5)  # the first idle cycle runs housekeeping
        with pytest.raises(Refused):
            await gc.submit(Req(1))  # thread died: every append refused from now on
        assert not gc.healthy()[0]
        assert gc.stalled_seconds() > 0, "ingest would beat forever over a log that can never answer"

    asyncio.run(main())
