"""The coordinator's protocol logic, without I/O.

`Broker` is fed events (a connection opened, a message arrived, a connection closed, time passed)
and answers with actions (send this message on that connection, close that connection). The
asyncio server in coordinator.py only moves bytes; everything that can be decided is decided here,
so it is tested without sockets and with a virtual clock.

Every TCP connection to the coordinator starts the same way: the coordinator sends a Challenge.
The peer's first frame says what the connection is:
  - Auth: a control session of an agent (mutual challenge-response, then Register, Connect...);
  - Observe: a rendezvous connection, opened from a port the agent wants punched; the coordinator
    records the public endpoint it came from under the frame's ticket.

Membership: every registered agent and every watcher holds a copy of the membership (names,
addresses, services' virtual addresses) at some version. Changes are not sent as they happen:
they are collected, and `flush_members()` (called once per turn of the coordinator's loop) folds
them into the next version and sends each receiver one MembersDelta, or the full Members when
the broker cannot prove the receiver holds the previous version (it just registered or watched,
or asked with Resync). Each change thus costs a few bytes per receiver, not the whole
membership: a cold start of n instances sends O(n²) bytes, not O(n³).

Liveness: registered agents send a Beat every `Timeouts.beat` seconds from their event loop. An
instance not heard from (any frame counts) for `Timeouts.quiet` seconds is quiet: watchers (the
controller) get InstanceQuiet at once, and again when it is heard from again. Its session stays
open (a frozen instance may thaw); only `Timeouts.silence` closes it.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.defaults import DEFAULT_PREFIX
from boxer.nat_traversal.limits import Limits, Refusals
from boxer.nat_traversal.services import Load, Service, ServiceTable, pick
from boxer.nat_traversal.tickets import Ticket, TicketTable

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Send:
    cid: int
    message: m.Message


@dataclass(frozen=True)
class Close:
    cid: int
    reason: str


Action = Send | Close


class ConnState(enum.Enum):
    AWAIT_FIRST = "await-first"  # challenge sent, waiting for Auth or Observe
    CONTROL = "control"  # authenticated agent session (maybe not registered yet)
    RENDEZVOUS = "rendezvous"  # a ticket's connection, kept open to hold the NAT mapping
    CLOSED = "closed"


@dataclass
class Connection:
    cid: int
    endpoint: str  # "ip:port" the coordinator sees: the NAT's public mapping
    nonce: str
    opened_at: float = 0.0
    state: ConnState = ConnState.AWAIT_FIRST
    session: str | None = None
    # The credential it authenticated with: an instance's token (then `role_instance` is that
    # instance's id, the only one it may register), or the deployment secret (the controller).
    role: str = "none"
    role_instance: str | None = None
    # The key it proved it holds (the instance's token, or the secret): its rendezvous
    # connections' Observe proofs are keyed by it too.
    key: bytes = dataclasses.field(default=b"", repr=False)
    instance: Instance | None = None
    last_heard: float = 0.0
    # The membership version this peer holds, as far as we sent it (frames on one TCP connection
    # arrive in order); None: it holds none we know of, so it gets the full Members next.
    members_version: int | None = None


@dataclass
class Instance:
    name: str
    service: str
    addr: str
    instance_id: str
    cid: int
    nat: str = "unknown"  # the agent's NatReport: "eim", "symmetric" or "unknown"
    draining: bool = False
    load: Load = dataclasses.field(default_factory=Load)
    report: dict[str, Any] | None = None  # its last Report, as sent
    quiet: bool = False  # not heard from for Timeouts.quiet; watchers were told




@dataclass
class PendingConnect:
    conn: str
    client_cid: int
    server_cid: int
    client_ticket: str
    deadline: float
    punching: bool = False  # both sides were told to punch; only a Refuse can still come
    to_service: bool = False  # made to a service's address: another instance may take it


@dataclass
class HeldConnect:
    """A connect to a service with no instance listening on the port yet (scale from zero)."""
    msg: m.Connect
    client_cid: int
    service: str
    deadline: float


@dataclass(frozen=True)
class Timeouts:
    # How long a server agent may take to answer Incoming before the client gets ETIMEDOUT.
    broker: float = 3.0
    # A control session silent this long is dead (agents ping every 5 s): its instance leaves.
    silence: float = 15.0
    # Agents send a Beat this often (told in Registered); None: no heartbeats, no quiet.
    beat: float | None = 0.2
    # An instance not heard from for this long is quiet (watchers are told). Four beats: a late
    # beat or two on a loaded machine is no failure, and quiet + one expire tick (0.1 s) stays
    # under the 1 s in which the controller must notice a silent agent.
    quiet: float = 0.8
    # expire() calls further apart than this mean the coordinator itself stalled (its frames
    # are still unread in socket buffers): silence is then counted from when it resumed.
    stall: float = 0.3


_TIMEOUTS = Timeouts()
_LIMITS = Limits()


class Broker:
    def __init__(self, secret: bytes, prefix: str = DEFAULT_PREFIX, timeouts: Timeouts = _TIMEOUTS,
                 new_token: Callable[[], str] = auth.new_token, relay_port: int | None = None,
                 full_snapshots: bool = False, limits: Limits = _LIMITS,
                 refusals: Refusals | None = None) -> None:
        self.secret = secret
        self.limits = limits
        self.refusals = Refusals() if refusals is None else refusals
        # Send the full Members on every change, as protocol 2 did: the baseline of
        # benchmarks/bench_membership.py, not for production.
        self.full_snapshots = full_snapshots
        self.relay_port = relay_port
        self.prefix = prefix
        self.timeouts = timeouts
        self.new_token = new_token
        self._network = ipaddress.IPv4Network(self.prefix)
        self._connections: dict[int, Connection] = {}
        # Connections that have not sent their first frame yet, oldest first, and how many of
        # them each source address holds: the bounds anyone may reach without a secret.
        self._unauthenticated: dict[int, Connection] = {}
        self._unauthenticated_by_source: collections.Counter[str] = collections.Counter()
        self._sessions: dict[str, int] = {}  # session id -> control cid
        self._by_addr: dict[str, Instance] = {}
        self._by_name: dict[str, Instance] = {}
        self._tickets = TicketTable()
        self._pending: dict[str, PendingConnect] = {}
        self._held: dict[str, HeldConnect] = {}
        self._held_by_cid: collections.Counter[int] = collections.Counter()
        self._held_by_service: collections.Counter[str] = collections.Counter()
        self._pending_by_cid: collections.Counter[int] = collections.Counter()
        self._watchers: set[int] = set()
        self.services = ServiceTable(self._network, limits.services, taken=lambda addr: addr in self._by_addr)
        self._next_host = 1
        self.connect_results: collections.Counter[str] = collections.Counter()
        self._retired_paths = collections.Counter({"direct": 0, "relayed": 0})
        self._last_expire: float | None = None
        self._resumed_at = float("-inf")  # silence is counted from no earlier than this
        # The membership as last published (flush_members), and what changed since.
        self._version = 0
        self._published: dict[str, str] = {}  # host name -> address, at _version
        self._published_services: dict[str, str] = {}
        self._changed: set[str] = set()  # host names that joined or left since _version
        self._members_due = False  # something to publish, or a receiver needs the full Members
        self._full: m.Members | None = None  # the full Members at _version, built when first needed

    # --- queries (for status and tests) -------------------------------------------------------

    @property
    def instances(self) -> list[Instance]:
        return list(self._by_addr.values())

    def members(self) -> dict[str, str]:
        return {inst.name: inst.addr for inst in self._by_addr.values()}

    @property
    def members_version(self) -> int:
        """The version of the membership last published by flush_members()."""
        return self._version

    @property
    def members_due(self) -> bool:
        """flush_members() has something to send: the I/O layer schedules it (once per turn)."""
        return self._members_due

    @property
    def held_count(self) -> int:
        return len(self._held)

    @property
    def unauthenticated_count(self) -> int:
        return len(self._unauthenticated)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def quiet_count(self) -> int:
        return sum(1 for inst in self._by_addr.values() if inst.quiet)

    def path_totals(self) -> collections.Counter[str]:
        """Connections set up per path, over every instance that ever reported."""
        totals = collections.Counter(self._retired_paths)
        for inst in self._by_addr.values():
            if inst.report:
                totals["direct"] += inst.report.get("direct", 0)
                totals["relayed"] += inst.report.get("relayed", 0)
        return totals

    # --- events -------------------------------------------------------------------------------

    def connection_made(self, cid: int, endpoint: str, now: float = 0.0) -> list[Action]:
        source = endpoint.rpartition(":")[0]
        if self._unauthenticated_by_source[source] >= self.limits.unauthenticated_per_source:
            self.refusals.refuse("unauthenticated-per-source", now,
                                 f"{source} already holds {self.limits.unauthenticated_per_source} "
                                 "connections that have not authenticated")
            return [Close(cid, "too many unauthenticated connections from this address")]
        actions: list[Action] = []
        if len(self._unauthenticated) >= self.limits.unauthenticated:
            oldest = next(iter(self._unauthenticated.values()))
            self.refusals.refuse("unauthenticated", now,
                                 f"{self.limits.unauthenticated} connections have not authenticated; "
                                 f"closing the oldest, from {oldest.endpoint}")
            actions.append(Close(oldest.cid, "too many unauthenticated connections"))
            self._forget(oldest)
        conn = Connection(cid=cid, endpoint=endpoint, nonce=self.new_token(), opened_at=now)
        self._connections[cid] = conn
        self._unauthenticated[cid] = conn
        self._unauthenticated_by_source[source] += 1
        return [*actions, Send(cid, m.Challenge(v=m.PROTOCOL_VERSION, nonce=conn.nonce))]

    def _authenticated(self, conn: Connection) -> None:
        """The connection sent a valid first frame: it no longer counts as unauthenticated."""
        if self._unauthenticated.pop(conn.cid, None) is not None:
            source = conn.endpoint.rpartition(":")[0]
            self._unauthenticated_by_source[source] -= 1
            if self._unauthenticated_by_source[source] <= 0:
                del self._unauthenticated_by_source[source]

    def _forget(self, conn: Connection) -> None:
        """An unauthenticated connection we closed: nothing of it remains (its connection_lost,
        when the I/O layer reports it, finds nothing)."""
        self._authenticated(conn)
        self._connections.pop(conn.cid, None)
        conn.state = ConnState.CLOSED

    def connection_lost(self, cid: int) -> list[Action]:
        conn = self._connections.pop(cid, None)
        if conn is None:
            return []
        self._authenticated(conn)
        conn.state = ConnState.CLOSED
        actions: list[Action] = []
        self._watchers.discard(cid)
        if self._held_by_cid[cid]:
            for held in [h for h in self._held.values() if h.client_cid == cid]:
                self._end_held(held)
        if conn.session is not None and self._sessions.get(conn.session) == cid:
            del self._sessions[conn.session]
            self._tickets.drop_session(conn.session)
            actions += self._fail_pending_of(cid, "EHOSTUNREACH")
        if conn.instance is not None:
            actions += self._remove_instance(conn.instance, "connection lost")
        self._tickets.drop_cid(cid)
        return actions

    def message_received(self, cid: int, message: m.Message, now: float) -> list[Action]:
        conn = self._connections.get(cid)
        if conn is None:
            return []
        previous, conn.last_heard = conn.last_heard, now
        if conn.instance is not None and conn.instance.quiet:
            return [*self._heard_again(conn.instance, now - previous), *self._dispatch(conn, message, now)]
        return self._dispatch(conn, message, now)

    def _dispatch(self, conn: Connection, message: m.Message, now: float) -> list[Action]:
        cid = conn.cid
        if conn.state is ConnState.AWAIT_FIRST:
            if isinstance(message, m.Auth):
                return self._on_auth(conn, message)
            if isinstance(message, m.Observe):
                return self._on_observe(conn, message)
            if isinstance(message, m.Probe):  # reveals to a peer only its own public endpoint
                return [Send(cid, m.Observed(endpoint=conn.endpoint)), Close(cid, "probe answered")]
            return self._refuse(conn, f"expected auth or observe first, got {message.TYPE}")
        if conn.state is ConnState.CONTROL:
            handler = self._CONTROL_HANDLERS.get(type(message))
            if handler is None:
                return self._refuse(conn, f"{message.TYPE} is not valid on a control session")
            actions: list[Action] = handler(self, conn, message, now)
            return actions
        return self._refuse(conn, f"{message.TYPE} is not valid on a rendezvous connection")

    def protocol_error(self, cid: int, error: str) -> list[Action]:
        """The peer sent bytes that do not parse: log, close that connection, serve the rest."""
        conn = self._connections.get(cid)
        if conn is None:
            return []
        log.warning("protocol error from %s: %s", conn.endpoint, error)
        return [Close(cid, f"protocol error: {error}")]

    def expire(self, now: float) -> list[Action]:
        actions: list[Action] = self._find_quiet(now)
        actions += self._close_unauthenticated(now)
        for conn in list(self._connections.values()):  # (silence from our return, after a stall)
            if conn.state is ConnState.CONTROL and now - max(conn.last_heard, self._resumed_at) > self.timeouts.silence:
                log.warning("%s silent for %.0f s: closing its session", conn.endpoint, now - conn.last_heard)
                actions.append(Close(conn.cid, "silent"))
                actions += self.connection_lost(conn.cid)
        for held in [h for h in self._held.values() if h.deadline <= now]:
            self._end_held(held)
            log.info("no instance of %s came up in time for a held connect", held.service)
            actions.append(Send(held.client_cid, m.ConnectFailed(conn=held.msg.conn, error="ETIMEDOUT")))
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            self._end_pending(pending)
            if pending.punching:  # the punch has its own deadline at the client
                continue
            log.info("connect %s timed out waiting for the server agent", pending.conn)
            actions.append(Send(pending.client_cid, m.ConnectFailed(conn=pending.conn, error="ETIMEDOUT")))
        return actions

    def _close_unauthenticated(self, now: float) -> list[Action]:
        """Connections that sent no first frame within `limits.first_frame` are closed: an idle
        connection costs a descriptor, and anyone may open them."""
        actions: list[Action] = []
        limit = self.limits.first_frame
        while self._unauthenticated:
            oldest = next(iter(self._unauthenticated.values()))
            if now - oldest.opened_at <= limit:
                break  # oldest first: the rest are younger
            self.refusals.refuse("first-frame-deadline", now,
                                 f"{oldest.endpoint} sent no first frame within {limit:g} s")
            actions.append(Close(oldest.cid, "no first frame in time"))
            self._forget(oldest)
        return actions

    def _find_quiet(self, now: float) -> list[Action]:
        """Instances not heard from for `timeouts.quiet` become quiet (watchers are told)."""
        if self._last_expire is None:
            self._resumed_at = now  # silence counts from our first look
        elif now - self._last_expire > self.timeouts.stall:
            # We did not run for a while: the agents' beats wait unread in our sockets.
            log.warning("coordinator stalled for %.2f s: silence counted from now", now - self._last_expire)
            self._resumed_at = now
        self._last_expire = now
        if self.timeouts.beat is None:
            return []
        actions: list[Action] = []
        limit = self.timeouts.quiet
        since = self._resumed_at
        for inst in self._by_addr.values():
            if inst.quiet:
                continue
            conn = self._connections.get(inst.cid)
            if conn is None:
                continue
            silent = now - max(conn.last_heard, since)
            if silent > limit:
                inst.quiet = True
                log.warning("%s quiet: nothing heard for %.2f s", inst.name, now - conn.last_heard)
                actions += self._tell_watchers(m.InstanceQuiet(
                    name=inst.name, service=inst.service, instance=inst.instance_id, quiet=True,
                    silent=round(now - conn.last_heard, 3)))
                # Connects to a service waiting on it: EHOSTUNREACH now, which the client's
                # agent answers by asking again, and another instance takes it (_pick_instance
                # passes over quiet ones), rather than waiting out its connect timeout. A
                # connect to the instance's own address waits on: it may yet answer.
                actions += self._fail_pending_of(inst.cid, "EHOSTUNREACH", services_only=True)
        return actions

    def _heard_again(self, inst: Instance, silent: float) -> list[Action]:
        inst.quiet = False
        log.info("%s heard from again after %.2f s", inst.name, silent)
        return self._tell_watchers(m.InstanceQuiet(
            name=inst.name, service=inst.service, instance=inst.instance_id, quiet=False,
            silent=round(max(0.0, silent), 3)))

    def next_deadline(self) -> float | None:
        return min([p.deadline for p in self._pending.values()] + [h.deadline for h in self._held.values()],
                   default=None)

    # --- session set-up -----------------------------------------------------------------------

    def _on_auth(self, conn: Connection, msg: m.Auth) -> list[Action]:
        if msg.v != m.PROTOCOL_VERSION:
            return self._refuse(conn, f"protocol version {msg.v} not supported (coordinator speaks "
                                      f"{m.PROTOCOL_VERSION}): upgrade boxer on both sides")
        key = self.secret if msg.instance is None else auth.instance_token(self.secret, msg.instance)
        expected = auth.mac(key, auth.AGENT_PROOF, conn.nonce, msg.nonce)
        if not auth.verify(expected, msg.mac):
            what = "deployment secret" if msg.instance is None else f"credential for instance {msg.instance}"
            return self._refuse(conn, f"authentication failed: wrong {what}")
        self._authenticated(conn)
        conn.state = ConnState.CONTROL
        conn.role, conn.role_instance = ("controller", None) if msg.instance is None else ("instance", msg.instance)
        conn.key = key
        conn.session = self.new_token()
        self._sessions[conn.session] = conn.cid
        proof = auth.mac(key, auth.COORDINATOR_PROOF, msg.nonce, conn.nonce)
        return [Send(conn.cid, m.Welcome(session=conn.session, mac=proof))]

    def _on_observe(self, conn: Connection, msg: m.Observe) -> list[Action]:
        if msg.v != m.PROTOCOL_VERSION:
            return self._refuse(conn, f"protocol version {msg.v} not supported (coordinator speaks "
                                      f"{m.PROTOCOL_VERSION}): upgrade boxer on both sides")
        # Bound to this connection's nonce: an Observe captured on the way and replayed from
        # another address (so that a peer would punch toward it) proves nothing here. Keyed by
        # the credential the session authenticated with: an agent holds no other.
        owner = self._connections.get(self._sessions.get(msg.session, -1))
        expected = auth.mac(owner.key if owner is not None else self.secret, auth.OBSERVE_PROOF, conn.nonce,
                            msg.session, msg.ticket)
        if not auth.verify(expected, msg.mac) or owner is None:
            self.refusals.refuse("observe-proof", conn.opened_at, f"{conn.endpoint}: rendezvous with an unknown "
                                 "session or a proof not made for this connection")
            return self._refuse(conn, "rendezvous refused: unknown session or wrong proof")
        if msg.ticket in self._tickets:
            return self._refuse(conn, "rendezvous refused: ticket already in use")
        if self._tickets.was_used(msg.ticket):
            self.refusals.refuse("ticket-reused", conn.opened_at, f"{conn.endpoint}: ticket {msg.ticket} was used")
            return self._refuse(conn, "rendezvous refused: ticket already used (a ticket id serves once)")
        if self._tickets.count(msg.session) >= self.limits.tickets_per_session:
            self.refusals.refuse("tickets-per-session", conn.opened_at,
                                 f"session {msg.session[:8]} already holds {self.limits.tickets_per_session} tickets")
            return self._refuse(conn, f"rendezvous refused: the session holds {self.limits.tickets_per_session} "
                                      "tickets already")
        self._authenticated(conn)
        conn.state = ConnState.RENDEZVOUS
        conn.session = msg.session
        self._tickets.add(Ticket(msg.ticket, msg.session, conn.endpoint, conn.cid, msg.purpose))
        return [Send(conn.cid, m.Observed(endpoint=conn.endpoint))]

    def _refuse(self, conn: Connection, reason: str) -> list[Action]:
        log.warning("refusing %s: %s", conn.endpoint, reason)
        return [Send(conn.cid, m.Refused(reason=reason)), Close(conn.cid, reason)]

    # --- membership ---------------------------------------------------------------------------

    def _insider(self, conn: Connection, action: str, now: float) -> list[Action]:
        """An instance's credential asked for what only the controller's may do: refused, logged."""
        self.refusals.refuse(f"role-{action}", now, f"{conn.endpoint} (instance {conn.role_instance}) asked to "
                             f"{action}, which only the controller's credential may")
        return [Send(conn.cid, m.Error(ref=action, reason=f"only the controller may {action}: this session "
                                                         f"authenticated as instance {conn.role_instance}"))]

    def _on_register(self, conn: Connection, msg: m.Register, now: float) -> list[Action]:
        if conn.role == "instance" and msg.instance != conn.role_instance:
            self.refusals.refuse("role-register", now, f"{conn.endpoint} authenticated as instance "
                                 f"{conn.role_instance} tried to register as {msg.instance} ({msg.name})")
            return [Send(conn.cid, m.Error(ref="register", reason=f"this session's credential is instance "
                                           f"{conn.role_instance}'s; it cannot register instance {msg.instance}"))]
        if conn.instance is not None:
            return [Send(conn.cid, m.Error(ref="register", reason="this session is already registered"))]
        holder = self._by_name.get(msg.name)
        actions: list[Action] = []
        if holder is not None and holder.instance_id == msg.instance:
            # The same instance on a new connection (its old one died without us noticing, e.g.
            # a NAT mapping expired while it was frozen): the new session replaces the old.
            old = self._connections.get(holder.cid)
            if old is not None:
                old.instance = None
                actions.append(Close(holder.cid, "replaced by a new session of the same instance"))
            self._remove_instance(holder, "re-registered on a new connection")
            holder = None
        if holder is not None:
            return [Send(conn.cid, m.Error(
                ref="register",
                reason=f"the name {msg.name!r} is taken by a running instance ({holder.addr}); "
                       "choose another with --name"))]
        if conn.cid in self._watchers:
            return [Send(conn.cid, m.Error(ref="register", reason="a watching session cannot register"))]
        if msg.service != msg.name and self.services.ensure(msg.service) is None:
            self.refusals.refuse("services", now, f"no room for service {msg.service!r} of {msg.name}")
            return [*actions, Send(conn.cid, m.Error(ref="register", reason=self._no_room_for_service(msg.service)))]
        addr = self._allocate(msg.addr)
        if addr is None:
            self.refusals.refuse("addresses", now, f"no address left for {msg.name}")
            return [*actions, Send(conn.cid, m.Error(
                ref="register", reason=f"the overlay prefix {self.prefix} has no free address left: "
                                       "give the coordinator a larger --prefix"))]
        inst = Instance(msg.name, msg.service, addr, msg.instance, conn.cid)
        conn.instance = inst
        self._by_addr[addr] = inst
        self._by_name[inst.name] = inst
        log.info("registered %s (%s) at %s from %s", inst.name, inst.service, addr, conn.endpoint)
        self._membership_changed(inst.name)
        self._needs_full_members(conn)  # sent by the next flush, after Registered
        return [*actions, Send(conn.cid, m.Registered(name=inst.name, addr=addr, prefix=self.prefix,
                                                 relay_port=self.relay_port, beat=self.timeouts.beat)),
                *self._tell_watchers(m.InstanceUp(name=inst.name, service=inst.service, addr=addr,
                                                  instance=inst.instance_id))]

    def _no_room_for_service(self, name: str) -> str:
        if len(self.services) >= self.limits.services:
            return (f"service {name!r} refused: the coordinator holds its limit of {self.limits.services} "
                    "services (--limit services=N)")
        return f"service {name!r} refused: no free address left in the overlay prefix {self.prefix}"

    def _allocate(self, wanted: str | None) -> str | None:
        if wanted is not None:
            ip = ipaddress.IPv4Address(wanted)
            if (ip in self._network and wanted not in self._by_addr and ip != self._network.network_address
                    and not self.services.is_vip(wanted)):
                return wanted
        size = self._network.num_addresses
        for _ in range(size):
            offset = self._next_host
            self._next_host = self._next_host % (size - 2) + 1
            addr = str(self._network.network_address + offset)
            if addr not in self._by_addr and not self.services.is_vip(addr):
                return addr
        return None

    def _remove_instance(self, inst: Instance, why: str) -> list[Action]:
        if self._by_addr.get(inst.addr) is inst:
            del self._by_addr[inst.addr]
            if inst.report:
                self._retired_paths["direct"] += inst.report.get("direct", 0)
                self._retired_paths["relayed"] += inst.report.get("relayed", 0)
            del self._by_name[inst.name]
            log.info("deregistered %s at %s: %s", inst.name, inst.addr, why)
            self._membership_changed(inst.name)
            gone = m.InstanceDown(name=inst.name, service=inst.service, instance=inst.instance_id, reason=why)
            return self._tell_watchers(gone)
        return []

    # --- membership updates: collected, then published once per turn -----------------------

    def _membership_changed(self, name: str) -> None:
        self._changed.add(name)
        self._members_due = True

    def _needs_full_members(self, conn: Connection) -> None:
        conn.members_version = None
        self._members_due = True

    def flush_members(self) -> list[Action]:
        """Publishes the changes collected since the last flush as the next version: one
        MembersDelta to each receiver known to hold the previous version, the full Members to
        the others. The I/O layer calls it once per turn of its loop (see `members_due`), so
        registrations handled in one turn reach each receiver as one frame."""
        if not self._members_due:
            return []
        self._members_due = False
        delta = self._publish()
        actions: list[Action] = []
        for conn in self._membership_receivers():
            if conn.members_version == self._version:
                continue
            if delta is not None and conn.members_version == delta.base and not self.full_snapshots:
                actions.append(Send(conn.cid, delta))
            else:
                actions.append(Send(conn.cid, self._full_members()))
            conn.members_version = self._version
        return actions

    def _publish(self) -> m.MembersDelta | None:
        """Folds the changes since the last version into the next one; None if there were none
        (a name that left and came back at the same address in one turn is no change)."""
        hosts: dict[str, str] = {}
        gone: list[str] = []
        for name in sorted(self._changed):
            inst = self._by_name.get(name)
            addr = inst.addr if inst is not None else None
            if addr == self._published.get(name):
                continue
            if addr is None:
                gone.append(name)
                del self._published[name]
            else:
                hosts[name] = addr
                self._published[name] = addr
        self._changed.clear()
        # Services are few and never withdrawn: compare them all.
        services = {name: vip for name, vip in self.services.vips().items()
                    if self._published_services.get(name) != vip}
        if not (hosts or gone or services):
            return None
        self._published_services.update(services)
        base, self._version = self._version, self._version + 1
        self._full = None
        return m.MembersDelta(base=base, version=self._version, hosts=hosts, gone=gone, services=services)

    def _full_members(self) -> m.Members:
        if self._full is None:
            # Every entry was checked when its instance registered (names by Register, addresses
            # by _allocate); checking them again per registrant made a cold start O(n²) checks.
            self._full = m.Members.of_checked(dict(self._published), self._version,
                                              dict(self._published_services))
        return self._full

    def _membership_receivers(self) -> list[Connection]:
        cids = [i.cid for i in self._by_addr.values()] + sorted(self._watchers)
        return [conn for cid in cids if (conn := self._connections.get(cid)) is not None]

    def _on_resync(self, conn: Connection, msg: m.Resync, now: float) -> list[Action]:
        if conn.instance is not None or conn.cid in self._watchers:
            log.warning("%s asked for the full membership: its copy was out of step", conn.endpoint)
            self._needs_full_members(conn)
        return []

    def _tell_watchers(self, message: m.Message) -> list[Action]:
        return [Send(cid, message) for cid in sorted(self._watchers)]

    def _on_bye(self, conn: Connection, msg: m.Bye, now: float) -> list[Action]:
        if conn.instance is None:
            return []
        inst, conn.instance = conn.instance, None
        return self._remove_instance(inst, msg.reason or "bye")

    def _on_nat_report(self, conn: Connection, msg: m.NatReport, now: float) -> list[Action]:
        if conn.instance is not None:
            conn.instance.nat = msg.mapping
            log.info("%s is behind a NAT with %s mapping", conn.instance.name, msg.mapping)
        return []

    def _on_report(self, conn: Connection, msg: m.Report, now: float) -> list[Action]:
        inst = conn.instance
        if inst is None:
            return []
        inst.report = msg.to_wire()
        del inst.report["t"]
        inst.load = Load(active=msg.active, listening=frozenset(msg.listening), reported=True)
        actions = self._tell_watchers(m.InstanceReport.of_checked(name=inst.name, service=inst.service,
                                                       instance=inst.instance_id, report=inst.report))
        if self._held and msg.listening:
            actions += self._release_held(now)
        return actions

    def _on_watch(self, conn: Connection, msg: m.Watch, now: float) -> list[Action]:
        if conn.role != "controller":
            return self._insider(conn, "watch", now)
        if conn.instance is not None:
            return [Send(conn.cid, m.Error(ref="watch", reason="a registered instance cannot watch"))]
        self._watchers.add(conn.cid)
        instances = [{"name": i.name, "service": i.service, "addr": i.addr, "instance": i.instance_id,
                      "nat": i.nat, "draining": i.draining, "quiet": i.quiet, "report": i.report}
                     for i in self._by_addr.values()]
        log.info("controller watching from %s", conn.endpoint)
        self._needs_full_members(conn)
        return [Send(conn.cid, m.Snapshot(instances=instances, services=self.services.vips()))]

    def _on_declare(self, conn: Connection, msg: m.Declare, now: float) -> list[Action]:
        if conn.role != "controller":
            return self._insider(conn, "declare", now)
        if conn.cid not in self._watchers:
            return [Send(conn.cid, m.Error(ref="declare", reason="only a watching controller may declare"))]
        actions: list[Action] = []
        refused = []
        for name, hold in msg.services.items():
            if self.services.ensure(name, hold=float(hold), declared=True) is None:
                refused.append(name)
            elif hold <= 0:  # the controller says it is down (crash-looping): refuse what waits
                actions += self._refuse_held(name)
        self._members_due = True  # new services' addresses go out with the next flush
        if refused:
            self.refusals.refuse("services", now, f"no room for declared services {', '.join(refused[:5])}")
            actions.append(Send(conn.cid, m.Error(ref="declare", reason=self._no_room_for_service(refused[0])
                                                  + f" ({len(refused)} service(s) not declared)")))
        return actions

    def _refuse_held(self, service: str) -> list[Action]:
        actions: list[Action] = []
        for held in [h for h in self._held.values() if h.service == service]:
            self._end_held(held)
            self.connect_results["ECONNREFUSED"] += 1
            actions.append(Send(held.client_cid, m.ConnectFailed(conn=held.msg.conn, error="ECONNREFUSED")))
        if actions:
            log.info("refused %d held connect(s) to %s: it is failing", len(actions), service)
        return actions

    def _on_drain(self, conn: Connection, msg: m.Drain, now: float) -> list[Action]:
        if conn.role != "controller":
            return self._insider(conn, "drain", now)
        inst = self._by_instance_id(msg.instance)
        if conn.cid not in self._watchers or inst is None:
            return []
        inst.draining = True
        return [Send(inst.cid, msg)]

    def _on_stop(self, conn: Connection, msg: m.Stop, now: float) -> list[Action]:
        if conn.role != "controller":
            return self._insider(conn, "stop", now)
        inst = self._by_instance_id(msg.instance)
        if conn.cid not in self._watchers or inst is None:
            return []
        return [Send(inst.cid, msg)]

    def _by_instance_id(self, instance_id: str) -> Instance | None:
        return next((i for i in self._by_addr.values() if i.instance_id == instance_id), None)

    def _on_ping(self, conn: Connection, msg: m.Ping, now: float) -> list[Action]:
        return [Send(conn.cid, m.Pong(seq=msg.seq))]

    def _on_beat(self, conn: Connection, msg: m.Beat, now: float) -> list[Action]:
        return []  # being heard is all a beat is for (message_received noted the time)

    # --- brokering ----------------------------------------------------------------------------

    def _on_connect(self, conn: Connection, msg: m.Connect, now: float) -> list[Action]:
        def fail(error: str) -> list[Action]:
            self.connect_results[error] += 1
            return [Send(conn.cid, m.ConnectFailed(conn=msg.conn, error=error))]

        if conn.instance is None:
            return [Send(conn.cid, m.Error(ref=msg.conn, reason="register before connecting"))]
        ticket = self._tickets.get(msg.ticket)
        if ticket is None or ticket.session != conn.session:
            return [Send(conn.cid, m.Error(ref=msg.conn, reason="unknown ticket"))]
        if msg.conn in self._pending or msg.conn in self._held:
            return [Send(conn.cid, m.Error(ref=msg.conn, reason="connection id already in use"))]
        if ticket.conn is not None:  # one ticket, one connect: its endpoint is punched once
            return [Send(conn.cid, m.Error(ref=msg.conn, reason="ticket already in use by another connect"))]
        if self._pending_by_cid[conn.cid] >= self.limits.pending_per_session:
            self.refusals.refuse("pending-per-session", now, f"{conn.endpoint} has "
                                 f"{self.limits.pending_per_session} connects waiting for their server")
            return fail("ECONNREFUSED")
        service = self.services.by_vip(msg.dst_addr)
        if service is not None:
            return self._connect_to_service(conn, msg, service, now)
        server = self._by_addr.get(msg.dst_addr)
        if server is None:
            return fail("EHOSTUNREACH")
        return self._broker(conn, msg, server, now)

    def _connect_to_service(self, conn: Connection, msg: m.Connect, service: Service, now: float) -> list[Action]:
        server = self._pick_instance(service.name, msg.dst_port)
        if server is not None:
            return self._broker(conn, msg, server, now)
        if service.hold > 0 and self._held_by_cid[conn.cid] >= self.limits.held_per_session:
            self.refusals.refuse("held-per-session", now, f"{conn.endpoint} has {self.limits.held_per_session} "
                                 "connects held for a first instance")
        elif service.hold > 0:
            self._add_held(HeldConnect(msg, conn.cid, service.name, now + service.hold))
            return self._tell_watchers(m.Demand(service=service.name, port=msg.dst_port,
                                                waiting=self._held_by_service[service.name]))
        self.connect_results["ECONNREFUSED"] += 1
        return [Send(conn.cid, m.ConnectFailed(conn=msg.conn, error="ECONNREFUSED"))]

    # Every held and pending connect enters and leaves through these four, which keep the
    # per-session counts (the bounds) and the ticket's mark (one ticket, one connect) true.

    def _add_held(self, held: HeldConnect) -> None:
        self._held[held.msg.conn] = held
        self._held_by_cid[held.client_cid] += 1
        self._held_by_service[held.service] += 1
        self._mark_ticket(held.msg.ticket, held.msg.conn)
        log.info("holding a connect to %s:%d until an instance listens", held.service, held.msg.dst_port)

    def _end_held(self, held: HeldConnect) -> None:
        if self._held.pop(held.msg.conn, None) is None:
            return
        _decrement(self._held_by_cid, held.client_cid)
        _decrement(self._held_by_service, held.service)
        self._mark_ticket(held.msg.ticket, None, held.msg.conn)

    def _add_pending(self, pending: PendingConnect) -> None:
        self._pending[pending.conn] = pending
        self._pending_by_cid[pending.client_cid] += 1
        self._mark_ticket(pending.client_ticket, pending.conn)

    def _end_pending(self, pending: PendingConnect) -> None:
        if self._pending.pop(pending.conn, None) is None:
            return
        _decrement(self._pending_by_cid, pending.client_cid)
        self._mark_ticket(pending.client_ticket, None, pending.conn)

    def _mark_ticket(self, ticket_id: str, conn: str | None, was: str | None = None) -> None:
        ticket = self._tickets.get(ticket_id)
        if ticket is not None and (was is None or ticket.conn == was):
            ticket.conn = conn

    def _pick_instance(self, service: str, port: int) -> Instance | None:
        """The least loaded live instance; a quiet one only when every instance is quiet (then
        the silence is more likely ours, or the network's, than theirs)."""
        live = [i for i in self._by_addr.values() if i.service == service and not i.draining]
        heard = [i for i in live if not i.quiet]
        addr = pick([(i.addr, i.load) for i in heard], port) \
            or pick([(i.addr, i.load) for i in live if i.quiet], port)
        if addr is None:
            return None
        chosen = self._by_addr[addr]
        chosen.load.assigned += 1
        return chosen

    def _release_held(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for held in list(self._held.values()):
            server = self._pick_instance(held.service, held.msg.dst_port)
            client = self._connections.get(held.client_cid)
            if server is None or client is None:
                continue
            self._end_held(held)
            actions += self._broker(client, held.msg, server, now)
        return actions

    def _broker(self, conn: Connection, msg: m.Connect, server: Instance, now: float) -> list[Action]:
        assert conn.instance is not None
        ticket = self._tickets.get(msg.ticket)
        if ticket is None:
            return [Send(conn.cid, m.ConnectFailed(conn=msg.conn, error="ECONNABORTED"))]
        pending = PendingConnect(msg.conn, conn.cid, server.cid, msg.ticket, now + self.timeouts.broker,
                                 to_service=self.services.by_vip(msg.dst_addr) is not None)
        self._add_pending(pending)
        self.connect_results["brokered"] += 1
        server_ticket = self._take_incoming_ticket(server.cid)
        if server_ticket is None:  # slow path: ask the server agent for a ticket first
            return [Send(server.cid, m.Incoming(conn=msg.conn, src_addr=conn.instance.addr,
                                                src_port=msg.src_port, dst_port=msg.dst_port, warm=msg.warm))]
        # Fast path: the server deposited a ticket in advance, so both sides punch now; one hop.
        self._tickets.pop(msg.ticket)
        pending.punching = True
        mode = self._path_mode(conn.instance, server)
        key, salt = self._connection_key(msg.conn)
        return [
            Send(conn.cid, m.Punch(conn=msg.conn, role="client", peer=server_ticket.endpoint, ticket=msg.ticket,
                                   wrapped_key=self._wrap(key, conn, msg.conn, salt), salt=salt, mode=mode)),
            Send(server.cid, m.Incoming(conn=msg.conn, src_addr=conn.instance.addr, src_port=msg.src_port,
                                        dst_port=msg.dst_port, ticket=server_ticket.ticket, peer=ticket.endpoint,
                                        mode=mode, warm=msg.warm, salt=salt,
                                        wrapped_key=self._wrap(key, self._connections[server.cid], msg.conn, salt))),
        ]

    def _connection_key(self, conn: str) -> tuple[bytes, str]:
        """The key and salt of one brokered connection: the salt is fresh, so a connection id
        chosen again (by an insider who saw it in a Relay frame) never gets the same key."""
        salt = self.new_token()
        return auth.connection_key(self.secret, conn, salt), salt

    @staticmethod
    def _wrap(key: bytes, receiver: Connection, conn: str, salt: str) -> str:
        """The key (hex) as `receiver` may read it: wrapped under the credential its session
        proved (an instance's token), since the session itself is not encrypted."""
        return auth.wrap_connection_key(receiver.key, key, conn, salt).hex()

    @staticmethod
    def _path_mode(client: Instance, server: Instance) -> str:
        """A NAT that maps each destination to a new port defeats punching: relay at once."""
        return "relay" if "symmetric" in (client.nat, server.nat) else "direct"

    def _take_incoming_ticket(self, server_cid: int) -> Ticket | None:
        return self._tickets.take_incoming(self._connections[server_cid].session)

    def _on_accept(self, conn: Connection, msg: m.Accept, now: float) -> list[Action]:
        pending = self._pending.get(msg.conn)
        if pending is None or pending.server_cid != conn.cid or pending.punching:
            return []  # timed out meanwhile, or not addressed to this agent: nothing to do
        self._end_pending(pending)
        server_ticket = self._tickets.pop(msg.ticket)
        client_ticket = self._tickets.pop(pending.client_ticket)
        if server_ticket is None or server_ticket.session != conn.session:
            return [Send(pending.client_cid, m.ConnectFailed(conn=msg.conn, error="ECONNABORTED"))]
        if client_ticket is None:  # the client's rendezvous connection died meanwhile
            return [Send(conn.cid, m.ConnectFailed(conn=msg.conn, error="ECONNABORTED"))]
        client = self._connections[pending.client_cid].instance
        mode = self._path_mode(client, conn.instance) if client and conn.instance else "direct"
        key, salt = self._connection_key(msg.conn)
        client_key = self._wrap(key, self._connections[pending.client_cid], msg.conn, salt)
        return [
            Send(pending.client_cid, m.Punch(conn=msg.conn, role="client", peer=server_ticket.endpoint,
                                             ticket=client_ticket.ticket, wrapped_key=client_key, salt=salt,
                                             mode=mode)),
            Send(conn.cid, m.Punch(conn=msg.conn, role="server", peer=client_ticket.endpoint,
                                   ticket=server_ticket.ticket, wrapped_key=self._wrap(key, conn, msg.conn, salt),
                                   salt=salt, mode=mode)),
        ]

    def _on_refuse(self, conn: Connection, msg: m.Refuse, now: float) -> list[Action]:
        pending = self._pending.get(msg.conn)
        if pending is None or pending.server_cid != conn.cid:
            return []
        self._end_pending(pending)
        self.connect_results[msg.error] += 1
        return [Send(pending.client_cid, m.ConnectFailed(conn=msg.conn, error=msg.error))]

    def _fail_pending_of(self, cid: int, error: str, services_only: bool = False) -> list[Action]:
        actions: list[Action] = []
        for pending in [p for p in self._pending.values() if cid in (p.client_cid, p.server_cid)
                        and (p.to_service or not services_only)]:
            self._end_pending(pending)
            if pending.client_cid != cid:
                actions.append(Send(pending.client_cid, m.ConnectFailed(conn=pending.conn, error=error)))
        return actions

    # message type -> handler(broker, conn, message, now) -> actions
    _CONTROL_HANDLERS: ClassVar[dict[type[m.Message], Callable[..., list[Action]]]] = {
        m.Register: _on_register,
        m.Bye: _on_bye,
        m.Resync: _on_resync,
        m.Ping: _on_ping,
        m.Beat: _on_beat,
        m.NatReport: _on_nat_report,
        m.Report: _on_report,
        m.Watch: _on_watch,
        m.Declare: _on_declare,
        m.Drain: _on_drain,
        m.Stop: _on_stop,
        m.Connect: _on_connect,
        m.Accept: _on_accept,
        m.Refuse: _on_refuse,
    }


def _decrement(counter: collections.Counter[Any], key: object) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
