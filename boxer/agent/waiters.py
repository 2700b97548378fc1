"""The coordinator's answers about one connection in flight (a Punch, then maybe a late
ConnectFailed or Refuse), routed by connection id to whoever waits for them."""

from __future__ import annotations

from boxer.agent.inbox import Inbox
from boxer.nat_traversal import messages as m


class Waiters:
    def __init__(self) -> None:
        self._queues: dict[str, Inbox] = {}

    def attach(self, conn: str, queue: Inbox) -> None:
        """Route `conn`'s messages to a transaction's inbox (one per transaction, over its attempts)."""
        self._queues[conn] = queue

    def close(self, conn: str) -> None:
        self._queues.pop(conn, None)

    def deliver(self, conn: str, message: m.Message) -> bool:
        """False: nobody waits for that connection (it ended already)."""
        queue = self._queues.get(conn)
        if queue is None:
            return False
        queue.put_nowait(message)
        return True
