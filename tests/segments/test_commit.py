"""Known-error tests of the group-commit engine: a failed group is never acknowledged, the engine is
unhealthy until a group commits or the probe succeeds, a bug fails its group, closing answers
everything queued and refuses the rest."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lossproof.segments.commit import CommitFailed, CommitHooks, CommitLimits, GroupCommitter


class Refused(Exception):
    pass


class Req(int):
    @property
    def size(self) -> int:
        return 1


class Owner:
    def __init__(self) -> None:
        self.fail: str | None = None  # "io" or "bug"
        self.probe_ok = False
        self.groups: list[list[int]] = []
        self.probes = 0
        self.health: list[str | None] = []
        self.gate = threading.Event()
        self.gate.set()

    def commit(self, batch: list[Req]) -> list[int]:
        self.gate.wait()
        if self.fail == "io":
            raise CommitFailed("disk says no")
        if self.fail == "bug":
            raise RuntimeError("oops")
        if self.fail == "short":  # a bug too: fewer results than records
            return [x * 10 for x in batch][:-1]
        self.groups.append(batch)
        return [x * 10 for x in batch]

    def probe(self) -> None:
        self.probes += 1
        if not self.probe_ok:
            raise OSError("still broken")

    def engine(self) -> GroupCommitter[Req, int]:
        return GroupCommitter(
            "test-writer",
            self.commit,
            Refused,
            CommitLimits(max_records=100, probe_backoff=(0.01, 0.02)),
            CommitHooks(probe=self.probe, probe_failed=lambda e: f"probe: {e}", on_health=self.health.append),
        )


def test_groups_share_a_commit_and_results_come_back_in_order() -> None:
    o = Owner()

    async def main() -> None:
        gc = o.engine()
        gc.start(asyncio.get_running_loop())
        o.gate.clear()  # hold the thread in its first group while the rest queue up
        first = gc.submit(Req(0))
        await asyncio.sleep(0.05)
        rest = [gc.submit(Req(i)) for i in range(1, 50)]
        o.gate.set()
        assert await first == 0
        assert await asyncio.gather(*rest) == [i * 10 for i in range(1, 50)]
        await gc.close()

    asyncio.run(main())
    assert o.groups[0] == [0] and o.groups[1] == list(range(1, 50))


@pytest.mark.parametrize("kind", ["io", "bug", "short"])
def test_a_failed_group_is_refused_and_the_probe_brings_health_back(kind: str) -> None:
    o = Owner()

    async def main() -> None:
        gc = o.engine()
        gc.start(asyncio.get_running_loop())
        o.fail = kind
        with pytest.raises(Refused):
            await gc.submit(Req(1))
        ok, why = gc.healthy()
        assert not ok and ("disk says no" in why if kind == "io" else "internal error" in why)
        o.fail = None
        deadline = time.monotonic() + 2
        while o.probes < 2 and time.monotonic() < deadline:  # probing, with backoff, still failing
            await asyncio.sleep(0.01)
        assert o.probes >= 2 and gc.healthy() == (False, "probe: still broken")
        o.probe_ok = True
        while not gc.healthy()[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert gc.healthy() == (True, "")
        assert await gc.submit(Req(2)) == 20
        await gc.close()
        with pytest.raises(Refused, match="closed"):
            gc.submit(Req(3))

    asyncio.run(main())
    assert o.groups == [[2]] and o.health[0] is None and o.health[-1] is None


def test_close_answers_everything_queued() -> None:
    o = Owner()

    async def main() -> None:
        gc = o.engine()
        gc.start(asyncio.get_running_loop())
        o.gate.clear()
        futs = [gc.submit(Req(i)) for i in range(300)]
        closing = asyncio.ensure_future(gc.close())
        await asyncio.sleep(0.02)
        o.gate.set()
        await closing
        assert [await f for f in futs] == [i * 10 for i in range(300)]

    asyncio.run(main())
    assert sum(len(g) for g in o.groups) == 300 and max(len(g) for g in o.groups) <= 100


def test_stalled_counts_only_while_requests_wait_with_no_cycle_completed() -> None:
    """What ingest's heartbeat asks (lossproof.heartbeat): an idle engine is never stalled, one whose
    commit hangs (an fsync on a dead disk) is stalled for as long as its requests wait, and a group
    that commits restarts the count."""
    o = Owner()

    async def main() -> None:
        gc = o.engine()
        gc.start(asyncio.get_running_loop())
        await asyncio.sleep(0.3)
        assert gc.stalled_seconds() == 0.0  # idle
        o.gate.clear()  # the commit hangs
        first = gc.submit(Req(1))
        await asyncio.sleep(0.3)
        late = gc.submit(Req(2))  # queued behind the hung group: counted from the first
        await asyncio.sleep(0.2)
        assert gc.stalled_seconds() >= 0.45
        o.gate.set()
        assert await first == 10 and await late == 20
        await asyncio.sleep(0.05)
        assert gc.stalled_seconds() == 0.0
        o.fail = "io"  # failing fast is an answer (a 503), not a stall
        with pytest.raises(Refused):
            await gc.submit(Req(3))
        await asyncio.sleep(0.05)
        assert gc.stalled_seconds() == 0.0
        await gc.close()

    asyncio.run(main())


# A dead thread answers every append with an error at once, for good (ingest: 503s forever); it counts
# as stalled from its death, so ingest stops beating and `up` restarts it (found by review: it was 0).
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
