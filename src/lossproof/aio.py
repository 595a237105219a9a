"""A coroutine run to completion on uvloop, the event loop of every lossproof process (the HTTP
servers, the fallback receiver, the replay): its C loop costs a fraction of asyncio's own per
callback (the replay spent ~a third of its CPU in asyncio's loop and selector). The standard loop
where uvloop is not installed."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
