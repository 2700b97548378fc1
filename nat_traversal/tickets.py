"""The coordinator's tickets (observed public endpoints of agents' rendezvous ports), indexed
for what the connect path asks: one by id, any incoming one of a session, all of a session or of
a rendezvous connection. Each of those is O(1); a connect or a connection's close must not scan
every ticket of the deployment (16 per instance)."""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass
class Ticket:
    ticket: str
    session: str
    endpoint: str
    cid: int  # the rendezvous connection
    purpose: str = "outgoing"
    conn: str | None = None  # the connect it backs now: a ticket backs one at a time


# Ticket ids that served, remembered so that one never serves again: at most this many, the
# oldest forgotten first (an id is 128 random bits: a new one is never among them by chance).
USED_MEMORY = 65536


class TicketTable:
    def __init__(self, used_memory: int = USED_MEMORY) -> None:
        self._used: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._used_memory = used_memory
        self._by_id: dict[str, Ticket] = {}
        self._by_session: dict[str, set[str]] = {}
        self._incoming: dict[str, dict[str, Ticket]] = {}  # session -> its incoming tickets, oldest first
        self._by_cid: dict[int, str] = {}

    def __contains__(self, ticket_id: str) -> bool:
        return ticket_id in self._by_id

    def count(self, session: str) -> int:
        """The session's tickets (the bound `Limits.tickets_per_session` is checked against)."""
        return len(self._by_session.get(session, ()))

    def get(self, ticket_id: str) -> Ticket | None:
        return self._by_id.get(ticket_id)

    def add(self, ticket: Ticket) -> None:
        self._by_id[ticket.ticket] = ticket
        self._by_session.setdefault(ticket.session, set()).add(ticket.ticket)
        self._by_cid[ticket.cid] = ticket.ticket
        if ticket.purpose == "incoming":
            self._incoming.setdefault(ticket.session, {})[ticket.ticket] = ticket

    def was_used(self, ticket_id: str) -> bool:
        return ticket_id in self._used

    def pop(self, ticket_id: str) -> Ticket | None:
        ticket = self._by_id.pop(ticket_id, None)
        if ticket is None:
            return None
        self._used[ticket_id] = None
        if len(self._used) > self._used_memory:
            self._used.popitem(last=False)
        ids = self._by_session.get(ticket.session)
        if ids is not None:
            ids.discard(ticket_id)
            if not ids:
                del self._by_session[ticket.session]
        if self._by_cid.get(ticket.cid) == ticket_id:
            del self._by_cid[ticket.cid]
        incoming = self._incoming.get(ticket.session)
        if incoming is not None:
            incoming.pop(ticket_id, None)
            if not incoming:
                del self._incoming[ticket.session]
        return ticket

    def take_incoming(self, session: str | None) -> Ticket | None:
        """One of the session's incoming tickets (the oldest), removed."""
        incoming = self._incoming.get(session) if session is not None else None
        return self.pop(next(iter(incoming))) if incoming else None

    def drop_session(self, session: str) -> None:
        for ticket_id in list(self._by_session.get(session, ())):
            self.pop(ticket_id)

    def drop_cid(self, cid: int) -> None:
        ticket_id = self._by_cid.get(cid)
        if ticket_id is not None:
            self.pop(ticket_id)
