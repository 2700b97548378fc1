"""Running our event loops: uvloop when it is installed (it is a dependency), asyncio otherwise.

The agent and the coordinator sit on the connect path of every new overlay connection; uvloop
roughly halves the time each of their event-loop steps takes. BOXER_NO_UVLOOP=1 turns it off
(for comparisons, or a platform without a wheel).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    if not os.environ.get("BOXER_NO_UVLOOP"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)
