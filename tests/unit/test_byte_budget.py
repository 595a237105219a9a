"""The replay's bounds (read-ahead bytes, points in flight): at most ``limit`` held, one larger item
alone, first come first served."""

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


def test_first_come_first_served_so_a_large_take_is_not_passed_over() -> None:
    async def main() -> None:
        b = Budget(100)
        assert await _taken(b, 50)
        large = asyncio.create_task(b.take(100))  # waits for the 50 to go
        await asyncio.sleep(0.01)
        assert not await _taken(b, 10)  # would fit, but comes after the large one
        assert not b.fits(10)
        await b.give(50)
        await asyncio.wait_for(large, 1)
        assert b.held == 100
        small = asyncio.create_task(b.take(10))
        await asyncio.sleep(0.01)
        assert not small.done()
        await b.give(100)
        await asyncio.wait_for(small, 1)
        assert b.held == 10

    asyncio.run(main())


def test_a_cancelled_take_holds_nothing() -> None:
    async def main() -> None:
        b = Budget(100)
        assert await _taken(b, 100)
        first = asyncio.create_task(b.take(60))
        second = asyncio.create_task(b.take(40))
        await asyncio.sleep(0.01)
        first.cancel()
        await b.give(100)
        await asyncio.wait_for(second, 1)
        assert b.held == 40 and first.cancelled()

    asyncio.run(main())
