"""What can make a lab hostile, as pure data: NAT types, link conditions, mapping timeouts.

Nothing here touches the system (`_shaping.py` and `_firewall.py` apply it), so every
validation and every kernel argument can be tested without root.

Link conditions are applied once per endpoint (NATed host, public host, coordinator), on the
egress of the endpoint's leg on the internet segment. With `rtt=R, jitter=J, loss=L` on every
endpoint, each one-way trip between any two endpoints is delayed R/2 +- J/2 and loses L % of its
packets, so a round trip between any two endpoints (host-host, host-coordinator) takes R +- J:
what a user who asks for "20 ms RTT" expects to measure. With different conditions per endpoint,
the round trip between a and b is (R_a + R_b) / 2, and a one-way trip from a loses L_a %.
Jitter is uniform, per packet, so packets can overtake each other (as with netem).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from boxer.lab.errors import LabUsageError

NAT_EIM = "eim"
NAT_SYMMETRIC = "symmetric"
# eim: endpoint-independent mapping with port preservation (plain MASQUERADE), address-and-port
# dependent filtering (conntrack): what Lambda is believed to be; TCP hole punching works.
# symmetric: a new random public port for every new connection (MASQUERADE --random-fully), so
# the port the coordinator sees is never the one a peer must aim at: punching fails.
NAT_TYPES = (NAT_EIM, NAT_SYMMETRIC)
DEFAULT_NAT = NAT_EIM

MAX_RTT_MS = 10_000.0
MAX_MAPPING_TIMEOUT = 432_000  # the kernel's own default for established TCP: 5 days


def validate_nat(nat: str, where: str = "") -> str:
    if nat not in NAT_TYPES:
        raise LabUsageError(
            f"unknown NAT type {nat!r}{where}: use one of {', '.join(NAT_TYPES)}"
        )
    return nat


def parse_nat(spec: str | Mapping[str, str] | None, host_names: Iterable[str]) -> dict[str, str]:
    """The NAT type of every NATed host, from the `--nat` syntax or a mapping.

    The string form is comma-separated items, each either a TYPE (the type of every host not
    named) or HOST=TYPE: "symmetric", "h1=symmetric" (the others eim), "symmetric,h2=eim".
    A mapping is {host: type} for the hosts that are not eim."""
    names = list(host_names)
    default = DEFAULT_NAT
    overrides: dict[str, str] = {}
    if spec is None:
        pass
    elif isinstance(spec, str):
        seen_default = False
        items = [item.strip() for item in spec.split(",")]
        if not spec.strip() or any(not item for item in items):
            raise LabUsageError(
                f"invalid NAT spec {spec!r}: use TYPE, HOST=TYPE or a comma-separated list "
                f"of them, e.g. 'symmetric' or 'eim,h2=symmetric'"
            )
        for item in items:
            if "=" in item:
                host, _, nat = (part.strip() for part in item.partition("="))
                if host in overrides:
                    raise LabUsageError(f"invalid NAT spec {spec!r}: {host} is named twice")
                overrides[host] = nat
            else:
                if seen_default:
                    raise LabUsageError(
                        f"invalid NAT spec {spec!r}: more than one default type "
                        f"(name hosts with HOST=TYPE)"
                    )
                seen_default = True
                default = item
    else:
        overrides = {str(host): str(nat) for host, nat in spec.items()}
    validate_nat(default)
    result = dict.fromkeys(names, default)
    for host, nat in overrides.items():
        if host not in result:
            hosts = f"h1..h{len(names)}" if names else "no NATed hosts"
            raise LabUsageError(
                f"NAT type for {host!r}: not a NATed host of this lab (it has {hosts})"
            )
        result[host] = validate_nat(nat, f" for {host}")
    return result


def _number(value: Any, what: str, unit: str, maximum: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LabUsageError(f"invalid {what} {value!r}: a number of {unit}") from None
    if not math.isfinite(number) or not 0 <= number <= maximum:
        raise LabUsageError(f"invalid {what} {value!r}: use 0 to {maximum:g} {unit}")
    return number


@dataclass(frozen=True)
class LinkConditions:
    """Round-trip delay, its jitter (both ms) and one-way packet loss (percent) that one
    endpoint adds; see the module docstring for how they combine between two endpoints."""

    rtt: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rtt", _number(self.rtt, "RTT", "ms", MAX_RTT_MS))
        object.__setattr__(self, "jitter", _number(self.jitter, "jitter", "ms", MAX_RTT_MS))
        object.__setattr__(self, "loss", _number(self.loss, "loss", "percent", 100.0))

    @property
    def clean(self) -> bool:
        return self.rtt == 0 and self.jitter == 0 and self.loss == 0

    def describe(self) -> dict[str, float]:
        return {"rtt_ms": self.rtt, "jitter_ms": self.jitter, "loss_pct": self.loss}

    @classmethod
    def from_description(cls, data: Mapping[str, Any] | None) -> LinkConditions:
        if not data:
            return cls()
        return cls(
            rtt=data.get("rtt_ms", 0.0),
            jitter=data.get("jitter_ms", 0.0),
            loss=data.get("loss_pct", 0.0),
        )

    def summary(self) -> str:
        """One cell of `lab show`: "rtt 20ms ±2ms loss 1%", or "-" for a clean link."""
        if self.clean:
            return "-"
        parts = []
        if self.rtt or self.jitter:
            parts.append(f"rtt {self.rtt:g}ms" + (f" ±{self.jitter:g}ms" if self.jitter else ""))
        if self.loss:
            parts.append(f"loss {self.loss:g}%")
        return " ".join(parts)


def validate_mapping_timeout(seconds: Any) -> int | None:
    """None (the kernel's defaults) or whole seconds, 1 to 5 days: conntrack counts in seconds."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds != int(
        seconds
    ) or not 1 <= seconds <= MAX_MAPPING_TIMEOUT:
        raise LabUsageError(
            f"invalid mapping timeout {seconds!r}: whole seconds from 1 to {MAX_MAPPING_TIMEOUT}"
        )
    return int(seconds)


def mapping_timeout_sysctls(seconds: int) -> dict[str, str]:
    """The per-namespace conntrack settings that make every idle NAT mapping expire after
    `seconds`. tcp_loose=0: a TCP packet of an expired connection no longer creates a new
    mapping mid-stream (the default would quietly revive it), so an expired mapping is gone
    for good, as at a NAT gateway."""
    value = str(seconds)
    return {
        "net/netfilter/nf_conntrack_tcp_timeout_established": value,
        "net/netfilter/nf_conntrack_udp_timeout": value,
        "net/netfilter/nf_conntrack_udp_timeout_stream": value,
        "net/netfilter/nf_conntrack_tcp_loose": "0",
    }

