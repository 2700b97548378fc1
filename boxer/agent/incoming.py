"""Connections other instances make to our app: refused at once if nothing listens, else
punched from a deposited ticket (or one asked for), authenticated, and handed to the fast path,
which wakes the app's listener (or holds a client's spare)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from boxer.agent.control import Ticket
from boxer.agent.fastpath import FastPath
from boxer.agent.keepalive import enable_keepalive
from boxer.agent.link import CoordinatorLink, LinkDown
from boxer.agent.paths import PathOpener
from boxer.agent.punch import PunchError
from boxer.agent.tickets import TicketPools
from boxer.agent.waiters import Waiters
from boxer.nat_traversal import messages as m

log = logging.getLogger(__name__)

MAX_HELD_SPARES = 64  # server side: spares held for clients, at most


class IncomingConnections:
    def __init__(self, link: CoordinatorLink, tickets: TicketPools, waiters: Waiters, paths: PathOpener,
                 fast: FastPath, listeners: dict[int, int], stats: Counter[str], connect_timeout: float,
                 punch_timeout: float, ticket_max_age: float, accept_pickup: float) -> None:
        self.link = link
        self.tickets = tickets
        self.waiters = waiters
        self.paths = paths
        self.fast = fast
        self.listeners = listeners  # real port -> LISTEN count, kept by the agent
        self.stats = stats
        self.connect_timeout = connect_timeout
        self.punch_timeout = punch_timeout
        self.ticket_max_age = ticket_max_age
        self.accept_pickup = accept_pickup
        # Incoming connections the app does not hold yet: being punched, and woken (the app's
        # accept() still to come), by local port, until the fast path would drop them. They
        # count as active: a drained instance must not be stopped with one on its way in.
        self._in_setup = 0
        self._woken: dict[int, float] = {}

    def on_its_way(self) -> int:
        """Connections being set up or woken, not yet accepted by the app."""
        now = time.monotonic()
        for port in [port for port, until in self._woken.items() if until <= now]:
            del self._woken[port]
        return self._in_setup + len(self._woken)

    def accepted(self, local_port: int) -> None:
        self._woken.pop(local_port, None)

    async def serve(self, msg: m.Incoming) -> None:
        if msg.warm and self.fast.held_count() >= MAX_HELD_SPARES:
            await self.link.send(m.Refuse(conn=msg.conn, error="ECONNABORTED"))
            if msg.ticket is not None:
                self.tickets.release_incoming(msg.ticket)
            return
        if msg.dst_port not in self.listeners:
            self.stats["refused"] += 1
            if msg.ticket is not None:
                self.tickets.release_incoming(msg.ticket)
            await self.link.send(m.Refuse(conn=msg.conn, error="ECONNREFUSED"))
            return
        self._in_setup += 1
        try:
            await self._set_up(msg)
        finally:
            self._in_setup -= 1

    async def _set_up(self, msg: m.Incoming) -> None:
        try:
            if msg.ticket is not None and msg.peer is not None:
                ticket = await self.tickets.claim_incoming(msg.ticket)
                if ticket is None:  # its rendezvous connection died meanwhile
                    await self.link.send(m.Refuse(conn=msg.conn, error="ECONNABORTED"))
                    return
                punch = m.Punch(conn=msg.conn, role="server", peer=msg.peer, ticket=msg.ticket, mode=msg.mode)
            else:
                ticket = await self.tickets.take()
                punch = await self._accept_slow_path(msg, ticket)
                if punch is None:
                    ticket.close()
                    return
            try:
                sock = await self.paths.open(punch, ticket.local_port, time.monotonic() + self.punch_timeout)
            finally:
                ticket.close()
                self.tickets.refill()
        except (PunchError, LinkDown, asyncio.TimeoutError, OSError) as exc:
            log.info("incoming connection %s from %s failed: %s", msg.conn, msg.src_addr, exc)
            return
        enable_keepalive(sock)
        peer = (msg.src_addr, msg.src_port)
        if msg.warm:
            # A client's spare: the fast path reads its GO byte, then wakes our app.
            self.fast.hold(sock, msg.dst_port, peer, self.ticket_max_age * 2)
            return
        local_port = sock.getsockname()[1]
        if self.fast.wake(sock, msg.dst_port, peer):
            self._woken[local_port] = time.monotonic() + self.accept_pickup
        else:
            log.info("app no longer listens on %d: dropping connection %s", msg.dst_port, msg.conn)

    async def _accept_slow_path(self, msg: m.Incoming, ticket: Ticket) -> m.Punch | None:
        queue = self.waiters.open(msg.conn)
        try:
            await self.link.send(m.Accept(conn=msg.conn, ticket=ticket.ticket))
            answer = await asyncio.wait_for(queue.get(), self.connect_timeout)
        finally:
            self.waiters.close(msg.conn)
        return answer if isinstance(answer, m.Punch) else None
