"""Keeping NAT mappings warm: everything that does is derived from one setting."""

from __future__ import annotations

import os
import socket

# The shortest idle lifetime of a NAT mapping we must survive (seconds). Everything that keeps
# mappings warm is derived from it: keepalives on app connections, control pings, ticket renewal.
# Lambda's NAT is undocumented; a NAT Gateway's is 350 s; 60 s is a conservative default.
NAT_IDLE_TIMEOUT = float(os.environ.get("BOXER_NAT_IDLE_TIMEOUT", "60"))


def enable_keepalive(sock: socket.socket, nat_idle: float = NAT_IDLE_TIMEOUT) -> None:
    """TCP keepalives on every connection we hand over: an idle application connection would
    otherwise lose its NAT mappings (both ends are behind NATs) and die silently. The app may
    still change these options afterwards."""
    idle = max(1, int(nat_idle / 3))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
