"""Waiting on the event loop with a deadline, at the cost of a timer: `asyncio.wait_for` wraps
each coroutine it is given in a task of its own (Python 3.11), which the server's hot paths
(each upload's body, each batch the model runs, each wait for a decode worker) would pay per
call."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(deadline: float, make: Callable[[], Awaitable[T]]) -> T:
    """What `make()` gives, awaited until `deadline` (the running loop's clock); TimeoutError
    after it (the wait is cancelled)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout_at(deadline):
            return await make()
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(make(), max(0.0, deadline - loop.time()))
