"""The path of one punched connection: direct (a simultaneous open), or through the relay, then
the 32-byte proofs both ways. Used by both roles."""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Callable

from boxer.agent.punch import PunchError, authenticate, relay_open, simultaneous_open
from boxer.nat_traversal import messages as m

log = logging.getLogger(__name__)


class PathOpener:
    def __init__(self, secret: bytes, relay: Callable[[], tuple[str, int] | None], direct_timeout: float,
                 stats: Counter[str]) -> None:
        self.secret = secret
        self._relay = relay  # the current session's relay (it may move with a new session)
        self.direct_timeout = direct_timeout
        self.stats = stats

    async def open(self, punch: m.Punch, local_port: int, deadline: float) -> socket.socket:
        """Direct first (unless a symmetric NAT rules it out), the relay if that fails."""
        host, _, port = punch.peer.rpartition(":")
        relay = self._relay()
        sock = None
        t0 = time.monotonic()
        if punch.mode == "direct" or relay is None:
            direct_deadline = deadline if relay is None else min(deadline, t0 + self.direct_timeout)
            try:
                sock, attempts = await simultaneous_open(local_port, (host, int(port)), direct_deadline)
                if attempts == 1:
                    self.stats["first_try"] += 1
            except PunchError as exc:
                if relay is None or time.monotonic() >= deadline:
                    raise
                log.info("direct path for %s failed (%s); using the relay", punch.conn, exc)
        path = "direct"
        if sock is None:
            assert relay is not None
            sock = await relay_open(relay, self.secret, punch.conn, punch.role, deadline)
            path = "relayed"
        t1 = time.monotonic()
        try:
            await authenticate(sock, self.secret, punch.conn, punch.role, deadline)
        except BaseException:
            sock.close()
            raise
        self.stats[path] += 1
        log.debug("punch %s (%s, %s): open %.3f ms, auth %.3f ms", punch.conn, punch.role, path,
                  (t1 - t0) * 1e3, (time.monotonic() - t1) * 1e3)
        return sock
