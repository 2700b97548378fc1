"""The protocol's defaults that other rooms name too (the CLI's options, the agent, the tests).

Kept apart from the broker so that naming a default imports nothing else. The interposer's copy
of the prefix (`interposer/config.c`) is checked against this one by tests/test_wire.py.
"""

from __future__ import annotations

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX"]

DEFAULT_PORT = 7000  # the coordinator's port; its relay and NAT probes listen on the next one
DEFAULT_PREFIX = "100.64.0.0/10"  # overlay addresses (RFC 6598 shared address space)
