"""The two ways to open a connection's path: TCP hole punching (a simultaneous open from a
ticket's port) and the relay. Which is used, and the proofs on it: paths.py.

Both agents connect() from the port whose public mapping the coordinator observed, toward the
peer's observed endpoint, at about the same time. The first SYN to leave opens its own NAT's
mapping, so the other side's SYN is let in as a reply (conntrack handles a simultaneous open);
an attempt refused or dropped before the peer's SYN left is simply retried until the deadline.

The socket returned is what the application gets: a plain kernel TCP socket, nothing in between.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.wire import encode_frame

log = logging.getLogger(__name__)

RETRY_DELAY = 0.005  # between attempts after a refusal: the peer's SYN is usually microseconds away


class PunchError(Exception):
    def __init__(self, errno_name: str, why: str) -> None:
        super().__init__(f"{errno_name}: {why}")
        self.errno_name = errno_name


def _bound_socket(local_port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", local_port))
    return sock


async def simultaneous_open(local_port: int, peer: tuple[str, int], deadline: float) -> tuple[socket.socket, int]:
    """A connected socket from local_port to peer and the number of attempts it took, or
    PunchError('ETIMEDOUT') at the deadline."""
    loop = asyncio.get_running_loop()
    attempts = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PunchError("ETIMEDOUT", f"no path to {peer[0]}:{peer[1]} after {attempts} attempt(s)")
        attempts += 1
        try:
            sock = _bound_socket(local_port)
        except OSError as exc:  # e.g. EADDRINUSE while an earlier attempt's socket is torn down
            log.debug("punch attempt %d: cannot bind port %d: %s", attempts, local_port, exc)
            await asyncio.sleep(RETRY_DELAY)
            continue
        try:
            await asyncio.wait_for(loop.sock_connect(sock, peer), remaining)
            if attempts > 1:
                log.debug("punch to %s:%d succeeded at attempt %d", peer[0], peer[1], attempts)
            return sock, attempts
        except asyncio.TimeoutError:
            sock.close()
        except OSError as exc:
            sock.close()
            log.debug("punch attempt %d to %s:%d: %s", attempts, peer[0], peer[1], exc)
            await asyncio.sleep(min(RETRY_DELAY * attempts, 0.1))
        except BaseException:  # cancelled: the race was won by the other path, or given up
            sock.close()
            raise


async def relay_open(relay: tuple[str, int], punch: m.Punch, key: bytes, deadline: float) -> socket.socket:
    """A socket to the relay, paired there with the other side of the Punch's connection (once
    it arrives); the Relay frame's proof is keyed by the connection's key (unwrapped: `key`)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, relay), max(0.0, deadline - time.monotonic()))
        frame = m.Relay(v=m.PROTOCOL_VERSION, conn=punch.conn, salt=punch.salt, role=punch.role,
                        mac=auth.relay_proof(key, punch.conn, punch.salt, punch.role))
        await loop.sock_sendall(sock, encode_frame(frame.to_wire()))
        return sock
    except asyncio.TimeoutError:
        sock.close()
        raise PunchError("ETIMEDOUT", f"relay {relay[0]}:{relay[1]} did not answer in time") from None
    except OSError as exc:
        sock.close()
        raise PunchError("ETIMEDOUT", f"relay {relay[0]}:{relay[1]} unreachable: {exc}") from None
    except BaseException:
        sock.close()
        raise
