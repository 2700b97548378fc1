"""Apply link conditions (NFQUEUE rules + the shaper daemon), NAT mapping timeouts
(conntrack sysctls) and mapping flushes inside a lab's namespaces.

Where each endpoint's conditions apply: always on the first hop after the endpoint, never in
the sender's own namespace. A packet held in its sender's own stack (OUTPUT/POSTROUTING of
the namespace whose socket sent it) still counts against that socket (sk_wmem_alloc), and TCP
Small Queues lets a socket have only a few packets below it (9 KB of truesize in `ss -tm`,
4 segments): a sender whose packets wait 10 ms there sends 4 segments per 10 ms, 4.5 Mbit/s
at --rtt 20, with or without loss, with BBR or cubic. A veth crossing orphans the packet, so
one hop later it is just a packet on a wire, as for the routers.

    endpoint   namespace with the NFQUEUE rule   where                                queue
    h<i>       its router bx-N-r<i>               POSTROUTING -o bx-up (before the NAT)  0
    coord      bx-N-inet                          FORWARD, bridge port bx-c              0
    p<k>       bx-N-inet                          FORWARD, bridge port bx-p<k>           k

The internet namespace sees bridged IPv4 in its iptables chains through bridge netfilter
(net.bridge.bridge-nf-call-iptables, per namespace; `-m physdev` names the bridge port).
The delay itself is held by the shaper daemon (`_shaper.py`; netem is not in every kernel).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from boxer._python import module_argv
from boxer.lab import _firewall, _netns, _process, _state
from boxer.lab._conditions import LinkConditions, mapping_timeout_sysctls
from boxer.lab._plan import COORD_PORT_IF, COORDINATOR_HOST, UPLINK_IF, LabPlan, parse_endpoint
from boxer.lab.errors import LabSetupError

log = logging.getLogger(__name__)

SHAPER_READY_TIMEOUT = 5.0


ROUTER_QUEUE = 0  # the one queue of a router namespace
BRIDGE_NETFILTER_SYSCTL = "net/bridge/bridge-nf-call-iptables"


def queue_of(plan: LabPlan, host: str) -> tuple[str, int]:
    """(namespace, NFQUEUE number) where `host`'s packets wait for the shaper on their way
    onto the internet segment: the hop after `host` (see the module docstring)."""
    if host == COORDINATOR_HOST:
        return plan.internet_netns, 0
    kind, index = parse_endpoint(host, len(plan.hosts), len(plan.public_hosts))
    if kind == "h":
        return plan.hosts[index - 1].router_netns, ROUTER_QUEUE
    return plan.internet_netns, index


def queue_netns(plan: LabPlan, host: str) -> str:
    """The namespace whose NFQUEUE rule holds `host`'s packets."""
    return queue_of(plan, host)[0]


def bridge_port(plan: LabPlan, host: str) -> str:
    """The internet namespace's bridge port towards coord or a public host."""
    if host == COORDINATOR_HOST:
        return COORD_PORT_IF
    _, index = parse_endpoint(host, len(plan.hosts), len(plan.public_hosts))
    return plan.public_hosts[index - 1].bridge_port


def queue_rules(shaped: bool, uplink: str = UPLINK_IF) -> str:
    """The whole mangle table of a router (iptables-restore replaces only the tables it is
    given, so the router's nat and filter tables, port forwards included, stay as they are).
    No --queue-bypass: if the shaper died, a shaped link goes dark instead of silently clean."""
    lines = ["*mangle"]
    if shaped:
        lines.append(f"-A POSTROUTING -o {uplink} -j NFQUEUE --queue-num {ROUTER_QUEUE}")
    return "\n".join([*lines, "COMMIT", ""])


def bridge_queue_rules(ports: Mapping[str, int]) -> str:
    """The whole mangle table of the internet namespace: packets that enter the bridge from
    each shaped port ({bridge port: queue number}) wait in that port's queue."""
    lines = ["*mangle"]
    for port, queue in ports.items():
        lines.append(f"-A FORWARD -m physdev --physdev-in {port} -j NFQUEUE --queue-num {queue}")
    return "\n".join([*lines, "COMMIT", ""])


