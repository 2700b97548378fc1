"""Name and address mapping of the overlay (pure: no I/O).

The agent answers the interposer's name lookups from the membership the coordinator pushes, so a
getaddrinfo costs no network round trip. Single-label names are ours: an unknown one is an
authoritative "no such host" (EAI_NONAME), as a real resolver would answer. Names with dots fall
through to libc untouched, and so do the names libc answers from the machine itself (/etc/hosts,
`localhost`, the machine's own name: `LocalNames`), in the order nsswitch.conf gives them. The
instance's own name is its overlay address, as a real host's own name is in its /etc/hosts.

The coordinator sends the full membership once per session, then deltas (protocol 3). A delta
applies only to the version it was made from; on a mismatch the table keeps serving what it has
and the caller asks for the full membership (Resync), ignoring deltas until it comes.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from boxer.agent.ipc import Message, Op, Resolution
from boxer.agent.localnames import LocalNames
from boxer.nat_traversal import messages as m

OVERLAY_DOMAIN = ".boxer"  # "kv-1.boxer" is accepted as well as "kv-1"



class DeltaOutcome(enum.Enum):
    APPLIED = "applied"
    GAP = "gap"  # the delta does not follow our version: ask for the full membership now
    WAITING = "waiting"  # ignored: the full membership was already asked for


@dataclass
class NameTable:
    prefix: ipaddress.IPv4Network
    own_name: str
    own_addr: str
    members: dict[str, str] = field(default_factory=dict)  # name -> overlay address
    services: dict[str, str] = field(default_factory=dict)  # service name -> virtual address
    # What libc answers locally; the agent refreshes it from the files (LocalNamesSource).
    local: LocalNames = field(default_factory=LocalNames)
    # The coordinator's membership version we hold; None: none yet, or out of step since a gap.
    version: int | None = None
    resync_asked: bool = False

    def update(self, members: dict[str, str], services: dict[str, str] | None = None,
               version: int | None = None) -> None:
        """Replaces the whole membership (a full Members, at `version`)."""
        self.members = dict(members)
        self.members[self.own_name] = self.own_addr
        if services is not None:
            self.services = dict(services)
        self.version = version
        self.resync_asked = False

    def apply_delta(self, delta: m.MembersDelta) -> DeltaOutcome:
        """Applies a delta made from the version we hold. Any other is not applied (a missed
        delta would leave a name pointing at a gone instance, or missing, for good)."""
        if self.version is None or delta.base != self.version:
            if self.resync_asked:
                return DeltaOutcome.WAITING
            self.version = None
            self.resync_asked = True
            return DeltaOutcome.GAP
        for name in delta.gone:
            if name != self.own_name:
                self.members.pop(name, None)
        self.members.update(delta.hosts)
        self.members[self.own_name] = self.own_addr  # we know our own address best
        self.services.update(delta.services)
        self.version = delta.version
        return DeltaOutcome.APPLIED

    def is_service_address(self, addr: str) -> bool:
        return addr in self.services.values()

    def resolve(self, name: str) -> tuple[Resolution, str]:
        key = name.lower().rstrip(".")
        overlay_only = key.endswith(OVERLAY_DOMAIN)  # "kv-1.boxer": ours whatever the files say
        if overlay_only:
            key = key[: -len(OVERLAY_DOMAIN)]
        if key == self.own_name:
            return Resolution.FOUND, self.own_addr
        if not overlay_only and self.local.before_overlay(key):
            return Resolution.PASS, ""
        # An instance's own name wins over a service of the same name.
        addr = self.members.get(key) or self.services.get(key)
        if addr is not None:
            return Resolution.FOUND, addr
        if not overlay_only and self.local.after_overlay(key):
            return Resolution.PASS, ""
        authoritative = overlay_only or "." not in key
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


def answer_lookup(names: NameTable, req: Message) -> Message:
    """The reply to the interposer's RESOLVE or REVERSE (the agent's, and the test agent's)."""
    if req.op is Op.RESOLVE:
        resolution, addr = names.resolve(req.name)
        return req.reply(flags=resolution, addr=addr or "0.0.0.0", name=req.name.lower().rstrip("."))
    if req.op is Op.REVERSE:
        resolution, name = names.reverse(req.addr)
        return req.reply(flags=resolution, name=name)
    raise ValueError(f"answer_lookup: {req.op.name} is not a name lookup")
