"""Keeping NAT mappings warm: everything that does is derived from one setting."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping

# The shortest idle lifetime of a NAT mapping we must survive (seconds). Everything that keeps
# mappings warm is derived from it: keepalives on app connections, control pings, ticket renewal.
# Lambda's NAT is undocumented; a NAT Gateway's is 350 s; 60 s is a conservative default.
NAT_IDLE_ENV = "BOXER_NAT_IDLE_TIMEOUT"
DEFAULT_NAT_IDLE_TIMEOUT = 60.0


def nat_idle_timeout(env: Mapping[str, str] | None = None) -> float:
    """BOXER_NAT_IDLE_TIMEOUT (seconds, > 0), else 60. Read when asked, not at import: an agent
    forked from the lab's zygote has its instance's environment only from then on."""
    raw = (os.environ if env is None else env).get(NAT_IDLE_ENV, "")
    if not raw:
        return DEFAULT_NAT_IDLE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{NAT_IDLE_ENV}={raw!r} is not a number of seconds > 0")
    return value


def enable_keepalive(sock: socket.socket, nat_idle: float | None = None) -> None:
    """TCP keepalives on every connection we hand over: an idle application connection would
    otherwise lose its NAT mappings (both ends are behind NATs) and die silently. The app may
    still change these options afterwards."""
    idle = max(1, int((nat_idle_timeout() if nat_idle is None else nat_idle) / 3))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
