"""Services: a name and a virtual address per service, and the choice of an instance for each
new connection to it (sans-IO, used by the broker).

A service's virtual address comes from the top of the overlay prefix (instances are numbered from
the bottom), so `getaddrinfo("web")` returns one stable address however many instances `web` has.
Each connect to it is given to the live, non-draining instance listening on that port with the
fewest active connections, counting those handed out since its last report.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Service:
    name: str
    vip: str
    hold: float = 0.0  # how long a connect may wait for a first instance (scale from zero)
    declared: bool = False  # by the controller; otherwise it exists because an instance said so


class ServiceTable:
    """`limit` services at most; `taken(addr)` says an instance holds an address, which a new
    service's address then skips. Addresses never leave the prefix: when every address below
    the broadcast one is an instance's or a service's, no service is added."""

    def __init__(self, network: ipaddress.IPv4Network, limit: int = 1024,
                 taken: Callable[[str], bool] = lambda addr: False) -> None:
        self._network = network
        self._limit = limit
        self._taken = taken
        self._by_name: dict[str, Service] = {}
        self._by_vip: dict[str, Service] = {}
        self._next = int(network.broadcast_address) - 1

    def __len__(self) -> int:
        return len(self._by_name)

    def ensure(self, name: str, hold: float | None = None, declared: bool = False) -> Service | None:
        """The service `name`, added if new; None if it is new and there is no room for it (the
        limit, or no free address left in the prefix)."""
        service = self._by_name.get(name)
        if service is None:
            if len(self._by_name) >= self._limit:
                return None
            vip = self._free_vip()
            if vip is None:
                return None
            service = Service(name, vip)
            self._by_name[name] = service
            self._by_vip[vip] = service
        if hold is not None:
            service.hold = hold
        service.declared = service.declared or declared
        return service

    def _free_vip(self) -> str | None:
        """The highest free address of the prefix (past the network address: none)."""
        while self._next > int(self._network.network_address):
            vip = str(ipaddress.IPv4Address(self._next))
            self._next -= 1
            if not self._taken(vip):
                return vip
        return None

    def get(self, name: str) -> Service | None:
        return self._by_name.get(name)

    def by_vip(self, addr: str) -> Service | None:
        return self._by_vip.get(addr)

    def is_vip(self, addr: str) -> bool:
        return addr in self._by_vip

    def vips(self) -> dict[str, str]:
        return {s.name: s.vip for s in self._by_name.values()}


@dataclass
class Load:
    """What the broker knows of an instance's load between its reports."""
    active: int = 0  # from its last report
    assigned: int = 0  # connections handed to it since that report
    listening: frozenset[int] = frozenset()
    reported: bool = False

    @property
    def score(self) -> int:
        return self.active + self.assigned


def pick(candidates: list[tuple[str, Load]], port: int) -> str | None:
    """The key of the least loaded candidate listening on `port`, or None. Ties go to the first,
    so callers pass candidates in a stable order."""
    best: tuple[int, str] | None = None
    for key, load in candidates:
        if port in load.listening and (best is None or load.score < best[0]):
            best = (load.score, key)
    return best[1] if best else None
