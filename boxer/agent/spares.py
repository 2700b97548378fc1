"""Warm spares: after a connect to an instance, punched and authenticated connections to the same
peer and port, made in the background and held by the fast path for the app's next connect."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from boxer.agent.fastpath import FastPath
from boxer.agent.keepalive import enable_keepalive
from boxer.agent.link import LinkDown
from boxer.agent.outgoing import Connector
from boxer.agent.punch import PunchError
from boxer.agent.tasks import Tasks

log = logging.getLogger(__name__)

WARM_SPARES = int(os.environ.get("BOXER_WARM_SPARES", "1"))  # per (peer, port) at first; 0: none
MAX_WARM_SPARES = 4  # per (peer, port), for apps that connect faster than one spare is remade
WARM_DELAY = 0.01  # seconds between using a spare and starting to make its replacement

Target = tuple[str, int]


class SpareMaker:
    def __init__(self, connector: Connector, fast: FastPath, tasks: Tasks, connect_timeout: float,
                 max_age: float) -> None:
        self.connector = connector
        self.fast = fast
        self.tasks = tasks
        self.connect_timeout = connect_timeout
        self.max_age = max_age
        self._warming: set[Target] = set()  # targets we are making spares for
        # Spares wanted per target: grows when the app's connects outrun the spare making.
        self._goal: dict[Target, int] = {}

    def missed(self, target: Target) -> None:
        """The app connected with no spare there (the fast path would have used one)."""
        if target in self._warming:
            # The app connected again before its spare was remade: keep one more from now on.
            goal = self._goal.get(target, WARM_SPARES)
            self._goal[target] = min(MAX_WARM_SPARES, goal + 1)

    def warm_up(self, target: Target) -> None:
        """Make spares for this target in the background (one maker per target at a time)."""
        if self._wanted(target) <= 0 or target in self._warming or self.tasks.closed:
            return
        self._warming.add(target)
        self.tasks.spawn(self._make(target))

    async def _make(self, target: Target) -> None:
        try:
            # Not in the same instant as the connect that used the last spare: both agents would be
            # punching the new one while the app's connection is being woken and accepted.
            await asyncio.sleep(WARM_DELAY)
            while self._wanted(target) > 0 and not self.tasks.closed:
                deadline = time.monotonic() + self.connect_timeout
                sock, local_port = await self.connector.connect_overlay(*target, deadline, warm=True)
                enable_keepalive(sock)
                # Spares age out well before NAT mappings could (keepalives also run on them).
                self.fast.put_spare(target, sock, local_port, self.max_age)
        except (PunchError, LinkDown, OSError, asyncio.TimeoutError) as exc:
            log.debug("no spare for %s:%d: %s", target[0], target[1], exc)
        finally:
            self._warming.discard(target)

    def _wanted(self, target: Target) -> int:
        if WARM_SPARES <= 0:
            return 0
        return self._goal.get(target, WARM_SPARES) - self.fast.spare_count(target)
