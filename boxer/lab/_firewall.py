"""The routers' NAT and filter rules, in iptables-restore syntax, and how they are applied.

Each router behaves like the NAT in front of a Lambda sandbox: outbound connections from its
LAN are masqueraded to its public address (Linux keeps the source port when it can and the
mapping does not depend on the destination, so TCP hole punching works, as it does between
Lambda functions); anything unsolicited from the internet side is dropped without an answer
(no RST, no ICMP), so a connection attempt to a NATed host times out, exactly as on Lambda.
Conntrack matches a peer's SYN that arrives after our own SYN to it as part of our connection
(simultaneous open), which is what lets two NATed hosts punch through to each other.

A symmetric router (`nat="symmetric"`) masquerades with --random-fully (nft: `masquerade
fully-random`): every new connection gets a random public port, even from the same local port,
so the public port the coordinator saw is useless to a peer and hole punching fails. Filtering
is the same conntrack-based address-and-port-dependent filtering in both types.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

from boxer.lab import _netns
from boxer.lab._conditions import DEFAULT_NAT, NAT_SYMMETRIC, validate_nat
from boxer.lab._plan import LAN_IF, UPLINK_IF
from boxer.lab.errors import LabSetupError

log = logging.getLogger(__name__)

IPTABLES_RESTORE = "iptables-restore"  # the nf_tables backend on Debian 12


def router_rules(uplink: str = UPLINK_IF, lan: str = LAN_IF, nat: str = DEFAULT_NAT) -> str:
    """The full ruleset of one router (both tables, default policies included)."""
    masquerade = "-j MASQUERADE" + (
        " --random-fully" if validate_nat(nat) == NAT_SYMMETRIC else ""
    )
    return "\n".join(
        [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":INPUT ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            f"-A POSTROUTING -o {uplink} {masquerade}",
            "COMMIT",
            "*filter",
            # The router itself serves nobody on the internet side: DROP, never REJECT.
            ":INPUT DROP [0:0]",
            ":FORWARD DROP [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            "-A INPUT -i lo -j ACCEPT",
            "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            f"-A INPUT -i {lan} -j ACCEPT",
            "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            f"-A FORWARD -i {lan} -o {uplink} -m conntrack --ctstate NEW -j ACCEPT",
            "COMMIT",
            "",
        ]
    )


def port_forward_rules(
    host_address: str, port: int, uplink: str = UPLINK_IF, lan: str = LAN_IF
) -> str:
    """Rules (for `iptables-restore --noflush`) that open public_address:port -> host:port.
    Only the benchmark's no-NAT baseline uses this; the lab itself never forwards ports."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range 1..65535")
    return "\n".join(
        [
            "*nat",
            (
                f"-A PREROUTING -i {uplink} -p tcp --dport {port} "
                f"-j DNAT --to-destination {host_address}:{port}"
            ),
            "COMMIT",
            "*filter",
            (
                f"-A FORWARD -i {uplink} -o {lan} -p tcp -d {host_address} --dport {port} "
                "-m conntrack --ctstate DNAT -j ACCEPT"
            ),
            "COMMIT",
            "",
        ]
    )


def apply(rulesets: Sequence[tuple[str, str]], noflush: bool = False) -> None:
    """Load each (namespace, ruleset) with one iptables-restore per namespace, all in parallel."""
    argv_tail = [IPTABLES_RESTORE] + (["--noflush"] if noflush else [])
    procs = []
    for netns, rules in rulesets:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv_tail],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(rules)
        proc.stdin.close()
        procs.append((netns, proc))
    failures = []
    for netns, proc in procs:
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        if proc.wait() != 0:
            failures.append(f"{netns}: {err.strip()}")
    if failures:
        raise LabSetupError("iptables-restore failed in " + "; ".join(failures))


def enable_forwarding(netns: str) -> None:
    _netns.write_sysctl(netns, "net/ipv4/ip_forward", "1")
