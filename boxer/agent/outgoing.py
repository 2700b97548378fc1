"""The I/O of the app's connects to other instances (the logic is
boxer.nat_traversal.client.ConnectTransaction): tickets taken, messages sent, the coordinator's
answers routed in, the paths' race run, and the outcome handed back."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import socket
import time
from collections import Counter, deque

from boxer.agent.control import CoordinatorError, Ticket
from boxer.agent.inbox import Inbox
from boxer.agent.link import CoordinatorLink, LinkDown
from boxer.agent.paths import PathOpener
from boxer.agent.punch import PunchError
from boxer.agent.tickets import TicketPools
from boxer.agent.waiters import Waiters
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.client import (
    Abandon,
    Connected,
    ConnectTransaction,
    Failed,
    Punch,
    SendMessage,
    TakeTicket,
    Timeouts,
)

log = logging.getLogger(__name__)


class Connector:
    def __init__(self, link: CoordinatorLink, tickets: TicketPools, waiters: Waiters, paths: PathOpener,
                 timeouts: Timeouts, stats: Counter[str]) -> None:
        self.link = link
        self.tickets = tickets
        self.waiters = waiters
        self.paths = paths
        self.timeouts = timeouts
        # A spare is made once: if it fails, the app's next connect is brokered as usual.
        self._spare_timeouts = dataclasses.replace(timeouts, attempts=1)
        self.stats = stats

    async def connect(self, addr: str, port: int, service: bool,
                      warm: bool = False) -> tuple[socket.socket, int] | int:
        """A connected, authenticated socket and its local port, or the errno the app gets."""
        tx = ConnectTransaction(addr, port, service, self._spare_timeouts if warm else self.timeouts, warm)
        inbox = Inbox()
        ticket: Ticket | None = None
        race: asyncio.Task | None = None
        t0 = time.monotonic()
        pending = deque(tx.begin(t0))
        try:
            while True:
                while pending:
                    action = pending.popleft()
                    if isinstance(action, TakeTicket):
                        ticket, more = await self._take_ticket(tx, action.deadline)
                        pending += more
                    elif isinstance(action, SendMessage):
                        if isinstance(action.message, m.Connect):
                            self.waiters.attach(action.message.conn, inbox)
                        try:
                            await self.link.send(action.message)
                        except LinkDown:
                            pending += tx.link_down(time.monotonic())
                    elif isinstance(action, Punch):
                        race = asyncio.ensure_future(self.paths.open(action.punch, action.local_port))
                        race.add_done_callback(inbox.put_nowait)
                    elif isinstance(action, Abandon):
                        race = _stop(race)
                        self.waiters.close(action.conn)
                        ticket = self._release(ticket)
                    elif isinstance(action, Connected):
                        assert race is not None and race.done()
                        sock, race = race.result()[0], None
                        log.debug("connect %s to %s:%d: %s after %d attempt(s), %.3f ms", action.conn, addr, port,
                                  action.path.value, action.attempts, (time.monotonic() - t0) * 1e3)
                        return sock, action.local_port
                    elif isinstance(action, Failed):
                        if not warm:
                            self.stats["failed"] += 1
                        log.info("connect to %s:%d failed: %s (%s)", addr, port, action.errno, action.why)
                        return getattr(errno, action.errno)
                timer = tx.next_timer()
                assert timer is not None
                item = await inbox.next(timer)
                if item is None:
                    pending += tx.tick(time.monotonic())
                    continue
                now = time.monotonic()
                if isinstance(item, asyncio.Task):
                    if item is not race:
                        continue  # a race we stopped
                    exc = item.exception()
                    if exc is None:
                        pending += tx.race_won(item.result()[1], now)
                    elif isinstance(exc, PunchError):
                        pending += tx.race_failed(exc.errno_name, now)
                    elif isinstance(exc, OSError):
                        pending += tx.local_error(errno.errorcode.get(exc.errno or 0, "ECONNABORTED"), now)
                    else:
                        raise exc
                else:
                    pending += tx.message(item, now)
        finally:
            _stop(race)
            if tx.conn is not None:
                self.waiters.close(tx.conn)
            self._release(ticket)

    async def _take_ticket(self, tx: ConnectTransaction, deadline: float) -> tuple[Ticket | None, list]:
        # A ticket belongs to one coordinator session: while the link is reconnecting, wait for
        # the new session rather than take a ticket the coordinator will not know.
        try:
            await self.link.wait_up(max(0.0, deadline - time.monotonic()))
            ticket = self.tickets.take_ready() or await asyncio.wait_for(
                self.tickets.take(), max(0.0, deadline - time.monotonic()))
        except LinkDown:
            return None, tx.link_down(time.monotonic())
        except asyncio.TimeoutError:
            return None, tx.tick(max(deadline, time.monotonic()))
        except OSError as exc:  # our own resources (ports, descriptors), or the coordinator's port
            log.warning("connect to %s:%d: no ticket: %s", tx.addr, tx.port, exc)
            return None, tx.local_error(errno.errorcode.get(exc.errno or 0, "ECONNABORTED"), time.monotonic())
        except CoordinatorError as exc:
            log.warning("connect to %s:%d: no ticket: %s", tx.addr, tx.port, exc)
            return None, tx.local_error("ECONNABORTED", time.monotonic())
        return ticket, tx.ticket(ticket.ticket, ticket.local_port, time.monotonic())

    def _release(self, ticket: Ticket | None) -> None:
        if ticket is not None:
            ticket.close()
            self.tickets.refill()


def _stop(race: asyncio.Task | None) -> None:
    if race is None:
        return None
    if not race.done():
        race.cancel()
    elif not race.cancelled() and race.exception() is None:
        race.result()[0].close()  # won just as the attempt was given up (a late refusal)
    return None


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    """The two ends of one loopback TCP connection (a connect to our own overlay address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server
