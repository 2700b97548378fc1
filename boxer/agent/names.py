"""Name and address mapping of the overlay (pure: no I/O beyond reading /etc/hosts once).

The agent answers the interposer's name lookups from the membership the coordinator pushes, so a
getaddrinfo costs no network round trip. Single-label names are ours: an unknown one is an
authoritative "no such host" (EAI_NONAME), as a real resolver would answer. Names with dots, and
names in /etc/hosts (localhost...), fall through to libc untouched.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from boxer.ipc import Resolution

OVERLAY_DOMAIN = ".boxer"  # "kv-1.boxer" is accepted as well as "kv-1"


def read_hosts_file(path: str = "/etc/hosts") -> frozenset[str]:
    names: set[str] = set()
    try:
        with open(path) as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                names.update(n.lower() for n in fields[1:])
    except OSError:
        pass
    return frozenset(names)


@dataclass
class NameTable:
    prefix: ipaddress.IPv4Network
    own_name: str
    own_addr: str
    members: dict[str, str] = field(default_factory=dict)  # name -> overlay address
    services: dict[str, str] = field(default_factory=dict)  # service name -> virtual address
    local_names: frozenset[str] = frozenset()

    def update(self, members: dict[str, str], services: dict[str, str] | None = None) -> None:
        self.members = dict(members)
        self.members[self.own_name] = self.own_addr
        if services is not None:
            self.services = dict(services)

    def is_service_address(self, addr: str) -> bool:
        return addr in self.services.values()

    def resolve(self, name: str) -> tuple[Resolution, str]:
        key = name.lower().rstrip(".")
        if key.endswith(OVERLAY_DOMAIN):
            key = key[: -len(OVERLAY_DOMAIN)]
            authoritative = True
        else:
            authoritative = "." not in key and key not in self.local_names
        # An instance's own name wins over a service of the same name.
        addr = self.members.get(key) or self.services.get(key)
        if addr is not None:
            return Resolution.FOUND, addr
        return (Resolution.NONAME if authoritative and key else Resolution.PASS), ""

    def reverse(self, addr: str) -> tuple[Resolution, str]:
        try:
            ip = ipaddress.IPv4Address(addr)
        except ValueError:
            return Resolution.PASS, ""
        if ip not in self.prefix:
            return Resolution.PASS, ""
        for table in (self.members, self.services):
            for name, member_addr in table.items():
                if member_addr == addr:
                    return Resolution.FOUND, name
        return Resolution.NONAME, ""

    def is_overlay(self, addr: str) -> bool:
        return ipaddress.IPv4Address(addr) in self.prefix
