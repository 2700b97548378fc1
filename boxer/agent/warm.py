"""Warm connections: a spare, already punched and authenticated connection per peer and port
the app has connected to, so its next connect there costs one local round trip instead of a
coordinator hop, a punch and an authentication exchange.

The client agent makes the spare with `warm` set; the server agent holds its end without waking
its app. When the client's app connects, the client agent writes one GO byte and hands the
socket over at once; the server agent reads exactly that byte and only then wakes its app,
which accepts the connection as usual. Until then neither application knows the spare exists.

Only connects to an instance's own address use spares; a service's virtual address is balanced
by the coordinator per connection, which a spare would bypass.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

GO = b"\x01"


@dataclass
class Spare:
    sock: socket.socket
    local_port: int
    made_at: float = field(default_factory=time.monotonic)

    def usable(self) -> bool:
        """Still open at the far end? (A server agent closes spares it no longer wants.)"""
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # nothing to read, connection open
        except OSError:
            return False
        return data != b""  # b"" is EOF; any byte would be unexpected, but the app may want it


class SparePool:
    """Client side: spares by (overlay address, port)."""

    def __init__(self, per_target: int = 1, max_age: float = 20.0) -> None:
        self.per_target = per_target
        self.max_age = max_age
        self._spares: dict[tuple[str, int], list[Spare]] = {}

    def take(self, target: tuple[str, int]) -> Spare | None:
        spares = self._spares.get(target, [])
        while spares:
            spare = spares.pop()
            if time.monotonic() - spare.made_at < self.max_age and spare.usable():
                return spare
            spare.sock.close()
        return None

    def wanted(self, target: tuple[str, int]) -> int:
        return self.per_target - len(self._spares.get(target, []))

    def put(self, target: tuple[str, int], spare: Spare) -> None:
        self._spares.setdefault(target, []).append(spare)

    def expire(self) -> None:
        now = time.monotonic()
        for target, spares in self._spares.items():
            for spare in [s for s in spares if now - s.made_at >= self.max_age]:
                spares.remove(spare)
                spare.sock.close()

    def close(self) -> None:
        for spares in self._spares.values():
            for spare in spares:
                spare.sock.close()
        self._spares.clear()
