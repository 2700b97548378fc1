"""The agent: one per instance. Registers with the coordinator, serves the interposer, brokers
connections in both directions, and hands the application real kernel sockets."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from boxer.agent.control import Ticket, open_ticket
from boxer.agent.fastpath import EventKind, FastEvent, FastPath
from boxer.agent.ipc import Message, Op
from boxer.agent.link import CoordinatorLink, LinkDown
from boxer.agent.names import DeltaOutcome, NameTable
from boxer.agent.natprobe import probe_mapping
from boxer.agent.punch import PunchError, authenticate, relay_open, simultaneous_open
from boxer.agent.signals import ConnectionTracker, IdleClock, ProcessSampler, open_local_ports
from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m

log = logging.getLogger(__name__)

WAKE_ADDR = "127.0.0.2"  # source of wake connections; the interposer recognises them by it
SERVICE_HOLD_LIMIT = 120.0  # seconds we wait for the coordinator on a connect to a service
WARM_SPARES = int(os.environ.get("BOXER_WARM_SPARES", "1"))  # per (peer, port) at first; 0: none
MAX_WARM_SPARES = 4  # per (peer, port), for apps that connect faster than one spare is remade
MAX_HELD_SPARES = 64  # server side: spares held for clients, at most
CONNECT_ATTEMPTS = 3  # a connect the app made, at most, before its failure is the app's
WARM_DELAY = 0.01  # seconds between using a spare and starting to make its replacement
# The ticket pools are filled once the app is up (it listens or connects), or this many seconds
# after it started: before, they would compete with the app's own start for the CPU, and a cold
# start of many instances is CPU-bound.
APP_START_GRACE = 1.0
# A report sooner than the next second when connections are handed to the app (the controller
# scales on their count, and a load step should not wait a second to be seen), at most this often.
EARLY_REPORT_GAP = 0.2


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


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0  # whole overlay connect, from the app's call to a connected socket
    punch: float = 3.0  # direct or relayed path + authentication, once the coordinator said go
    direct: float = 1.5  # a direct punch not through by then falls back to the relay
    # A ticket's NAT mapping is kept by its idle rendezvous connection; NATs expire idle mappings
    # (Lambda's is undocumented, a NAT Gateway's is 350 s), so tickets are renewed well before.
    ticket_max_age: float = NAT_IDLE_TIMEOUT / 3
    accept_pickup: float = 10.0  # an accepted connection not fetched by the app by then is dropped


@dataclass
class Agent:
    session: CoordinatorLink
    coordinator: tuple[str, int]
    secret: bytes
    # Serves warm connects and accepts natively (fastpath.c); we keep its tables filled.
    fast: FastPath
    timeouts: Timeouts = field(default_factory=Timeouts)
    ticket_pool_size: int = 8
    report_interval: float = 1.0

    def __post_init__(self) -> None:
        reg = self.session.registration
        self.names = NameTable(ipaddress.IPv4Network(reg.prefix), reg.name, reg.addr)
        self.names.update(self.session.members, self.session.session.services)
        self.listeners: dict[int, int] = {}  # real port -> LISTEN count
        self.hellos: set[int] = set()
        self.hello_event = asyncio.Event()
        # conn id -> the coordinator's messages about it (Punch, then maybe a late ConnectFailed)
        self._awaiting: dict[str, asyncio.Queue[m.Message]] = {}
        # Tickets for our own connects, and tickets deposited for incoming ones (the coordinator
        # hands one to a client's connect without asking us first: one hop saved).
        self._outgoing: list[Ticket] = []
        # Keyed before the coordinator can know the ticket: it may hand one to a client before
        # our open_ticket() has even returned.
        self._incoming: dict[str, asyncio.Future[Ticket]] = {}
        self._refill = asyncio.Event()
        self._app_up = asyncio.Event()  # the app listens or connects: time to fill the pools
        self._tasks: set[asyncio.Task] = set()
        # Loops also check this: asyncio.wait_for can swallow a cancellation that arrives just as
        # its inner future completes (Python < 3.12), and a pool loop must never outlive us.
        self._closed = False
        self.stats = {"connects": 0, "accepts": 0, "refused": 0, "failed": 0, "direct": 0, "relayed": 0,
                      "first_try": 0}
        self.nat_mapping = "unknown"
        self.draining = False
        # ("drain", grace seconds) or ("stop", reason), from the controller; the runner acts on it.
        self.stop_request: asyncio.Future[tuple[str, object]] = asyncio.get_running_loop().create_future()
        self.tracker = ConnectionTracker()
        # Incoming connections the app does not hold yet: being punched, and woken (the app's
        # accept() still to come), by local port, until the fast path would drop them. They
        # count as active: a drained instance must not be stopped with one on its way in.
        self._incoming_in_setup = 0
        self._woken: dict[int, float] = {}
        self._warming: set[tuple[str, int]] = set()  # targets we are making spares for
        # Spares wanted per target: grows when the app's connects outrun the spare making.
        self._spare_goal: dict[tuple[str, int], int] = {}
        self._sampler: ProcessSampler | None = None
        self._idle = IdleClock()
        self._last_report = 0.0  # time.monotonic() of the last report sent
        self._early_report: asyncio.TimerHandle | None = None
        self.lifetime_deadline: float | None = None  # time.monotonic() at which we must be gone

    @property
    def addr(self) -> str:
        return self.session.registration.addr

    @property
    def name(self) -> str:
        return self.session.registration.name

    # --- background work ----------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self._keep_ticket_pools())
        self._spawn(self.session.run(self.on_coordinator_message, self._on_new_session))
        self._spawn(self._probe_nat())

    def _on_new_session(self) -> None:
        """Tickets belong to the old session (and their connections died with it)."""
        self._drop_tickets()
        self._refill.set()
        if self.nat_mapping != "unknown":
            self._spawn(self.session.send(m.NatReport(mapping=self.nat_mapping)))

    # --- signals --------------------------------------------------------------------------------

    def attach_app(self, pid: int, lifetime: float | None) -> None:
        """The app is running: sample it and report every `report_interval` seconds."""
        self._sampler = ProcessSampler(pid)
        asyncio.get_running_loop().call_later(APP_START_GRACE, self._app_up.set)
        if lifetime is not None:
            self.lifetime_deadline = time.monotonic() + lifetime
        self._spawn(self._report_forever())

    def build_report(self, exited: int | None = None, sample: tuple | None = None) -> m.Report:
        """sample: (open local ports, cpu, rss) measured off the event loop, or None to measure here."""
        if sample is None:
            sample = self._sample()
        live, cpu, rss = sample
        active = self.open_connections(live)
        left = None if self.lifetime_deadline is None else max(0.0, self.lifetime_deadline - time.monotonic())
        return m.Report(active=active, accepted=self.stats["accepts"], connected=self.stats["connects"],
                        cpu=round(cpu, 1), rss=rss, listening=sorted(self.listeners),
                        idle=round(self._idle.observe(active, cpu), 2), direct=self.stats["direct"],
                        relayed=self.stats["relayed"], first_try=self.stats["first_try"],
                        draining=self.draining,
                        lifetime_left=None if left is None else round(left, 1), exited=exited)

    def open_connections(self, live: set[int] | None = None) -> int:
        """Connections the app holds (`live`: see ConnectionTracker.count_open), and incoming
        ones on their way to it."""
        now = time.monotonic()
        for port in [port for port, until in self._woken.items() if until <= now]:
            del self._woken[port]
        return self.tracker.count_open(live) + self._incoming_in_setup + len(self._woken)

    def _sample(self) -> tuple[set[int] | None, float, int]:
        try:
            live = open_local_ports()
        except OSError:
            live = None
        cpu, rss = self._sampler.sample() if self._sampler else (0.0, 0)
        return live, cpu, rss

    def _connections_changed(self) -> None:
        """A connection was handed to the app: report soon (coalesced, EARLY_REPORT_GAP apart)."""
        if self._sampler is None or self._early_report is not None or self._closed:
            return
        delay = max(0.0, self._last_report + EARLY_REPORT_GAP - time.monotonic())
        self._early_report = asyncio.get_running_loop().call_later(delay, self._send_early_report)

    def _send_early_report(self) -> None:
        self._early_report = None
        if not self._closed:
            self._spawn(self.send_report())

    async def send_report(self, exited: int | None = None) -> None:
        # Sampling (sock_diag, a few /proc files) is cheap now, but a busy app's process tree or
        # thousands of sockets still take a while: in a thread, not on the connect path's loop.
        self._last_report = time.monotonic()
        sample = await asyncio.to_thread(self._sample)
        try:
            await self.session.send(self.build_report(exited, sample), wait=0.0)
        except LinkDown:
            pass  # the next report, after reconnection, tells the same story

    async def _report_forever(self) -> None:
        while not self._closed:
            await self.send_report()
            await asyncio.sleep(self.report_interval)

    def _request_stop(self, kind: str, detail: object) -> None:
        if not self.stop_request.done():
            self.stop_request.set_result((kind, detail))

    @property
    def relay(self) -> tuple[str, int] | None:
        port = self.session.registration.relay_port
        return (self.coordinator[0], port) if port else None

    async def _probe_nat(self) -> None:
        """Learn whether our NAT maps ports independently of the destination; if it does not,
        the coordinator sends our connections straight to the relay."""
        if self.relay is None:
            return
        try:
            probe = await probe_mapping(self.coordinator, self.relay[1])
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            log.info("NAT probe failed (%s); assuming punchable", exc)
            return
        self.nat_mapping = probe.mapping
        log.info("NAT: %s mapping, public %s from local port %d", probe.mapping, probe.endpoint_main,
                 probe.local_port)
        await self.session.send(m.NatReport(mapping=probe.mapping))

    def _drop_tickets(self) -> None:
        for ticket in self._outgoing:
            ticket.close()
        self._outgoing.clear()
        for future in self._incoming.values():
            if future.done() and not future.exception():
                future.result().close()
        self._incoming.clear()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _keep_ticket_pools(self) -> None:
        """Keeps ports with observed public endpoints ready, so a connect needs no extra round
        trip to learn one. A failure here only costs latency: connects open their own."""
        await self._app_up.wait()
        while not self._closed:
            self._refill.clear()
            self._retire_old_tickets()
            try:
                while len(self._outgoing) < self.ticket_pool_size:
                    self._outgoing.append(await self._open_ticket("outgoing"))
                while len(self._incoming) < self.ticket_pool_size:
                    await self._open_incoming_ticket()
            except Exception as exc:
                if self._closed:
                    return
                log.warning("could not open a rendezvous connection: %s", exc)
                await asyncio.sleep(0.2 if not self.session.up.is_set() else 1.0)
                await self.session.up.wait()
                continue
            try:
                await asyncio.wait_for(self._refill.wait(), self.timeouts.ticket_max_age / 2)
            except asyncio.TimeoutError:
                pass

    def _retire_old_tickets(self) -> None:
        cutoff = time.monotonic() - self.timeouts.ticket_max_age
        for ticket in [t for t in self._outgoing if t.opened_at < cutoff]:
            self._outgoing.remove(ticket)
            ticket.close()
        for ticket_id, future in list(self._incoming.items()):
            if future.done() and not future.exception() and future.result().opened_at < cutoff:
                # Closing its rendezvous connection withdraws it at the coordinator too.
                del self._incoming[ticket_id]
                future.result().close()

    async def _open_incoming_ticket(self) -> None:
        ticket_id = auth.new_token()
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self._incoming[ticket_id] = future
        try:
            future.set_result(await open_ticket(self.coordinator, self.secret,
                                                self.session.registration.session, "incoming", ticket_id))
        except BaseException as exc:
            self._incoming.pop(ticket_id, None)
            future.set_exception(exc)
            future.exception()  # retrieved: whoever awaits it gets it too
            raise

    async def _open_ticket(self, purpose: str) -> Ticket:
        return await open_ticket(self.coordinator, self.secret, self.session.registration.session, purpose)

    async def _take_ticket(self) -> Ticket:
        # The pool is refilled once the connection is made (see callers), not now: opening a
        # rendezvous connection would compete with this connect for both event loops.
        current = self.session.registration.session
        while self._outgoing:
            ticket = self._outgoing.pop()
            if ticket.session == current:
                return ticket
            ticket.close()
        return await self._open_ticket("outgoing")

    def close(self) -> None:
        self._closed = True
        if self._early_report is not None:
            self._early_report.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._drop_tickets()

    # --- coordinator messages -----------------------------------------------------------------

    def on_coordinator_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.Members):
            self.names.update(msg.hosts, msg.services, msg.version)
        elif isinstance(msg, m.MembersDelta):
            if self.names.apply_delta(msg) is DeltaOutcome.GAP:
                log.warning("membership delta from version %d, we hold another: asking for all", msg.base)
                self._spawn(self.session.send(m.Resync()))
        elif isinstance(msg, m.Drain):
            self.draining = True
            self._request_stop("drain", msg.grace)
            # Now, not at the next report: the controller stops a drained instance only on a
            # report that says it took the drain.
            if self._sampler is not None and not self._closed:
                self._spawn(self.send_report())
        elif isinstance(msg, m.Stop):
            self._request_stop("stop", msg.reason or "stopped by the controller")
        elif isinstance(msg, (m.Punch, m.ConnectFailed)):
            queue = self._awaiting.get(msg.conn)
            if queue is not None:
                queue.put_nowait(msg)
        elif isinstance(msg, m.Incoming):
            self._spawn(self._serve_incoming(msg))
        elif isinstance(msg, m.Error):
            queue = self._awaiting.get(msg.ref)
            if queue is not None:
                queue.put_nowait(m.ConnectFailed(conn=msg.ref, error="ECONNABORTED"))
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
            self._app_up.set()
            self.listeners[req.port] = self.listeners.get(req.port, 0) + 1
            self.fast.set_listening(req.port, self.listeners[req.port])
            log.info("app listens on port %d", req.port)
            if self.listeners[req.port] == 1 and self._sampler is not None:
                # Ready now: say so at once, not at the next report (held connects wait on it).
                self._spawn(self.send_report())
            return req.reply(), None
        if req.op is Op.UNLISTEN:
            count = self.listeners.get(req.port, 0) - 1
            if count > 0:
                self.listeners[req.port] = count
            else:
                self.listeners.pop(req.port, None)
            # At 0 the spares held for the port are closed: their clients fall back to a refusal.
            self.fast.set_listening(req.port, max(count, 0))
            return req.reply(), None
        if req.op is Op.CONNECT:
            self._app_up.set()
            return await self._connect_for_app(req)
        if req.op is Op.ACCEPT:
            # The fast path answers every ACCEPT it has a connection for; this one expired, or
            # its wake connection was not ours.
            return req.reply(status=errno.ECONNABORTED), None
        return req.reply(status=errno.EINVAL), None

    def on_fast_event(self, event: FastEvent) -> None:
        """What the fast path did without us: counters, tracking, and the next spare."""
        if event.kind is EventKind.SPARE_USED:
            self.stats["connects"] += 1
            self.tracker.handed_port(event.local_port)
            self._connections_changed()
            self._warm_up((event.addr, event.port))
        elif event.kind is EventKind.ACCEPTED:
            self.stats["accepts"] += 1
            self._woken.pop(event.local_port, None)
            self.tracker.handed_port(event.local_port)
            self._connections_changed()
        elif event.kind is EventKind.WAKE_FAILED:
            log.info("the app did not take a connection on port %d (not listening, or not accepting)",
                     event.port)

    async def _connect_for_app(self, req: Message) -> tuple[Message, socket.socket | None]:
        if req.addr == self.addr:
            return await self._connect_locally(req)
        target = (req.addr, req.port)  # no spare for it (the fast path would have used it)
        if target in self._warming:
            # The app connected again before its spare was remade: keep one more from now on.
            goal = self._spare_goal.get(target, WARM_SPARES)
            self._spare_goal[target] = min(MAX_WARM_SPARES, goal + 1)
        # A connect to a service may be held by the coordinator while an instance starts (scale from
        # zero); the coordinator bounds that wait, we only guard against losing it meanwhile.
        service = self.names.is_service_address(req.addr)
        wait = self.timeouts.connect + (SERVICE_HOLD_LIMIT if service else 0)
        deadline = time.monotonic() + wait
        try:
            for attempt in range(1, CONNECT_ATTEMPTS + 1):
                try:
                    sock, local_port = await asyncio.wait_for(
                        self._connect_overlay(req.addr, req.port, deadline),
                        max(0.1, deadline - time.monotonic()))
                    break
                except PunchError as exc:
                    if (attempt == CONNECT_ATTEMPTS or time.monotonic() > deadline - 1.0
                            or not _worth_another_try(exc.errno_name, service)):
                        raise
                    log.info("connect to %s:%d: %s; trying again", req.addr, req.port, exc)
        except asyncio.TimeoutError:
            self.stats["failed"] += 1
            return req.reply(status=errno.ETIMEDOUT), None
        except LinkDown:
            self.stats["failed"] += 1
            return req.reply(status=errno.ENETUNREACH), None
        except OSError as exc:  # our own resources (ports, descriptors): the app sees a plain failure
            self.stats["failed"] += 1
            log.warning("connect to %s:%d failed locally: %s", req.addr, req.port, exc)
            return req.reply(status=errno.ECONNABORTED if exc.errno == errno.EADDRINUSE
                             else (exc.errno or errno.ECONNABORTED)), None
        except PunchError as exc:
            self.stats["failed"] += 1
            log.info("connect to %s:%d failed: %s", req.addr, req.port, exc)
            return req.reply(status=getattr(errno, exc.errno_name)), None
        if not self.names.is_service_address(req.addr):
            self._warm_up(target)
        return self._hand_over(req, sock, local_port)

    def _hand_over(self, req: Message, sock: socket.socket, local_port: int) -> tuple[Message, socket.socket]:
        self.stats["connects"] += 1
        self.tracker.handed(sock)
        self._connections_changed()
        enable_keepalive(sock)
        sock.setblocking(True)
        return req.reply(addr=self.addr, port=local_port), sock

    def _warm_up(self, target: tuple[str, int]) -> None:
        """Make spares for this target in the background (one maker per target at a time)."""
        if self._spares_wanted(target) <= 0 or target in self._warming or self._closed:
            return
        self._warming.add(target)
        self._spawn(self._make_spares(target))

    async def _make_spares(self, target: tuple[str, int]) -> None:
        try:
            # Not in the same instant as the connect that used the last spare: both agents would be
            # punching the new one while the app's connection is being woken and accepted.
            await asyncio.sleep(WARM_DELAY)
            while self._spares_wanted(target) > 0 and not self._closed:
                deadline = time.monotonic() + self.timeouts.connect
                sock, local_port = await self._connect_overlay(*target, deadline, warm=True)
                enable_keepalive(sock)
                # Spares age out well before NAT mappings could (keepalives also run on them).
                self.fast.put_spare(target, sock, local_port, self.timeouts.ticket_max_age)
        except (PunchError, LinkDown, OSError, asyncio.TimeoutError) as exc:
            log.debug("no spare for %s:%d: %s", target[0], target[1], exc)
        finally:
            self._warming.discard(target)

    def _spares_wanted(self, target: tuple[str, int]) -> int:
        if WARM_SPARES <= 0:
            return 0
        return self._spare_goal.get(target, WARM_SPARES) - self.fast.spare_count(target)

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

    async def _connect_overlay(self, addr: str, port: int, deadline: float,
                               warm: bool = False) -> tuple[socket.socket, int]:
        t0 = time.monotonic()
        # A ticket belongs to one coordinator session: while the link is reconnecting, wait for
        # the new session rather than take a ticket the coordinator will not know.
        await self.session.wait_up(max(0.0, deadline - t0))
        ticket = await self._take_ticket()
        t1 = time.monotonic()
        conn = auth.new_token()
        try:
            queue: asyncio.Queue[m.Message] = asyncio.Queue()
            self._awaiting[conn] = queue
            await self.session.send(m.Connect(conn=conn, dst_addr=addr, dst_port=port,
                                              src_port=ticket.local_port, ticket=ticket.ticket, warm=warm))
            answer = await queue.get()
            if isinstance(answer, m.ConnectFailed):
                raise PunchError(answer.error, "refused by the coordinator or the peer")
            t2 = time.monotonic()
            # On the fast path the server may still refuse (nothing listens) while we punch.
            refusal = asyncio.ensure_future(queue.get())
            punch = asyncio.ensure_future(self._punch(answer, ticket.local_port,
                                                      min(deadline, time.monotonic() + self.timeouts.punch)))
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
            self._awaiting.pop(conn, None)
            ticket.close()
            self._refill.set()

    async def _punch(self, punch: m.Punch, local_port: int, deadline: float) -> socket.socket:
        """Direct first (unless a symmetric NAT rules it out), the relay if that fails."""
        host, _, port = punch.peer.rpartition(":")
        sock = None
        t0 = time.monotonic()
        if punch.mode == "direct" or self.relay is None:
            direct_deadline = deadline if self.relay is None else min(deadline, t0 + self.timeouts.direct)
            try:
                sock, attempts = await simultaneous_open(local_port, (host, int(port)), direct_deadline)
                if attempts == 1:
                    self.stats["first_try"] += 1
            except PunchError as exc:
                if self.relay is None or time.monotonic() >= deadline:
                    raise
                log.info("direct path for %s failed (%s); using the relay", punch.conn, exc)
        path = "direct"
        if sock is None:
            assert self.relay is not None
            sock = await relay_open(self.relay, self.secret, punch.conn, punch.role, deadline)
            path = "relayed"
        t1 = time.monotonic()
        try:
            await authenticate(sock, self.secret, punch.conn, punch.role, deadline)
        except BaseException:
            sock.close()
            raise
        self.stats[path] += 1
        log.debug("punch %s (%s, %s): open %.3f ms, auth %.3f ms", punch.conn, punch.role, path,
                  (t1 - t0) * 1e3, (time.monotonic() - t1) * 1e3)
        return sock

    # --- incoming connections -----------------------------------------------------------------

    async def _serve_incoming(self, msg: m.Incoming) -> None:
        if msg.warm and self.fast.held_count() >= MAX_HELD_SPARES:
            await self.session.send(m.Refuse(conn=msg.conn, error="ECONNABORTED"))
            if msg.ticket is not None:
                self._release_incoming(msg.ticket)
            return
        if msg.dst_port not in self.listeners:
            self.stats["refused"] += 1
            if msg.ticket is not None:
                self._release_incoming(msg.ticket)
            await self.session.send(m.Refuse(conn=msg.conn, error="ECONNREFUSED"))
            return
        self._incoming_in_setup += 1
        try:
            await self._set_up_incoming(msg)
        finally:
            self._incoming_in_setup -= 1

    async def _set_up_incoming(self, msg: m.Incoming) -> None:
        try:
            if msg.ticket is not None and msg.peer is not None:
                pending = self._incoming.pop(msg.ticket, None)
                ticket = await pending if pending is not None else None
                if ticket is None:  # its rendezvous connection died meanwhile
                    await self.session.send(m.Refuse(conn=msg.conn, error="ECONNABORTED"))
                    return
                punch = m.Punch(conn=msg.conn, role="server", peer=msg.peer, ticket=msg.ticket, mode=msg.mode)
            else:
                ticket = await self._take_ticket()
                punch = await self._accept_slow_path(msg, ticket)
                if punch is None:
                    ticket.close()
                    return
            try:
                sock = await self._punch(punch, ticket.local_port, time.monotonic() + self.timeouts.punch)
            finally:
                ticket.close()
                self._refill.set()
        except (PunchError, LinkDown, asyncio.TimeoutError, OSError) as exc:
            log.info("incoming connection %s from %s failed: %s", msg.conn, msg.src_addr, exc)
            return
        enable_keepalive(sock)
        peer = (msg.src_addr, msg.src_port)
        if msg.warm:
            # A client's spare: the fast path reads its GO byte, then wakes our app.
            self.fast.hold(sock, msg.dst_port, peer, self.timeouts.ticket_max_age * 2)
            return
        local_port = sock.getsockname()[1]
        if self.fast.wake(sock, msg.dst_port, peer):
            self._woken[local_port] = time.monotonic() + self.timeouts.accept_pickup
        else:
            log.info("app no longer listens on %d: dropping connection %s", msg.dst_port, msg.conn)

    def _release_incoming(self, ticket_id: str) -> None:
        pending = self._incoming.pop(ticket_id, None)
        if pending is not None:
            pending.add_done_callback(lambda f: f.exception() or f.result().close())
        self._refill.set()

    async def _accept_slow_path(self, msg: m.Incoming, ticket: Ticket) -> m.Punch | None:
        queue: asyncio.Queue[m.Message] = asyncio.Queue()
        self._awaiting[msg.conn] = queue
        try:
            await self.session.send(m.Accept(conn=msg.conn, ticket=ticket.ticket))
            answer = await asyncio.wait_for(queue.get(), self.timeouts.connect)
        finally:
            self._awaiting.pop(msg.conn, None)
        return answer if isinstance(answer, m.Punch) else None


def _worth_another_try(error: str, service: bool) -> bool:
    """A failed connect the app need not see, because another may succeed: ECONNABORTED (a
    ticket retired, or a peer's rendezvous connection lost, at that very moment) and, to a
    service, EHOSTUNREACH (the instance the coordinator chose went away while the connection
    was set up: stopped after a drain, or crashed; the next connect goes to another one)."""
    return error == "ECONNABORTED" or (service and error == "EHOSTUNREACH")
