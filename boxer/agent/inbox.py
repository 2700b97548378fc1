"""What one shell loop waits for (the coordinator's messages about its connection, its tasks'
results), with a deadline, and no task per wait: asyncio.wait_for wraps every wait in a task,
which on the connect path, a few waits per connection on both agents, costs CPU we count."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any


class Inbox:
    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, deadline: float) -> Any | None:
        """The oldest item, or None once `deadline` (time.monotonic()) has passed without one."""
        if not self._items:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(max(0.0, deadline - time.monotonic()), _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._items.popleft() if self._items else None

    def drain(self) -> list[Any]:
        """The items nobody took, oldest first, removed: the shell that stops waiting may own
        resources in them."""
        items = list(self._items)
        self._items.clear()
        return items


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
