"""The I/O of connections other instances make to our app (the logic is
boxer.nat_traversal.client.IncomingTransaction): refused at once if nothing listens, else
punched from a deposited ticket (or one asked for), authenticated, and handed to the fast path,
which wakes the app's listener (or holds a client's spare)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter, deque

from boxer.agent.control import CoordinatorError, Ticket
from boxer.agent.fastpath import FastPath
from boxer.agent.inbox import Inbox
from boxer.agent.keepalive import enable_keepalive
from boxer.agent.link import CoordinatorLink, LinkDown
from boxer.agent.paths import PathOpener
from boxer.agent.punch import PunchError
from boxer.agent.tickets import TicketPools
from boxer.agent.waiters import Waiters
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.client import (
    Abandon,
    ClaimTicket,
    Deliver,
    Failed,
    IncomingTransaction,
    Punch,
    ReleaseTicket,
    SendMessage,
    TakeTicket,
    Timeouts,
)

log = logging.getLogger(__name__)

MAX_HELD_SPARES = 64  # server side: spares held for clients, at most


class IncomingConnections:
    def __init__(self, link: CoordinatorLink, tickets: TicketPools, waiters: Waiters, paths: PathOpener,
                 fast: FastPath, listeners: dict[int, int], stats: Counter[str], timeouts: Timeouts) -> None:
        self.link = link
        self.tickets = tickets
        self.waiters = waiters
        self.paths = paths
        self.fast = fast
        self.listeners = listeners  # real port -> LISTEN count, kept by the agent
        self.stats = stats
        self.timeouts = timeouts
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
        tx = IncomingTransaction(msg, self.timeouts)
        pending = deque(tx.begin(msg.dst_port in self.listeners, self.fast.held_count() >= MAX_HELD_SPARES,
                                 time.monotonic()))
        if tx.outcome is not None:  # refused at once
            if tx.outcome.errno == "ECONNREFUSED":
                self.stats["refused"] += 1
            await self._drive(tx, pending)
            return
        self._in_setup += 1
        try:
            await self._drive(tx, pending)
        finally:
            self._in_setup -= 1

    async def _drive(self, tx: IncomingTransaction, pending: deque) -> None:
        msg = tx.msg
        inbox = Inbox()
        ticket: Ticket | None = None
        race: asyncio.Task | None = None
        try:
            while True:
                while pending:
                    action = pending.popleft()
                    if isinstance(action, SendMessage):
                        if isinstance(action.message, m.Accept):
                            self.waiters.attach(msg.conn, inbox)
                        try:
                            await self.link.send(action.message)
                        except LinkDown as exc:
                            log.info("incoming connection %s from %s failed: %s", msg.conn, msg.src_addr, exc)
                            pending += tx.link_down(time.monotonic())
                    elif isinstance(action, ReleaseTicket):
                        self.tickets.release_incoming(action.ticket)
                    elif isinstance(action, ClaimTicket):
                        try:
                            ticket = await self.tickets.claim_incoming(action.ticket)
                        except (OSError, CoordinatorError, asyncio.TimeoutError):
                            ticket = None
                        now = time.monotonic()
                        pending += (tx.ticket(ticket.ticket, ticket.local_port, now) if ticket is not None
                                    else tx.no_ticket(now))
                    elif isinstance(action, TakeTicket):
                        try:
                            ticket = await self.tickets.take()
                        except (OSError, CoordinatorError, asyncio.TimeoutError) as exc:
                            log.info("incoming connection %s from %s: no ticket: %s", msg.conn, msg.src_addr, exc)
                            return
                        pending += tx.ticket(ticket.ticket, ticket.local_port, time.monotonic())
                    elif isinstance(action, Punch):
                        race = asyncio.ensure_future(self.paths.open(action.punch, action.local_port))
                        race.add_done_callback(inbox.put_nowait)
                    elif isinstance(action, Abandon):
                        self.waiters.close(msg.conn)
                        if ticket is not None:
                            ticket.close()
                            self.tickets.refill()
                            ticket = None
                    elif isinstance(action, Deliver):
                        assert race is not None
                        sock, race = race.result()[0], None
                        self._deliver(msg, sock)
                        return
                    elif isinstance(action, Failed):
                        if action.why != "refused":
                            log.info("incoming connection %s from %s failed: %s (%s)", msg.conn, msg.src_addr,
                                     action.errno, action.why)
                        return
                timer = tx.next_timer()
                assert timer is not None
                item = await inbox.next(timer)
                if item is None:
                    pending += tx.tick(time.monotonic())
                    continue
                now = time.monotonic()
                if isinstance(item, asyncio.Task):
                    exc = item.exception()
                    if exc is None:
                        pending += tx.race_won(item.result()[1], now)
                    elif isinstance(exc, (PunchError, OSError)):
                        pending += tx.race_failed(getattr(exc, "errno_name", "ECONNABORTED"), now)
                    else:
                        raise exc
                else:
                    pending += tx.message(item, now)
        finally:
            if race is not None:
                if not race.done():
                    race.cancel()
                elif not race.cancelled() and race.exception() is None:
                    race.result()[0].close()
            self.waiters.close(msg.conn)
            if ticket is not None:
                ticket.close()
                self.tickets.refill()

    def deliver_own(self, sock: socket.socket, port: int, peer: tuple[str, int]) -> bool:
        """Our app's connect to its own overlay address, far end: woken like any other incoming
        connection, so that the app's accept() sees the overlay address as peer and local
        address; False (the socket closed) if nothing listens on port."""
        local_port = sock.getsockname()[1]
        if not self.fast.wake(sock, port, peer):
            return False
        self._woken[local_port] = time.monotonic() + self.timeouts.accept_pickup
        return True

    def _deliver(self, msg: m.Incoming, sock: socket.socket) -> None:
        enable_keepalive(sock)
        peer = (msg.src_addr, msg.src_port)
        if msg.warm:
            # A client's spare: the fast path reads its GO byte, then wakes our app.
            self.fast.hold(sock, msg.dst_port, peer, self.timeouts.ticket_max_age * 2)
            return
        local_port = sock.getsockname()[1]
        if self.fast.wake(sock, msg.dst_port, peer):
            self._woken[local_port] = time.monotonic() + self.timeouts.accept_pickup
        else:
            log.info("app no longer listens on %d: dropping connection %s", msg.dst_port, msg.conn)
