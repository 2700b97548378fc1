"""The I/O of warm spares (how many: boxer.nat_traversal.client.SpareGoals): after a connect to
an instance, punched and authenticated connections to the same peer and port, made in the
background and held by the fast path for the app's next connect."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from boxer.agent.fastpath import FastPath
from boxer.agent.keepalive import enable_keepalive
from boxer.agent.outgoing import Connector
from boxer.agent.tasks import Tasks
from boxer.nat_traversal.client import SpareGoals, Target

log = logging.getLogger(__name__)

WARM_SPARES_ENV = "BOXER_WARM_SPARES"  # spares per (peer, port) at first; 0: none; default 1
MAX_WARM_SPARES = 4  # per (peer, port), for apps that connect faster than one spare is remade
WARM_DELAY = 0.01  # seconds between using a spare and starting to make its replacement


def warm_spares(env: Mapping[str, str] | None = None) -> int:
    """BOXER_WARM_SPARES, else 1; read when asked (an agent forked from the zygote gets its
    instance's environment after import)."""
    raw = (os.environ if env is None else env).get(WARM_SPARES_ENV, "")
    try:
        return int(raw) if raw else 1
    except ValueError:
        raise ValueError(f"{WARM_SPARES_ENV}={raw!r} is not a whole number of spares") from None


class SpareMaker:
    def __init__(self, connector: Connector, fast: FastPath, tasks: Tasks, max_age: float) -> None:
        self.connector = connector
        self.fast = fast
        self.tasks = tasks
        self.max_age = max_age
        self.goals = SpareGoals(warm_spares(), MAX_WARM_SPARES)

    def missed(self, target: Target) -> None:
        """The app connected with no spare there (the fast path would have used one)."""
        self.goals.missed(target)

    def warm_up(self, target: Target) -> None:
        """Make spares for this target in the background (one maker per target at a time)."""
        if not self.tasks.closed and self.goals.should_start(target, self.fast.spare_count(target)):
            self.tasks.spawn(self._make(target))

    async def _make(self, target: Target) -> None:
        try:
            # Not in the same instant as the connect that used the last spare: both agents would be
            # punching the new one while the app's connection is being woken and accepted.
            await asyncio.sleep(WARM_DELAY)
            while self.goals.wanted(target, self.fast.spare_count(target)) > 0 and not self.tasks.closed:
                result = await self.connector.connect(*target, service=False, warm=True)
                if isinstance(result, int):
                    log.debug("no spare for %s:%d: errno %d", target[0], target[1], result)
                    return
                sock, local_port = result
                enable_keepalive(sock)
                # Spares age out well before NAT mappings could (keepalives also run on them).
                self.fast.put_spare(target, sock, local_port, self.max_age)
        finally:
            self.goals.done(target)
