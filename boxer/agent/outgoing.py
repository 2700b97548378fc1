"""The app's connects to other instances: brokered by the coordinator, punched, authenticated,
and asked again when the failure is one another attempt may not meet."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections import Counter

from boxer.agent.ipc import Message
from boxer.agent.link import CoordinatorLink, LinkDown
from boxer.agent.paths import PathOpener
from boxer.agent.punch import PunchError
from boxer.agent.tickets import TicketPools
from boxer.agent.waiters import Waiters
from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m

log = logging.getLogger(__name__)

SERVICE_HOLD_LIMIT = 120.0  # seconds we wait for the coordinator on a connect to a service
CONNECT_ATTEMPTS = 3  # a connect the app made, at most, before its failure is the app's


class Connector:
    def __init__(self, link: CoordinatorLink, tickets: TicketPools, waiters: Waiters, paths: PathOpener,
                 connect_timeout: float, punch_timeout: float, stats: Counter[str]) -> None:
        self.link = link
        self.tickets = tickets
        self.waiters = waiters
        self.paths = paths
        self.connect_timeout = connect_timeout
        self.punch_timeout = punch_timeout
        self.stats = stats

    async def connect(self, req: Message, service: bool) -> tuple[socket.socket, int] | int:
        """A connected, authenticated socket and its local port, or the errno the app gets."""
        # A connect to a service may be held by the coordinator while an instance starts (scale from
        # zero); the coordinator bounds that wait, we only guard against losing it meanwhile.
        wait = self.connect_timeout + (SERVICE_HOLD_LIMIT if service else 0)
        deadline = time.monotonic() + wait
        try:
            for attempt in range(1, CONNECT_ATTEMPTS + 1):
                try:
                    return await asyncio.wait_for(self.connect_overlay(req.addr, req.port, deadline),
                                                  max(0.1, deadline - time.monotonic()))
                except PunchError as exc:
                    if (attempt == CONNECT_ATTEMPTS or time.monotonic() > deadline - 1.0
                            or not _worth_another_try(exc.errno_name, service)):
                        raise
                    log.info("connect to %s:%d: %s; trying again", req.addr, req.port, exc)
        except asyncio.TimeoutError:
            self.stats["failed"] += 1
            return errno.ETIMEDOUT
        except LinkDown:
            self.stats["failed"] += 1
            return errno.ENETUNREACH
        except OSError as exc:  # our own resources (ports, descriptors): the app sees a plain failure
            self.stats["failed"] += 1
            log.warning("connect to %s:%d failed locally: %s", req.addr, req.port, exc)
            return errno.ECONNABORTED if exc.errno == errno.EADDRINUSE else (exc.errno or errno.ECONNABORTED)
        except PunchError as exc:
            self.stats["failed"] += 1
            log.info("connect to %s:%d failed: %s", req.addr, req.port, exc)
            return getattr(errno, exc.errno_name)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def connect_overlay(self, addr: str, port: int, deadline: float,
                              warm: bool = False) -> tuple[socket.socket, int]:
        t0 = time.monotonic()
        # A ticket belongs to one coordinator session: while the link is reconnecting, wait for
        # the new session rather than take a ticket the coordinator will not know.
        await self.link.wait_up(max(0.0, deadline - t0))
        ticket = await self.tickets.take()
        t1 = time.monotonic()
        conn = auth.new_token()
        try:
            queue = self.waiters.open(conn)
            await self.link.send(m.Connect(conn=conn, dst_addr=addr, dst_port=port,
                                           src_port=ticket.local_port, ticket=ticket.ticket, warm=warm))
            answer = await queue.get()
            if isinstance(answer, m.ConnectFailed):
                raise PunchError(answer.error, "refused by the coordinator or the peer")
            assert isinstance(answer, m.Punch)
            t2 = time.monotonic()
            # On the fast path the server may still refuse (nothing listens) while we punch.
            refusal = asyncio.ensure_future(queue.get())
            punch = asyncio.ensure_future(self.paths.open(answer, ticket.local_port,
                                                          min(deadline, time.monotonic() + self.punch_timeout)))
            await asyncio.wait({punch, refusal}, return_when=asyncio.FIRST_COMPLETED)
            if not punch.done():
                punch.cancel()
                failed = refusal.result()
                raise PunchError(getattr(failed, "error", "ECONNABORTED"), "refused by the peer")
            refusal.cancel()
            sock = punch.result()
            t3 = time.monotonic()
            log.debug("connect %s: ticket %.3f ms, broker %.3f ms, punch+auth %.3f ms", conn,
                      (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
            return sock, ticket.local_port
        finally:
            self.waiters.close(conn)
            ticket.close()
            self.tickets.refill()


async def connect_locally(port: int) -> socket.socket | int:
    """A connect to our own overlay address: a plain loopback connection to our app."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        return exc.errno or errno.ECONNREFUSED
    sock.setblocking(True)
    return sock


def _worth_another_try(error: str, service: bool) -> bool:
    """A failed connect the app need not see, because another may succeed: ECONNABORTED (a
    ticket retired, or a peer's rendezvous connection lost, at that very moment) and, to a
    service, EHOSTUNREACH (the instance the coordinator chose went away while the connection
    was set up: stopped after a drain, or crashed; the next connect goes to another one)."""
    return error == "ECONNABORTED" or (service and error == "EHOSTUNREACH")
