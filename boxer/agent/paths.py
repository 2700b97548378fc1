"""The I/O of one connection's path race (the logic is boxer.nat_traversal.client.PathRace):
the direct path (a simultaneous open from the ticket's port) and the relay, each opened in its
own task; the 32-byte proofs sent where the race says and read on every open path; the winner
returned, every other socket closed. Used by both roles."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter, deque
from collections.abc import Callable

from boxer.agent.features import current
from boxer.agent.inbox import Inbox
from boxer.agent.punch import PunchError, relay_open, simultaneous_open
from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.client import (
    ClosePath,
    Path,
    PathRace,
    RaceAction,
    RaceFailed,
    RaceWon,
    SendProof,
    StartPath,
    Timeouts,
)

log = logging.getLogger(__name__)

# What a path's task reports: ("opened", path, (sock, attempts)), ("proven", path, None),
# ("failed", path, errno name).
_Event = tuple[str, Path, object]


class PathOpener:
    def __init__(self, relay: Callable[[], tuple[str, int] | None], token: bytes, timeouts: Timeouts,
                 stats: Counter[str]) -> None:
        # No secret here: each connection's proofs are keyed by the key its Punch brought,
        # wrapped for us: the instance's token unwraps it.
        self._token = token
        self._relay = relay  # the current session's relay (it may move with a new session)
        self.timeouts = timeouts
        self.stats = stats

    async def open(self, punch: m.Punch, local_port: int) -> tuple[socket.socket, Path]:
        """The winning path's socket, authenticated both ways, and which it is; or PunchError."""
        relay = self._relay()
        mode = punch.mode
        if relay is not None and not current().reuseport:
            # No punch can leave from the port the coordinator saw (features.py): relay only.
            mode = "relay"
        race = PathRace(punch.conn, punch.role, mode, relay is not None, self.timeouts)
        key = punch.key_for(self._token)
        loop = asyncio.get_running_loop()
        events = Inbox()
        socks: dict[Path, socket.socket] = {}
        workers: dict[Path, asyncio.Task] = {}
        attempts = 0
        t0 = time.monotonic()
        pending: deque[RaceAction] = deque(race.start(t0))
        try:
            while True:
                while pending:
                    action = pending.popleft()
                    if isinstance(action, StartPath):
                        workers[action.path] = asyncio.ensure_future(
                            self._run_path(action.path, punch, key, local_port, relay, action.deadline, events))
                    elif isinstance(action, SendProof):
                        try:
                            await loop.sock_sendall(socks[action.path],
                                                    auth.connection_proof(key, punch.conn, punch.role))
                        except OSError:
                            pending += race.failed(action.path, "ECONNABORTED", time.monotonic())
                    elif isinstance(action, ClosePath):
                        worker = workers.pop(action.path, None)
                        if worker is not None:
                            worker.cancel()
                        sock = socks.pop(action.path, None)
                        if sock is not None:
                            sock.close()
                    elif isinstance(action, RaceWon):
                        sock = socks.pop(action.path)
                        # Acknowledge the peer's proof now (setting TCP_QUICKACK sends a pending
                        # ACK at once): otherwise it may sit unacknowledged for up to 40 ms,
                        # holding the peer app's first write behind Nagle.
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                        self.stats[action.path.value] += 1
                        if action.path is Path.DIRECT and attempts == 1:
                            self.stats["first_try"] += 1
                        log.debug("punch %s (%s): %s in %.3f ms", punch.conn, punch.role, action.path.value,
                                  (time.monotonic() - t0) * 1e3)
                        return sock, action.path
                    elif isinstance(action, RaceFailed):
                        raise PunchError(action.errno, action.why)
                timer = race.next_timer()
                assert timer is not None
                event: _Event | None = await events.next(timer)
                if event is None:
                    pending += race.tick(time.monotonic())
                    continue
                kind, path, value = event
                now = time.monotonic()
                if kind == "opened":
                    socks[path], tries = value  # type: ignore[misc]
                    if path is Path.DIRECT:
                        attempts = tries
                    pending += race.opened(path, now)
                elif kind == "proven":
                    pending += race.proven(path, now)
                else:
                    pending += race.failed(path, str(value), now)
        finally:
            for worker in workers.values():
                worker.cancel()
            for sock in socks.values():
                sock.close()
            # A path that opened just as the race was decided (the relay's connect finishing
            # while the direct path's proof is being read) is only in the queue: closed too, or
            # the agent keeps one socket per such connection for ever.
            for kind, _path, value in events.drain():
                if kind == "opened":
                    value[0].close()  # type: ignore[index]

    async def _run_path(self, path: Path, punch: m.Punch, key: bytes, local_port: int,
                        relay: tuple[str, int] | None, deadline: float, events: Inbox) -> None:
        """Opens one path and reads the peer's proof on it: exactly 32 bytes, so application
        bytes that may already follow it stay in the kernel buffer for the application."""
        try:
            if path is Path.DIRECT:
                host, _, port = punch.peer.rpartition(":")
                sock, attempts = await simultaneous_open(local_port, (host, int(port)), deadline)
            else:
                assert relay is not None
                sock, attempts = await relay_open(relay, punch, key, deadline), 1
        except PunchError as exc:
            log.info("%s path for %s failed: %s", path.value, punch.conn, exc)
            events.put_nowait(("failed", path, exc.errno_name))
            return
        # Acknowledge the peer's proof at once: a delayed ACK would hold the application's first
        # small write behind Nagle for up to 40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        events.put_nowait(("opened", path, (sock, attempts)))
        loop = asyncio.get_running_loop()
        peer_role = "server" if punch.role == "client" else "client"
        received = b""
        try:
            while len(received) < auth.CONNECTION_PROOF_SIZE:
                chunk = await loop.sock_recv(sock, auth.CONNECTION_PROOF_SIZE - len(received))
                if not chunk:
                    break
                received += chunk
        except OSError as exc:
            log.info("%s path for %s: %s during authentication", path.value, punch.conn, exc)
        if auth.verify(auth.connection_proof(key, punch.conn, peer_role), received):
            events.put_nowait(("proven", path, None))
        else:
            log.info("%s path for %s: the peer closed it or failed to authenticate (%d bytes)", path.value,
                     punch.conn, len(received))
            events.put_nowait(("failed", path, "ECONNABORTED"))
