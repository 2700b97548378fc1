"""The protocol's defaults that other rooms name too (the CLI's options, the agent, the tests).

Kept apart from the broker so that naming a default imports nothing else. The interposer's copy
of the prefix (`interposer/config.c`) is checked against this one by tests/test_wire.py.
"""

from __future__ import annotations

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "RELAY_PORT_OFFSET", "relay_port_of"]

DEFAULT_PORT = 7000  # the coordinator's port; its relay and NAT probes listen on the next one
# The relay (and NAT probe) port is the coordinator's port plus this, unless told otherwise: the
# coordinator, the probe, the Lambda handler and the Terraform security group all count so.
RELAY_PORT_OFFSET = 1


def relay_port_of(port: int) -> int:
    return port + RELAY_PORT_OFFSET
DEFAULT_PREFIX = "100.64.0.0/10"  # overlay addresses (RFC 6598 shared address space)
