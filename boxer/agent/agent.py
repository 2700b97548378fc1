"""The agent: one per instance. It answers the interposer's requests and the coordinator's
messages, and hands each job to the module that does it (their protocol logic, without I/O, is
boxer.nat_traversal.client):

  tickets.py    the two pools of ports with observed public endpoints
  outgoing.py   the app's connects (brokered, punched, asked again on a passing failure)
  incoming.py   connections to our app (refused, or punched and handed to the fast path)
  spares.py     warm spares, punched ahead of the app's next connect
  paths.py      one connection's path (direct or relayed) and its authentication
  reports.py    what the controller learns of us, and when
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from boxer.agent.fastpath import EventKind, FastEvent, FastPath
from boxer.agent.incoming import IncomingConnections
from boxer.agent.ipc import WAKE_ADDR, Message, Op
from boxer.agent.ipc_server import Answer
from boxer.agent.keepalive import enable_keepalive, nat_idle_timeout
from boxer.agent.link import CoordinatorLink
from boxer.agent.localnames import LocalNamesSource
from boxer.agent.names import DeltaOutcome, NameTable, answer_lookup
from boxer.agent.natprobe import probe_mapping
from boxer.agent.outgoing import Connector, loopback_pair
from boxer.agent.paths import PathOpener
from boxer.agent.reports import Reporter, Sample
from boxer.agent.signals import ConnectionTracker, IdleClock
from boxer.agent.spares import SpareMaker
from boxer.agent.tasks import Tasks
from boxer.agent.tickets import TicketPools
from boxer.agent.waiters import Waiters
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.client import Timeouts
from boxer.nat_traversal.limits import Refusals

__all__ = ["WAKE_ADDR", "Agent", "Timeouts", "enable_keepalive", "nat_idle_timeout"]

log = logging.getLogger(__name__)

# The ticket pools are filled once the app is up (it listens or connects), or this many seconds
# after it started: before, they would compete with the app's own start for the CPU, and a cold
# start of many instances is CPU-bound.
APP_START_GRACE = 1.0


@dataclass
class Agent:
    session: CoordinatorLink
    coordinator: tuple[str, int]
    token: bytes  # the instance's token (its Observe proofs); the agent holds no deployment secret
    # Serves warm connects and accepts natively (fastpath.c); we keep its tables filled.
    fast: FastPath
    # Tickets are renewed well before a NAT could forget their idle mapping.
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(ticket_max_age=nat_idle_timeout() / 3))
    ticket_pool_size: int = 8
    report_interval: float = 1.0

    def __post_init__(self) -> None:
        reg = self.session.registration
        self.names = NameTable(ipaddress.IPv4Network(reg.prefix), reg.name, reg.addr)
        self.names.update(self.session.members, self.session.session.services)
        self.local_names = LocalNamesSource()
        self.names.local = self.local_names.current()
        self.listeners: dict[int, int] = {}  # real port -> LISTEN count
        self.hellos: set[int] = set()
        self.hello_event = asyncio.Event()
        self.stats: Counter[str] = Counter(connects=0, accepts=0, refused=0, failed=0, direct=0, relayed=0,
                                           first_try=0)
        self.nat_mapping = "unknown"
        self.draining = False
        # ("drain", grace seconds) or ("stop", reason), from the controller; the runner acts on it.
        self.stop_request: asyncio.Future[tuple[str, object]] = asyncio.get_running_loop().create_future()
        self.tracker = ConnectionTracker()
        # Connections to our socket from outside our process tree (the fast path closes them).
        self.ipc_refusals = Refusals()
        self._idle = IdleClock()
        self.lifetime_deadline: float | None = None  # time.monotonic() at which we must be gone
        t = self.timeouts
        self.tasks = Tasks()
        waiters = self.waiters = Waiters()
        self.tickets = TicketPools(self.session, self.coordinator, self.token, self.tasks,
                                   self.ticket_pool_size, t.ticket_max_age)
        paths = PathOpener(lambda: self.relay, self.token, t, self.stats)
        self.connector = Connector(self.session, self.tickets, waiters, paths, t, self.stats)
        self.incoming = IncomingConnections(self.session, self.tickets, waiters, paths, self.fast, self.listeners,
                                            self.stats, t)
        self.spares = SpareMaker(self.connector, self.fast, self.tasks, t.ticket_max_age)
        self.reports = Reporter(self.session, self.tasks, self.build_report, self.report_interval)

    @property
    def addr(self) -> str:
        return self.session.registration.addr

    @property
    def name(self) -> str:
        return self.session.registration.name

    @property
    def relay(self) -> tuple[str, int] | None:
        port = self.session.registration.relay_port
        return (self.coordinator[0], port) if port else None

    # --- background work ----------------------------------------------------------------------

    def start(self) -> None:
        self.tasks.spawn(self.tickets.keep_filled())
        self.tasks.spawn(self.session.run(self.on_coordinator_message, self._on_new_session))
        self.tasks.spawn(self._probe_nat())

    def _on_new_session(self) -> None:
        """Tickets belong to the old session (and their connections died with it)."""
        self.tickets.drop_all()
        self.tickets.refill()
        if self.nat_mapping != "unknown":
            self.tasks.spawn(self.session.send(m.NatReport(mapping=self.nat_mapping)))

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

    def close(self) -> None:
        self.reports.close()
        self.tasks.close()
        self.tickets.drop_all()

    # --- signals --------------------------------------------------------------------------------

    def attach_app(self, pid: int, lifetime: float | None) -> None:
        """The app is running: sample it and report every `report_interval` seconds."""
        asyncio.get_running_loop().call_later(APP_START_GRACE, self.tickets.app_up.set)
        if lifetime is not None:
            self.lifetime_deadline = time.monotonic() + lifetime
        self.reports.attach(pid)

    def build_report(self, sample: Sample | None = None, exited: int | None = None) -> m.Report:
        """sample: (open local ports, cpu, rss) measured off the event loop, or None to measure here."""
        if sample is None:
            sample = self.reports.sample()
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
        return self.tracker.count_open(live) + self.incoming.on_its_way()

    async def send_report(self, exited: int | None = None) -> None:
        await self.reports.send(exited)

    def _request_stop(self, kind: str, detail: object) -> None:
        if not self.stop_request.done():
            self.stop_request.set_result((kind, detail))

    # --- coordinator messages -----------------------------------------------------------------

    def on_coordinator_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.Members):
            self.names.update(msg.hosts, msg.services, msg.version)
        elif isinstance(msg, m.MembersDelta):
            if self.names.apply_delta(msg) is DeltaOutcome.GAP:
                log.warning("membership delta from version %d, we hold another: asking for all", msg.base)
                self.tasks.spawn(self.session.send(m.Resync()))
        elif isinstance(msg, m.Drain):
            self.draining = True
            self._request_stop("drain", msg.grace)
            # Now, not at the next report: the controller stops a drained instance only on a
            # report that says it took the drain.
            self.reports.now()
        elif isinstance(msg, m.Stop):
            self._request_stop("stop", msg.reason or "stopped by the controller")
        elif isinstance(msg, (m.Punch, m.ConnectFailed)):
            self.waiters.deliver(msg.conn, msg)
        elif isinstance(msg, m.Incoming):
            self.tasks.spawn(self.incoming.serve(msg))
        elif isinstance(msg, m.Error):
            self.waiters.deliver(msg.ref, m.ConnectFailed(conn=msg.ref, error="ECONNABORTED"))
            log.warning("coordinator error for %s: %s", msg.ref, msg.reason)
        elif isinstance(msg, m.Pong):
            pass
        else:
            log.warning("unexpected %s from the coordinator", msg.TYPE)

    # --- the interposer's requests ------------------------------------------------------------

    async def handle_ipc(self, req: Message) -> tuple[Message, socket.socket | None] | Answer:
        if req.op is Op.HELLO:
            self.hellos.add(req.pid)
            self.hello_event.set()
            return req.reply(), None
        if req.op is Op.RESOLVE or req.op is Op.REVERSE:
            self.names.local = self.local_names.current()
            return answer_lookup(self.names, req), None
        if req.op is Op.LISTEN:
            self.tickets.app_up.set()
            self.listeners[req.port] = self.listeners.get(req.port, 0) + 1
            self.fast.set_listening(req.port, self.listeners[req.port])
            log.info("app listens on port %d", req.port)
            if self.listeners[req.port] == 1:
                # Ready now: say so at once, not at the next report (held connects wait on it).
                self.reports.now()
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
            self.tickets.app_up.set()
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
            self.reports.soon()
            self.spares.warm_up((event.addr, event.port))
        elif event.kind is EventKind.ACCEPTED:
            self.stats["accepts"] += 1
            self.incoming.accepted(event.local_port)
            self.tracker.handed_port(event.local_port)
            self.reports.soon()
        elif event.kind is EventKind.WAKE_FAILED:
            log.info("the app did not take a connection on port %d (not listening, or not accepting)",
                     event.port)
        elif event.kind is EventKind.REFUSED:
            # Logged per uid: the first at once, then one line per 10 s with the count since.
            self.ipc_refusals.refuse(f"ipc-peer uid {event.peer_uid}", time.monotonic(),
                                     _describe_peer(event.peer_pid))

    def _connect_to_ourselves(self, req: Message) -> tuple[Message, socket.socket | None] | Answer:
        """The app connects to its own overlay address, as a host may connect to its own name: a
        loopback connection whose far end reaches the app's listener the way every incoming
        overlay connection does (wake, then ACCEPT), so both ends report the overlay address,
        not 127.0.0.1. The wake comes once the app's connect has its socket: as on a real host,
        accept() cannot return a connection whose connect() has not completed (CPython's
        TCPCloserTest reads the client socket right after the accept). Refused, as by a real
        host, when the app does not listen on the port."""
        if req.port not in self.listeners:
            return req.reply(status=errno.ECONNREFUSED), None
        client, server = loopback_pair()
        client_port = client.getsockname()[1]

        def wake() -> None:
            if not self.incoming.deliver_own(server, req.port, (self.addr, client_port)):
                log.info("app no longer listens on %d: its connection to itself is reset", req.port)

        self.tracker.handed(client)
        return Answer(req.reply(addr=self.addr, port=client_port), client, wake)

    async def _connect_for_app(self, req: Message) -> tuple[Message, socket.socket | None] | Answer:
        if req.addr == self.addr:
            return self._connect_to_ourselves(req)
        target = (req.addr, req.port)  # no spare for it (the fast path would have used it)
        self.spares.missed(target)
        service = self.names.is_service_address(req.addr)
        result = await self.connector.connect(req.addr, req.port, service)
        if isinstance(result, int):
            return req.reply(status=result), None
        sock, local_port = result
        if not service:
            self.spares.warm_up(target)
        self.stats["connects"] += 1
        self.tracker.handed(sock)
        self.reports.soon()
        enable_keepalive(sock)
        sock.setblocking(True)
        return req.reply(addr=self.addr, port=local_port), sock


def _describe_peer(pid: int) -> str:
    """Who was refused, for the log: pid and program name (if it still runs)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f" {f.read().strip()!r}"
    except OSError:
        comm = ""
    who = f"pid {pid}" if pid else "a process in another pid namespace"
    return (f"a connection to the agent's socket from {who}{comm}: not the app or one of its descendants; "
            "closed unanswered")
