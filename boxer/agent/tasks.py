"""The agent's background tasks: spawned, tracked, and all cancelled at close."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Tasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()
        # Loops also check this: asyncio.wait_for can swallow a cancellation that arrives just as
        # its inner future completes (Python < 3.12), and a loop must never outlive the agent.
        self.closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def close(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
