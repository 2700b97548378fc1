"""The lab's address plan: pure functions from (lab name, host index) to names and addresses.

Nothing here touches the system, so the plan can be tested and shown without root. The netlink
code (`_netlink.py`) and the firewall (`_firewall.py`) only ever read what this module decides.

Topology of lab N with K hosts::

    bx-N-coord [bx-up 198.18.0.1/16] --- [bx-c] bx-br [bx-r<i>] --- [bx-up 198.18.1.<i>/16] bx-N-r<i>
                                        (bx-N-inet)                  [bx-lan 10.0.<i>.1/24]
                                                                              |
                                                                     [bx-lan 10.0.<i>.2/24] bx-N-h<i>

    public hosts (no NAT, the VM tier):  [bx-p<k>] bx-br  ---  [bx-up 198.18.2.<k>/16] bx-N-p<k>
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from boxer.lab._conditions import DEFAULT_NAT, parse_nat, validate_nat
from boxer.lab.errors import LabUsageError

NAME_RE = re.compile(r"[a-z0-9]{1,10}")
MAX_HOSTS = 200  # one octet of 198.18.1.<i> and 10.0.<i>.0/24, with room to spare
MAX_PUBLIC = 200  # one octet of 198.18.2.<k>
DEFAULT_NAME = "default"

INTERNET_PREFIX = 16  # 198.18.0.0/16: RFC 2544 benchmarking space, never routed on the internet
LAN_PREFIX = 24
COORDINATOR_ADDRESS = "198.18.0.1"
COORDINATOR_PORT = 7000
COORDINATOR_HOST = "coord"

# Interface names, chosen so nothing in a lab can be mistaken for the machine's own eth0.
BRIDGE_IF = "bx-br"  # the internet segment, in bx-N-inet
COORD_PORT_IF = "bx-c"  # bridge port towards the coordinator, in bx-N-inet
UPLINK_IF = "bx-up"  # a router's (or the coordinator's) leg on the internet segment
LAN_IF = "bx-lan"  # the router <-> host link, same name on both ends


def validate_name(name: str) -> str:
    """Return `name` if it is a valid lab name, else raise LabUsageError saying why."""
    if not NAME_RE.fullmatch(name):
        raise LabUsageError(
            f"invalid lab name {name!r}: use 1 to 10 characters from a-z and 0-9"
        )
    return name


def validate_host_count(hosts: int) -> int:
    """Return `hosts` if a lab can have that many hosts, else raise LabUsageError."""
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabUsageError(f"invalid host count {hosts}: a lab has 1 to {MAX_HOSTS} hosts")
    return hosts


def netns_prefix(name: str) -> str:
    """Every namespace of lab `name` starts with this (and no other lab's does: names have no '-')."""
    return f"bx-{name}-"


@dataclass(frozen=True)
class LabHost:
    """One instance host behind its own NAT router."""

    name: str  # "h<i>", what users type
    index: int
    netns: str
    address: str  # private, on the LAN behind the router
    gateway: str  # the router's LAN address
    router_netns: str
    public_address: str  # the router's uplink address: what the NAT maps the host to
    bridge_port: str  # the router's port on the bridge, inside the internet namespace
    nat: str = DEFAULT_NAT  # "eim" or "symmetric" (see _conditions.NAT_TYPES)


@dataclass(frozen=True)
class PublicHost:
    """A host with a public address on the internet segment and no NAT (the VM tier): anyone
    can connect to it. Its address is its public address."""

    name: str  # "p<k>"
    index: int
    netns: str
    address: str
    bridge_port: str

    @property
    def public_address(self) -> str:
        return self.address


def validate_public_count(public: int) -> int:
    if isinstance(public, bool) or not isinstance(public, int) or not 0 <= public <= MAX_PUBLIC:
        raise LabUsageError(
            f"invalid public host count {public!r}: a lab has 0 to {MAX_PUBLIC} public hosts"
        )
    return public


def public_host_plan(lab: str, index: int) -> PublicHost:
    """The names and addresses of public host `index` (1-based) in lab `lab`."""
    if not 1 <= index <= MAX_PUBLIC:
        raise LabUsageError(f"public host index {index} out of range 1..{MAX_PUBLIC}")
    return PublicHost(
        name=f"p{index}",
        index=index,
        netns=f"{netns_prefix(lab)}p{index}",
        address=f"198.18.2.{index}",
        bridge_port=f"bx-p{index}",
    )


def host_plan(lab: str, index: int, nat: str = DEFAULT_NAT) -> LabHost:
    """The names and addresses of host `index` (1-based) in lab `lab`: the one mapping."""
    if not 1 <= index <= MAX_HOSTS:
        raise LabUsageError(f"host index {index} out of range 1..{MAX_HOSTS}")
    prefix = netns_prefix(lab)
    return LabHost(
        name=f"h{index}",
        index=index,
        netns=f"{prefix}h{index}",
        address=f"10.0.{index}.2",
        gateway=f"10.0.{index}.1",
        router_netns=f"{prefix}r{index}",
        public_address=f"198.18.1.{index}",
        bridge_port=f"bx-r{index}",
        nat=validate_nat(nat, f" for h{index}"),
    )


@dataclass(frozen=True)
class LabPlan:
    """The whole topology of one lab."""

    name: str
    hosts: tuple[LabHost, ...]
    public_hosts: tuple[PublicHost, ...] = ()

    @property
    def internet_netns(self) -> str:
        return f"{netns_prefix(self.name)}inet"

    @property
    def coordinator_netns(self) -> str:
        return f"{netns_prefix(self.name)}coord"

    @property
    def coordinator(self) -> str:
        return f"{COORDINATOR_ADDRESS}:{COORDINATOR_PORT}"

    def instance_netns(self) -> list[str]:
        """The namespaces instances run in (NATed and public hosts), each a machine of its own."""
        return [h.netns for h in self.hosts] + [p.netns for p in self.public_hosts]

    def all_netns(self) -> list[str]:
        names = [self.internet_netns, self.coordinator_netns]
        for host in self.hosts:
            names += [host.router_netns, host.netns]
        names += [public.netns for public in self.public_hosts]
        return names

    def endpoint_names(self) -> list[str]:
        """Everything with a leg on the internet segment: "coord", h<i>, p<k>."""
        return [COORDINATOR_HOST, *(h.name for h in self.hosts),
                *(p.name for p in self.public_hosts)]

    def netns_of(self, host: str) -> str:
        """The namespace a program of `host` ("coord", "h<i>", "p<k>") runs in."""
        if host == COORDINATOR_HOST:
            return self.coordinator_netns
        kind, index = parse_endpoint(host, len(self.hosts), len(self.public_hosts))
        return (self.hosts if kind == "h" else self.public_hosts)[index - 1].netns


def lab_plan(
    name: str,
    hosts: int,
    *,
    nat: str | Mapping[str, str] | None = None,
    public: int = 0,
) -> LabPlan:
    """Validate the inputs and lay out the lab: `hosts` NATed hosts (NAT types per
    `_conditions.parse_nat`, eim by default) and `public` hosts without NAT."""
    validate_name(name)
    validate_host_count(hosts)
    validate_public_count(public)
    nats = parse_nat(nat, [f"h{i}" for i in range(1, hosts + 1)])
    return LabPlan(
        name=name,
        hosts=tuple(host_plan(name, i, nats[f"h{i}"]) for i in range(1, hosts + 1)),
        public_hosts=tuple(public_host_plan(name, k) for k in range(1, public + 1)),
    )


def parse_host_name(host: str, hosts: int) -> int | None:
    """`"h3"` -> 3, `"coord"` -> None; anything else (or h<i> beyond the lab) is a usage error."""
    if host == COORDINATOR_HOST:
        return None
    match = re.fullmatch(r"h([1-9][0-9]*)", host)
    if not match or int(match.group(1)) > hosts:
        raise LabUsageError(
            f"no host {host!r} in this lab: use {COORDINATOR_HOST!r} or h1..h{hosts}"
        )
    return int(match.group(1))


def _choices(hosts: int, public: int) -> str:
    return f"{COORDINATOR_HOST!r}, h1..h{hosts}" + (f" or p1..p{public}" if public else "")


def parse_endpoint(host: str, hosts: int, public: int) -> tuple[str, int]:
    """`"h3"` -> ("h", 3), `"p1"` -> ("p", 1); anything else is a usage error (the
    coordinator is handled by the callers, it has no index)."""
    match = re.fullmatch(r"([hp])([1-9][0-9]*)", host)
    if match:
        kind, index = match.group(1), int(match.group(2))
        if index <= (hosts if kind == "h" else public):
            return kind, index
    raise LabUsageError(f"no host {host!r} in this lab: use {_choices(hosts, public)}")
