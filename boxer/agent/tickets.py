"""The agent's two ticket pools: ports whose public endpoint the coordinator has observed.

Outgoing tickets are taken by our own connects (no round trip to learn an endpoint); incoming
ones are deposited at the coordinator, which hands one to a client's connect without asking us
first (one hop saved). Each ticket's rendezvous connection holds its NAT mapping; tickets are
renewed before a NAT could forget an idle one, and all die with the coordinator session they
were observed in."""

from __future__ import annotations

import asyncio
import logging
import time

from boxer.agent.control import Ticket, open_ticket
from boxer.agent.link import CoordinatorLink
from boxer.agent.tasks import Tasks
from boxer.nat_traversal import auth

log = logging.getLogger(__name__)


class TicketPools:
    def __init__(self, link: CoordinatorLink, coordinator: tuple[str, int], token: bytes, tasks: Tasks,
                 size: int, max_age: float) -> None:
        self.link = link
        self.coordinator = coordinator
        self.token = token  # the instance's: the Observe proofs' key
        self.tasks = tasks
        self.size = size
        self.max_age = max_age
        self._outgoing: list[Ticket] = []
        # Keyed before the coordinator can know the ticket: it may hand one to a client before
        # our open_ticket() has even returned.
        self._incoming: dict[str, asyncio.Future[Ticket]] = {}
        self._refill = asyncio.Event()
        self.app_up = asyncio.Event()  # the app listens or connects: time to fill the pools

    def refill(self) -> None:
        """A ticket was used or released: top the pools up (soon, not in this instant)."""
        self._refill.set()

    async def keep_filled(self) -> None:
        """Keeps ports with observed public endpoints ready, so a connect needs no extra round
        trip to learn one. A failure here only costs latency: connects open their own."""
        await self.app_up.wait()
        while not self.tasks.closed:
            self._refill.clear()
            self._retire_old()
            try:
                while len(self._outgoing) < self.size:
                    self._outgoing.append(await self._open("outgoing"))
                while len(self._incoming) < self.size:
                    await self._open_incoming()
            except Exception as exc:
                if self.tasks.closed:
                    return
                log.warning("could not open a rendezvous connection: %s", exc)
                await asyncio.sleep(0.2 if not self.link.up.is_set() else 1.0)
                await self.link.up.wait()
                continue
            try:
                await asyncio.wait_for(self._refill.wait(), self.max_age / 2)
            except asyncio.TimeoutError:
                pass

    def _retire_old(self) -> None:
        cutoff = time.monotonic() - self.max_age
        for ticket in [t for t in self._outgoing if t.opened_at < cutoff]:
            self._outgoing.remove(ticket)
            ticket.close()
        for ticket_id, future in list(self._incoming.items()):
            if future.done() and not future.exception() and future.result().opened_at < cutoff:
                # Closing its rendezvous connection withdraws it at the coordinator too.
                del self._incoming[ticket_id]
                future.result().close()

    async def _open_incoming(self) -> None:
        ticket_id = auth.new_token()
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self._incoming[ticket_id] = future
        try:
            future.set_result(await open_ticket(self.coordinator, self.token,
                                                self.link.registration.session, "incoming", ticket_id))
        except BaseException as exc:
            self._incoming.pop(ticket_id, None)
            future.set_exception(exc)
            future.exception()  # retrieved: whoever awaits it gets it too
            raise

    async def _open(self, purpose: str) -> Ticket:
        return await open_ticket(self.coordinator, self.token, self.link.registration.session, purpose)

    def take_ready(self) -> Ticket | None:
        """A pooled ticket of the current session, or None; the caller closes it when done."""
        # The pool is refilled once the connection is made (see callers), not now: opening a
        # rendezvous connection would compete with this connect for both event loops.
        current = self.link.registration.session
        while self._outgoing:
            ticket = self._outgoing.pop()
            if ticket.session == current:
                return ticket
            ticket.close()
        return None

    async def take(self) -> Ticket:
        """A ticket of the current session for a connection: pooled, or opened now."""
        return self.take_ready() or await self._open("outgoing")

    async def claim_incoming(self, ticket_id: str) -> Ticket | None:
        """The deposited ticket the coordinator gave a client; None if its rendezvous died."""
        pending = self._incoming.pop(ticket_id, None)
        return await pending if pending is not None else None

    def release_incoming(self, ticket_id: str) -> None:
        """A deposited ticket the coordinator used for a connection we refuse: close it."""
        pending = self._incoming.pop(ticket_id, None)
        if pending is not None:
            _close_when_open(pending)
        self._refill.set()

    def drop_all(self) -> None:
        """Tickets belong to one session (and their connections die with it)."""
        for ticket in self._outgoing:
            ticket.close()
        self._outgoing.clear()
        # One still being opened is closed when its open finishes: nothing else holds it then
        # (keep_filled's _open_incoming only resolves the future).
        for future in self._incoming.values():
            _close_when_open(future)
        self._incoming.clear()


def _close_when_open(pending: asyncio.Future[Ticket]) -> None:
    """Closes a ticket now if it is open (at once: the agent's close() may be the loop's last
    step), or once its open succeeds."""
    def close(future: asyncio.Future[Ticket]) -> None:
        if not future.cancelled() and future.exception() is None:
            future.result().close()

    if pending.done():
        close(pending)
    else:
        pending.add_done_callback(close)
