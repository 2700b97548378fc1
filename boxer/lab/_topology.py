"""Wire a lab's namespaces together over netlink (pyroute2), following a `LabPlan`.

Every veth is created inside a lab namespace with its peer placed straight into another lab
namespace, so no interface ever exists, even for a moment, in the machine's own namespace.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]

from boxer.lab import _netns
from boxer.lab._plan import (
    BRIDGE_IF,
    COORD_PORT_IF,
    COORDINATOR_ADDRESS,
    INTERNET_PREFIX,
    LAN_IF,
    LAN_PREFIX,
    UPLINK_IF,
    LabHost,
    LabPlan,
    PublicHost,
)

log = logging.getLogger(__name__)


class _Namespaces:
    """One IPRoute per namespace, opened on first use."""

    def __init__(self) -> None:
        self._routes: dict[str, IPRoute] = {}

    def __getitem__(self, name: str) -> IPRoute:
        if name not in self._routes:
            sock = _netns.netlink_socket(name)
            self._routes[name] = IPRoute(fileno=sock.detach())  # IPRoute owns the fd now
        return self._routes[name]

    def close(self, name: str) -> None:
        ipr = self._routes.pop(name, None)
        if ipr is not None:
            ipr.close()

    def close_all(self) -> None:
        for name in list(self._routes):
            self.close(name)


def _index(ipr: IPRoute, ifname: str) -> int:
    # A targeted RTM_GETLINK by name: link_lookup() would dump every link, which is quadratic
    # on the bridge's namespace of a 200-host lab.
    return int(ipr.link("get", ifname=ifname)[0]["index"])


def _veth(
    ns: _Namespaces, left_ns: str, left: str, right_ns: str, right: str, **left_attrs: Any
) -> None:
    """A veth pair: `left` in `left_ns` (with `left_attrs`, e.g. master, state), `right` in
    `right_ns` (down, no addresses)."""
    right_fd = _netns.open_fd(right_ns)
    try:
        ns[left_ns].link(
            "add",
            ifname=left,
            kind="veth",
            peer={"ifname": right, "net_ns_fd": right_fd},
            **left_attrs,
        )
    finally:
        os.close(right_fd)


def _up(ipr: IPRoute, ifname: str, address: str | None = None, prefixlen: int = 0) -> None:
    index = 1 if ifname == "lo" else _index(ipr, ifname)  # lo is always 1 in a namespace
    if address is not None:
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
    ipr.link("set", index=index, state="up")


def _build_host(ns: _Namespaces, plan: LabPlan, host: LabHost, bridge: int) -> None:
    inet, router, lan = plan.internet_netns, host.router_netns, host.netns
    # Created from the bridge's side so it is enslaved and up in the same request.
    _veth(ns, inet, host.bridge_port, router, UPLINK_IF, master=bridge, state="up")
    _veth(ns, router, LAN_IF, lan, LAN_IF)
    _up(ns[router], "lo")
    _up(ns[router], UPLINK_IF, host.public_address, INTERNET_PREFIX)
    _up(ns[router], LAN_IF, host.gateway, LAN_PREFIX)
    _up(ns[lan], "lo")
    _up(ns[lan], LAN_IF, host.address, LAN_PREFIX)
    # The host's only way out is its NAT router, like a Lambda sandbox behind AWS's NAT.
    ns[lan].route("add", dst="0.0.0.0/0", gateway=host.gateway)


def _build_public(ns: _Namespaces, plan: LabPlan, public: PublicHost, bridge: int) -> None:
    # Straight on the bridge like the coordinator: no router, no NAT, no firewall.
    _veth(ns, plan.internet_netns, public.bridge_port, public.netns, UPLINK_IF,
          master=bridge, state="up")
    _up(ns[public.netns], "lo")
    _up(ns[public.netns], UPLINK_IF, public.address, INTERNET_PREFIX)


def build(plan: LabPlan) -> None:
    """Create the interfaces, addresses and routes of `plan` in its (existing) namespaces."""
    ns = _Namespaces()
    try:
        inet, coord = plan.internet_netns, plan.coordinator_netns
        _up(ns[inet], "lo")
        ns[inet].link("add", ifname=BRIDGE_IF, kind="bridge", state="up")
        bridge = _index(ns[inet], BRIDGE_IF)

        _veth(ns, inet, COORD_PORT_IF, coord, UPLINK_IF, master=bridge, state="up")
        _up(ns[coord], "lo")
        _up(ns[coord], UPLINK_IF, COORDINATOR_ADDRESS, INTERNET_PREFIX)

        for host in plan.hosts:
            _build_host(ns, plan, host, bridge)
            # Close as we go: a 200-host lab would otherwise hold 400 netlink sockets open.
            for name in (host.router_netns, host.netns):
                ns.close(name)
        for public in plan.public_hosts:
            _build_public(ns, plan, public, bridge)
            ns.close(public.netns)
        log.debug("wired lab %s: %d hosts, %d public", plan.name, len(plan.hosts),
                  len(plan.public_hosts))
    finally:
        ns.close_all()
