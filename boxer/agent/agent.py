"""The agent: one per instance. Registers with the coordinator, serves the interposer, brokers
connections in both directions, and hands the application real kernel sockets."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass, field

from boxer.agent.control import ControlSession, Ticket, open_ticket
from boxer.agent.names import NameTable
from boxer.agent.punch import PunchError, authenticate, simultaneous_open
from boxer.ipc import Message, Op, Resolution
from nat_traversal import auth
from nat_traversal import messages as m

log = logging.getLogger(__name__)

WAKE_ADDR = "127.0.0.2"  # source of wake connections; the interposer recognises them by it


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0  # whole overlay connect, from the app's call to a connected socket
    punch: float = 3.0  # simultaneous open + authentication, once the coordinator said go
    accept_pickup: float = 10.0  # an accepted connection not fetched by the app by then is dropped


@dataclass
class _PendingAccept:
    sock: socket.socket
    wake: socket.socket
    peer_addr: str
    peer_port: int
    expires: float


@dataclass
class Agent:
    session: ControlSession
    coordinator: tuple[str, int]
    secret: bytes
    timeouts: Timeouts = field(default_factory=Timeouts)
    ticket_pool_size: int = 4

    def __post_init__(self) -> None:
        reg = self.session.registration
        self.names = NameTable(ipaddress.IPv4Network(reg.prefix), reg.name, reg.addr)
        self.names.update(self.session.members)
        self.listeners: dict[int, int] = {}  # real port -> LISTEN count
        self.hellos: set[int] = set()
        self.hello_event = asyncio.Event()
        self._awaiting: dict[str, asyncio.Future] = {}  # conn id -> Punch | ConnectFailed
        self._accepts: dict[tuple[int, int], _PendingAccept] = {}  # (port, wake port) -> socket
        self._tickets: asyncio.Queue[Ticket] = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()
        self.stats = {"connects": 0, "accepts": 0, "refused": 0, "failed": 0}

    @property
    def addr(self) -> str:
        return self.session.registration.addr

    @property
    def name(self) -> str:
        return self.session.registration.name

    # --- background work ----------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self._keep_ticket_pool())

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _keep_ticket_pool(self) -> None:
        """Keeps a few ports with observed public endpoints ready, so a connect needs no extra
        round trip to learn one. A failure here only costs latency: take_ticket opens its own."""
        while True:
            if self._tickets.qsize() < self.ticket_pool_size:
                try:
                    self._tickets.put_nowait(await self._open_ticket())
                    continue
                except Exception as exc:
                    log.warning("could not open a rendezvous connection: %s", exc)
                    await asyncio.sleep(1.0)
            await asyncio.sleep(0.05)

    async def _open_ticket(self) -> Ticket:
        return await open_ticket(self.coordinator, self.secret, self.session.registration.session)

    async def _take_ticket(self) -> Ticket:
        try:
            return self._tickets.get_nowait()
        except asyncio.QueueEmpty:
            return await self._open_ticket()

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        while not self._tickets.empty():
            self._tickets.get_nowait().close()
        for pending in self._accepts.values():
            pending.sock.close()
            pending.wake.close()

    # --- coordinator messages -----------------------------------------------------------------

    def on_coordinator_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.Members):
            self.names.update(msg.hosts)
        elif isinstance(msg, (m.Punch, m.ConnectFailed)):
            future = self._awaiting.pop(msg.conn, None)
            if future is not None and not future.done():
                future.set_result(msg)
        elif isinstance(msg, m.Incoming):
            self._spawn(self._serve_incoming(msg))
        elif isinstance(msg, m.Error):
            future = self._awaiting.pop(msg.ref, None)
            if future is not None and not future.done():
                future.set_result(m.ConnectFailed(conn=msg.ref, error="ECONNABORTED"))
            log.warning("coordinator error for %s: %s", msg.ref, msg.reason)
        elif isinstance(msg, m.Pong):
            pass
        else:
            log.warning("unexpected %s from the coordinator", msg.TYPE)

    # --- the interposer's requests ------------------------------------------------------------

    async def handle_ipc(self, req: Message) -> tuple[Message, socket.socket | None]:
        if req.op is Op.HELLO:
            self.hellos.add(req.pid)
            self.hello_event.set()
            return req.reply(), None
        if req.op is Op.RESOLVE:
            resolution, addr = self.names.resolve(req.name)
            return req.reply(flags=resolution, addr=addr or "0.0.0.0", name=req.name.lower().rstrip(".")), None
        if req.op is Op.REVERSE:
            resolution, name = self.names.reverse(req.addr)
            return req.reply(flags=resolution, name=name), None
        if req.op is Op.LISTEN:
            self.listeners[req.port] = self.listeners.get(req.port, 0) + 1
            log.info("app listens on port %d", req.port)
            return req.reply(), None
        if req.op is Op.UNLISTEN:
            count = self.listeners.get(req.port, 0) - 1
            if count > 0:
                self.listeners[req.port] = count
            else:
                self.listeners.pop(req.port, None)
            return req.reply(), None
        if req.op is Op.CONNECT:
            return await self._connect_for_app(req)
        if req.op is Op.ACCEPT:
            pending = self._accepts.pop((req.port, req.token), None)
            if pending is None:
                return req.reply(status=errno.ECONNABORTED), None
            pending.wake.close()
            self.stats["accepts"] += 1
            return req.reply(addr=pending.peer_addr, port=pending.peer_port), pending.sock
        return req.reply(status=errno.EINVAL), None

    async def _connect_for_app(self, req: Message) -> tuple[Message, socket.socket | None]:
        if req.addr == self.addr:
            return await self._connect_locally(req)
        deadline = time.monotonic() + self.timeouts.connect
        try:
            sock, local_port = await asyncio.wait_for(self._connect_overlay(req.addr, req.port, deadline),
                                                      self.timeouts.connect)
        except asyncio.TimeoutError:
            self.stats["failed"] += 1
            return req.reply(status=errno.ETIMEDOUT), None
        except PunchError as exc:
            self.stats["failed"] += 1
            log.info("connect to %s:%d failed: %s", req.addr, req.port, exc)
            return req.reply(status=getattr(errno, exc.errno_name)), None
        self.stats["connects"] += 1
        sock.setblocking(True)
        return req.reply(addr=self.addr, port=local_port), sock

    async def _connect_locally(self, req: Message) -> tuple[Message, socket.socket | None]:
        """A connect to our own overlay address: a plain loopback connection to our app."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", req.port))
        except OSError as exc:
            sock.close()
            return req.reply(status=exc.errno or errno.ECONNREFUSED), None
        sock.setblocking(True)
        return req.reply(addr=self.addr, port=sock.getsockname()[1]), sock

    async def _connect_overlay(self, addr: str, port: int, deadline: float) -> tuple[socket.socket, int]:
        ticket = await self._take_ticket()
        conn = auth.new_token()
        try:
            future: asyncio.Future = asyncio.get_running_loop().create_future()
            self._awaiting[conn] = future
            await self.session.send(m.Connect(conn=conn, dst_addr=addr, dst_port=port,
                                              src_port=ticket.local_port, ticket=ticket.ticket))
            answer = await future
            if isinstance(answer, m.ConnectFailed):
                raise PunchError(answer.error, "refused by the coordinator or the peer")
            sock = await self._punch(answer, ticket.local_port, min(deadline, time.monotonic() + self.timeouts.punch))
            return sock, ticket.local_port
        finally:
            self._awaiting.pop(conn, None)
            ticket.close()

    async def _punch(self, punch: m.Punch, local_port: int, deadline: float) -> socket.socket:
        host, _, port = punch.peer.rpartition(":")
        sock = await simultaneous_open(local_port, (host, int(port)), deadline)
        try:
            await authenticate(sock, self.secret, punch.conn, punch.role, deadline)
        except BaseException:
            sock.close()
            raise
        return sock

    # --- incoming connections -----------------------------------------------------------------

    async def _serve_incoming(self, msg: m.Incoming) -> None:
        if msg.dst_port not in self.listeners:
            self.stats["refused"] += 1
            await self.session.send(m.Refuse(conn=msg.conn, error="ECONNREFUSED"))
            return
        ticket = await self._take_ticket()
        try:
            future: asyncio.Future = asyncio.get_running_loop().create_future()
            self._awaiting[msg.conn] = future
            await self.session.send(m.Accept(conn=msg.conn, ticket=ticket.ticket))
            answer = await asyncio.wait_for(future, self.timeouts.connect)
            if not isinstance(answer, m.Punch):
                return
            sock = await self._punch(answer, ticket.local_port, time.monotonic() + self.timeouts.punch)
        except (PunchError, asyncio.TimeoutError, OSError) as exc:
            log.info("incoming connection %s from %s failed: %s", msg.conn, msg.src_addr, exc)
            return
        finally:
            self._awaiting.pop(msg.conn, None)
            ticket.close()
        await self._wake_app(sock, msg)

    async def _wake_app(self, sock: socket.socket, msg: m.Incoming) -> None:
        """Make the app's own listening socket fire (poll/epoll/accept wake as for a real
        connection) with a loopback connection from WAKE_ADDR; the interposer trades it for
        the real socket, found by the wake connection's source port."""
        loop = asyncio.get_running_loop()
        wake = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        wake.setblocking(False)
        key = (msg.dst_port, 0)
        try:
            wake.bind((WAKE_ADDR, 0))
            key = (msg.dst_port, wake.getsockname()[1])
            self._accepts[key] = _PendingAccept(
                sock, wake, msg.src_addr, msg.src_port, time.monotonic() + self.timeouts.accept_pickup)
            await loop.sock_connect(wake, ("127.0.0.1", msg.dst_port))
        except OSError as exc:
            log.info("app no longer listens on %d (%s): dropping connection %s", msg.dst_port, exc, msg.conn)
            self._accepts.pop(key, None)
            sock.close()
            wake.close()
            return
        self._spawn(self._expire_accept(key))

    async def _expire_accept(self, key: tuple[int, int]) -> None:
        await asyncio.sleep(self.timeouts.accept_pickup)
        pending = self._accepts.pop(key, None)
        if pending is not None:
            log.warning("app did not accept connection from %s in time; dropped", pending.peer_addr)
            pending.sock.close()
            pending.wake.close()