def recorded_links(plan: LabPlan) -> dict[str, LinkConditions]:
    """Every endpoint's link as lab.json has it (clean for one it does not mention)."""
    data = _state.read(plan.name) or {}
    described = {COORDINATOR_HOST: data.get("coordinator_link")}
    described.update({h.get("name"): h.get("link") for h in data.get("hosts", [])})
    return {e: LinkConditions.from_description(described.get(e)) for e in plan.endpoint_names()}


def enable_bridge_netfilter(netns: str) -> None:
    """Make the bridge of `netns` pass IPv4 through that namespace's iptables chains. The
    sysctl is per namespace; it exists only when the kernel has br_netfilter."""
    try:
        _netns.write_sysctl(netns, BRIDGE_NETFILTER_SYSCTL, "1")
    except FileNotFoundError:
        raise LabSetupError(
            "link conditions on coord and public hosts are applied where their packets enter "
            "the lab's bridge, which needs bridge netfilter: this kernel has no br_netfilter "
            "loaded (modprobe br_netfilter; note that it also sends the machine's own bridged "
            "traffic through iptables unless net.bridge.bridge-nf-call-iptables=0 is set)"
        ) from None


def apply_queue_rules(plan: LabPlan, links: Mapping[str, LinkConditions]) -> None:
    """Queue (or stop queueing) the packets of the endpoints in `links`. Routers get a mangle
    table of their own; coord and the public hosts share the internet namespace's, so changing
    one of them rewrites it from lab.json's links with `links` laid over them."""
    rulesets = []
    bridged = []
    for host, link in links.items():
        netns, _ = queue_of(plan, host)
        if netns == plan.internet_netns:
            bridged.append(host)
        else:
            rulesets.append((netns, queue_rules(not link.clean)))
    if not bridged:
        _firewall.apply(rulesets)
        return
    with _state.locked(plan.name):
        current = {**recorded_links(plan), **links}
        ports = {
            bridge_port(plan, host): queue_of(plan, host)[1]
            for host, link in current.items()
            if not link.clean and queue_of(plan, host)[0] == plan.internet_netns
        }
        if ports:
            enable_bridge_netfilter(plan.internet_netns)
        _firewall.apply([*rulesets, (plan.internet_netns, bridge_queue_rules(ports))])


def shaper_argv(state_dir: Path) -> list[str]:
    return module_argv("boxer.lab._shaper", str(state_dir))


def _ready_path(state_dir: Path) -> Path:
    return state_dir / "shaper.ready"


def reload_count(state_dir: Path) -> int:
    try:
        return int(_ready_path(state_dir).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def start_shaper(netns: str, state_dir: Path, log_path: Path) -> tuple[int, list[str]]:
    """Start the shaper inside `netns` and wait until it has read lab.json; (pid, argv)."""
    argv = shaper_argv(state_dir)
    before = reload_count(state_dir)
    pid = _process.spawn_detached(netns, argv, log_path, dict(os.environ))
    wait_reloaded(pid, state_dir, before, log_path)
    return pid, argv


def wait_reloaded(pid: int, state_dir: Path, before: int, log_path: Path) -> None:
    deadline = time.monotonic() + SHAPER_READY_TIMEOUT
    while reload_count(state_dir) <= before:
        if not _process.alive(pid):
            raise LabSetupError(
                f"the lab's shaper (pid {pid}) exited; last lines of {log_path}:\n"
                + (_process.tail(log_path) or "(empty)")
            )
        if time.monotonic() > deadline:
            raise LabSetupError(f"the lab's shaper (pid {pid}) did not (re)load its links "
                                f"within {SHAPER_READY_TIMEOUT:g} s; see {log_path}")
        time.sleep(0.005)


def apply_mapping_timeout(plan: LabPlan, seconds: int) -> None:
    """Set the conntrack timeouts in every router namespace (they are per namespace: the
    machine's own and other labs' are untouched)."""
    for host in plan.hosts:
        for key, value in mapping_timeout_sysctls(seconds).items():
            _netns.write_sysctl(host.router_netns, key, value)


def flush_mappings(router_netns: str) -> None:
    """Forget every NAT mapping (conntrack entry) of one router at once, as if all had timed
    out: established flows through it stop, new ones get fresh mappings."""
    result = subprocess.run(
        ["ip", "netns", "exec", router_netns, "conntrack", "-F"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise LabSetupError(f"conntrack -F in {router_netns} failed: {result.stderr.strip()}")
