"""The replay's read-ahead bound: at most ``limit`` bytes held, one larger item alone."""

from __future__ import annotations

import asyncio

from lossproof.fallback.pacing import Budget


async def _taken(budget: Budget, n: int) -> bool:
    """Whether ``take(n)`` got through without anyone giving back (it is cancelled if not)."""
    task = asyncio.create_task(budget.take(n))
    await asyncio.sleep(0.01)
    if task.done():
        return True
    task.cancel()
    return False


def test_takes_wait_while_the_limit_is_held_and_go_on_once_given_back() -> None:
    async def main() -> None:
        b = Budget(100)
        assert await _taken(b, 60)
        assert await _taken(b, 40)  # exactly the limit
        assert not await _taken(b, 1)
        waiting = asyncio.create_task(b.take(50))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await b.give(60)
        await asyncio.wait_for(waiting, 1)
        assert b.held == 90

    asyncio.run(main())


def test_an_item_larger_than_the_limit_passes_alone() -> None:
    async def main() -> None:
        b = Budget(100)
        assert await _taken(b, 10)
        assert not await _taken(b, 500)  # not beside another
        await b.give(10)
        assert await _taken(b, 500)
        assert not await _taken(b, 1)
        await b.give(500)
        assert b.held == 0

    asyncio.run(main())
