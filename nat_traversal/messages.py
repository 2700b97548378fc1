"""The messages of the agent <-> coordinator protocol.

Every message is a small frozen dataclass, validated when built, whether by our own code or from a
peer's frame. The wire form is a JSON object whose "t" names the type; `MESSAGE_TYPES` is the one
table of types. `decode()` raises ProtocolError (the peer's fault) for anything malformed;
building a bad message in our own code raises ValueError (our fault).

Versioning: the first frame each side sends carries `v`; a coordinator refuses versions it does
not speak with a message naming both versions, so mismatched deployments fail loudly.
Version 2 added heartbeats: `Registered.beat`, `Beat`, `InstanceQuiet`.
Version 3 made membership updates deltas: `Members.version`, `MembersDelta`, `Resync`.
Version 4 bound Observe proofs to the connection's Challenge nonce (a captured Observe replays
nowhere), made ticket ids and relay proofs single-use, and gave `Auth` roles (`Auth.instance`).
Version 5 took the deployment secret from the agents: an agent holds its instance token only
(Observe proofs are keyed by the session's credential), and the coordinator hands both agents
of a connection its key and salt in `Punch`/`Incoming` (`key`, `salt`); peer and relay proofs
are keyed by it, and `Relay.salt` lets the relay derive it.
Version 6 wraps that key for its receiver (`wrapped_key`: auth.wrap_connection_key, under the
receiver's token), so a reader of the unencrypted control session cannot forge its proofs.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from boxer.nat_traversal.auth import unwrap_connection_key
from boxer.nat_traversal.wire import ProtocolError, encode_frame

PROTOCOL_VERSION = 6

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TOKEN_RE = re.compile(r"^[0-9a-f]{8,64}$")
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
# errno names an application may see for a failed overlay connect, and why each arises.
TICKET_PURPOSES = ("outgoing", "incoming")
# Every number on the wire is an integer or float of magnitude below 2**53 (beyond it JSON
# numbers lose precision in most parsers, and no count, size or time of ours gets there): the
# decoder refuses any other, so `active: 10**400` never reaches arithmetic.
MAX_NUMBER = 2**53
# Ports one Report may list as listening: an app with more is not one we can serve, and the
# controller walks this list every tick.
MAX_LISTENING = 1024
MAX_DRAIN_GRACE = 3600.0  # seconds (a Lambda instance lives 900 s at most; a VM drains in minutes)
MAX_SNAPSHOT = 100_000  # instances in one Snapshot
CONNECT_ERRORS = ("ECONNREFUSED", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ECONNABORTED")


def check_name(name: str, what: str = "name") -> str:
    if not _NAME_RE.match(name):
        raise ValueError(
            f"{what} {name!r} is not a valid host name: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def check_token(value: str, what: str) -> str:
    if not _TOKEN_RE.match(value):
        raise ValueError(f"{what} must be 8-64 lowercase hex digits, got {value!r}")
    return value


def check_key(value: str, what: str = "key") -> str:
    if not _KEY_RE.match(value):
        raise ValueError(f"{what} must be 64 lowercase hex digits (32 bytes)")  # never echo a key
    return value


def check_endpoint(value: str, what: str = "endpoint") -> str:
    host, sep, port = value.rpartition(":")
    try:
        port_number = int(port)
    except ValueError:
        raise ValueError(f"{what} must be 'ipv4:port', got {value!r}") from None
    if not _is_ipv4(host):
        raise ValueError(f"{what} must be 'ipv4:port', got {value!r}")
    if not sep or not 0 < port_number < 65536:
        raise ValueError(f"{what} must be 'ipv4:port' with a port in 1..65535, got {value!r}")
    return value


PATH_MODES = ("direct", "relay")
NAT_MAPPINGS = ("eim", "symmetric", "unknown")


def check_mode(value: str) -> str:
    if value not in PATH_MODES:
        raise ValueError(f"mode must be one of {', '.join(PATH_MODES)}, got {value!r}")
    return value


def check_port(value: int, what: str = "port") -> int:
    if not 0 < value < 65536:
        raise ValueError(f"{what} must be in 1..65535, got {value}")
    return value


def check_ipv4(value: str, what: str = "address") -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be an IPv4 address string, got {value!r}")
    if not _is_ipv4(value):
        raise ValueError(f"{what} must be an IPv4 address, got {value!r}")
    return value


def _is_ipv4(value: str) -> bool:
    """Exactly the strings ipaddress.IPv4Address accepts: four decimal octets 0-255, no leading
    zeros, nothing around them. inet_aton alone is lax (it takes "1.2", hex, octal, and trailing
    junk after a space); the round trip through inet_ntoa gives the canonical dotted quad, which
    equals the input only when the input was one. ~5x faster than IPv4Address, which every
    address in every Members went through on each agent."""
    try:
        return socket.inet_ntoa(socket.inet_aton(value)) == value
    except (OSError, ValueError):  # not an address; an embedded NUL or a lone surrogate
        return False


class Message:
    TYPE: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        wire = {"t": self.TYPE}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            wire[field.name] = getattr(self, field.name)
        return wire


# --- session set-up (control connection) -----------------------------------------------------

@dataclass(frozen=True)
class Challenge(Message):
    """coordinator -> agent, first frame: prove you hold the deployment secret."""
    TYPE: ClassVar[str] = "challenge"
    v: int
    nonce: str

    def __post_init__(self) -> None:
        check_token(self.nonce, "nonce")


@dataclass(frozen=True)
class Auth(Message):
    """peer -> coordinator: mac = HMAC(key, agent-proof | server nonce | client nonce).

    The key is the credential of a role (auth.py): with `instance` set, that instance's token,
    HMAC(secret, "instance:" + instance), and the session may register that instance only;
    without it, the deployment secret itself: the controller, which alone may Watch, Declare,
    Drain and Stop."""
    TYPE: ClassVar[str] = "auth"
    v: int
    nonce: str
    mac: str
    instance: str | None = None

    def __post_init__(self) -> None:
        check_token(self.nonce, "nonce")
        check_token(self.mac, "mac")
        if self.instance is not None:
            check_token(self.instance, "instance")


@dataclass(frozen=True)
class Welcome(Message):
    """coordinator -> agent: the coordinator proves it holds the secret too (mutual auth)."""
    TYPE: ClassVar[str] = "welcome"
    session: str
    mac: str

    def __post_init__(self) -> None:
        check_token(self.session, "session")
        check_token(self.mac, "mac")


@dataclass(frozen=True)
class Refused(Message):
    """coordinator -> peer: authentication or version refused; the connection closes."""
    TYPE: ClassVar[str] = "refused"
    reason: str


@dataclass(frozen=True)
class Register(Message):
    """agent -> coordinator: make me a host of the overlay.

    `addr` is set when re-registering after a coordinator restart, so the instance keeps its
    address (the coordinator is soft state: the agents hold the truth)."""
    TYPE: ClassVar[str] = "register"
    name: str
    service: str
    instance: str
    addr: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        check_name(self.service, "service")
        check_token(self.instance, "instance")
        if self.addr is not None:
            check_ipv4(self.addr)


@dataclass(frozen=True)
class Registered(Message):
    """coordinator -> agent: you are `name` at `addr`; the relay listens on the coordinator's
    address at `relay_port` (it also answers NAT probes there). `beat`: send a Beat every that
    many seconds (None: the coordinator wants none)."""
    TYPE: ClassVar[str] = "registered"
    name: str
    addr: str
    prefix: str
    relay_port: int | None = None
    beat: float | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        check_ipv4(self.addr)
        if self.beat is not None and not 0.01 <= self.beat <= 60:
            raise ValueError(f"beat must be 0.01..60 seconds, got {self.beat!r}")


@dataclass(frozen=True)
class Error(Message):
    """coordinator -> agent: a request could not be served; `ref` names it."""
    TYPE: ClassVar[str] = "error"
    ref: str
    reason: str


@dataclass(frozen=True)
class Members(Message):
    """coordinator -> agents and watchers: the full membership (name -> address) at `version`.

    Sent when a session registers or watches, when the receiver asks (Resync), and whenever the
    coordinator cannot prove the receiver holds the previous version; every other change comes
    as a MembersDelta. Agents answer name lookups from it locally, so a getaddrinfo costs no
    network round trip."""
    TYPE: ClassVar[str] = "members"
    hosts: dict[str, str]
    version: int
    services: dict[str, str] = dataclasses.field(default_factory=dict)  # service name -> its virtual address

    def __post_init__(self) -> None:
        check_version(self.version)
        check_addresses(self.hosts)
        check_addresses(self.services, "service")

    @classmethod
    def of_checked(cls, hosts: dict[str, str], version: int, services: dict[str, str]) -> Members:
        """A Members of entries that were each checked already (the broker's own table: every
        name and address was checked when its instance registered), without checking them all
        again. In a cold start each registrant gets the full membership, and checking n entries
        for each of n registrants was most of the coordinator's CPU. Peers' frames are always
        checked (decode builds with the constructor)."""
        members = object.__new__(cls)
        # What a frozen dataclass's own __init__ does, minus __post_init__.
        object.__setattr__(members, "hosts", hosts)
        object.__setattr__(members, "version", check_version(version))
        object.__setattr__(members, "services", services)
        return members


@dataclass(frozen=True)
class MembersDelta(Message):
    """coordinator -> agents and watchers: the membership changed from `base` to `version`.

    `hosts`: instances that joined or moved (name -> address); `gone`: names that left;
    `services`: services that appeared (name -> virtual address; services are never withdrawn).
    A receiver applies it only if it holds exactly version `base`; otherwise it sends Resync."""
    TYPE: ClassVar[str] = "members_delta"
    base: int
    version: int
    hosts: dict[str, str]
    gone: list[str]
    services: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_version(self.base, "base")
        check_version(self.version)
        if self.version <= self.base:
            raise ValueError(f"version must be after base, got base {self.base} and version {self.version}")
        check_addresses(self.hosts)
        check_addresses(self.services, "service")
        for name in self.gone:
            if not isinstance(name, str):
                raise ValueError(f"gone must list names, got {name!r}")
            check_name(name)
            if name in self.hosts:
                raise ValueError(f"{name!r} cannot both join and leave in one delta")


@dataclass(frozen=True)
class Resync(Message):
    """agent -> coordinator: a MembersDelta did not follow the version I hold; send the full
    Members. (It should not happen on one TCP session; this keeps a bug from going unnoticed.)"""
    TYPE: ClassVar[str] = "resync"


def check_count(value: int | float, what: str) -> int | float:
    if not 0 <= value < MAX_NUMBER:
        raise ValueError(f"{what} must be 0..2**53, got {value!r}")
    return value


def check_range(value: int | float, what: str, low: float, high: float) -> int | float:
    if not low <= value <= high:  # NaN fails both
        raise ValueError(f"{what} must be {low:g}..{high:g}, got {value!r}")
    return value


def check_report(report: dict[str, Any]) -> dict[str, Any]:
    """A Report's fields (without "t") as the coordinator forwards them to the controller."""
    if "t" in report:
        raise ValueError("report must not hold a 't' field")
    try:
        Report(**_fields(Report, "report", report))
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None
    return report


def check_version(value: int, what: str = "version") -> int:
    if not 0 <= value < 2**53:  # JSON numbers beyond 2**53 lose precision in most parsers
        raise ValueError(f"{what} must be 0..2**53, got {value!r}")
    return value


def check_addresses(table: dict[str, str], what: str = "name") -> dict[str, str]:
    for name, addr in table.items():
        check_name(name, what)
        check_ipv4(addr)
    return table


@dataclass(frozen=True)
class NatReport(Message):
    """agent -> coordinator: how our NAT maps ports, measured against the coordinator's two ports."""
    TYPE: ClassVar[str] = "nat_report"
    mapping: str

    def __post_init__(self) -> None:
        if self.mapping not in NAT_MAPPINGS:
            raise ValueError(f"mapping must be one of {', '.join(NAT_MAPPINGS)}, got {self.mapping!r}")


@dataclass(frozen=True)
class Ping(Message):
    TYPE: ClassVar[str] = "ping"
    seq: int


@dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar[str] = "pong"
    seq: int


@dataclass(frozen=True)
class Beat(Message):
    """agent -> coordinator, every `Registered.beat` seconds, sent from the agent's event loop
    (so it proves the loop runs, not just the process): I am alive. Never answered."""
    TYPE: ClassVar[str] = "beat"


@dataclass(frozen=True)
class Bye(Message):
    """agent -> coordinator: deregister; the agent is stopping."""
    TYPE: ClassVar[str] = "bye"
    reason: str = ""


# --- connection brokering --------------------------------------------------------------------

@dataclass(frozen=True)
class Connect(Message):
    """client agent -> coordinator: connect me to dst_addr:dst_port.

    `ticket` names one of the client's rendezvous connections: the coordinator has observed its
    public endpoint, which is where the peer will aim its SYNs. `warm`: a spare connection made
    ahead of the app's next connect; the server agent holds it until the client's go byte."""
    TYPE: ClassVar[str] = "connect"
    conn: str
    dst_addr: str
    dst_port: int
    src_port: int
    ticket: str
    warm: bool = False

    def __post_init__(self) -> None:
        check_token(self.conn, "conn")
        check_ipv4(self.dst_addr, "dst_addr")
        check_port(self.dst_port, "dst_port")
        check_port(self.src_port, "src_port")
        check_token(self.ticket, "ticket")


@dataclass(frozen=True)
class Incoming(Message):
    """coordinator -> server agent: someone wants dst_port.

    Fast path: `ticket` names one of the server's incoming tickets and `peer` the client's public
    endpoint; the client was told to punch at the same moment, so the server punches at once (or
    refuses); `wrapped_key` and `salt` are then the connection's, as in Punch. Without them, the server
    answers Accept with a ticket of its own, or Refuse, and the Punch that follows brings them."""
    TYPE: ClassVar[str] = "incoming"
    conn: str
    src_addr: str
    src_port: int
    dst_port: int
    ticket: str | None = None
    peer: str | None = None
    mode: str = "direct"
    warm: bool = False
    wrapped_key: str | None = dataclasses.field(default=None, repr=False)
    salt: str | None = None

    def __post_init__(self) -> None:
        check_mode(self.mode)
        check_token(self.conn, "conn")
        check_ipv4(self.src_addr, "src_addr")
        check_port(self.src_port, "src_port")
        check_port(self.dst_port, "dst_port")
        fast = (self.ticket, self.peer, self.wrapped_key, self.salt)
        if any(v is None for v in fast) and any(v is not None for v in fast):
            raise ValueError("ticket, peer, wrapped_key and salt come together or not at all")
        if self.ticket is not None and self.peer is not None and self.wrapped_key is not None \
                and self.salt is not None:
            check_token(self.ticket, "ticket")
            check_endpoint(self.peer, "peer")
            check_key(self.wrapped_key, "wrapped_key")
            check_token(self.salt, "salt")


@dataclass(frozen=True)
class Accept(Message):
    TYPE: ClassVar[str] = "accept"
    conn: str
    ticket: str

    def __post_init__(self) -> None:
        check_token(self.conn, "conn")
        check_token(self.ticket, "ticket")


@dataclass(frozen=True)
class Refuse(Message):
    TYPE: ClassVar[str] = "refuse"
    conn: str
    error: str

    def __post_init__(self) -> None:
        check_token(self.conn, "conn")
        if self.error not in CONNECT_ERRORS:
            raise ValueError(f"error must be one of {', '.join(CONNECT_ERRORS)}, got {self.error!r}")


@dataclass(frozen=True)
class Punch(Message):
    """coordinator -> both agents: open TCP toward `peer` from the ticket's port, now.

    mode "relay": a side's NAT maps each destination to a new port (symmetric), so a punch
    cannot work; both go straight to the relay. With "direct" they fall back to it on a timeout.

    The connection's key, HMAC(secret, "conn:" + conn + "|" + salt), keys the two agents'
    proofs on the path and to the relay, so neither holds the secret. `wrapped_key` (hex) is
    that key wrapped for this message's receiver (auth.wrap_connection_key, under its token):
    the control session is not encrypted, and only the receiver can unwrap it (`key_for`).
    `salt` also goes to the relay."""
    TYPE: ClassVar[str] = "punch"
    conn: str
    role: str
    peer: str
    ticket: str
    wrapped_key: str = dataclasses.field(repr=False)
    salt: str
    mode: str = "direct"

    def __post_init__(self) -> None:
        check_token(self.conn, "conn")
        if self.role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', got {self.role!r}")
        check_endpoint(self.peer, "peer")
        check_token(self.ticket, "ticket")
        check_key(self.wrapped_key, "wrapped_key")
        check_token(self.salt, "salt")
        check_mode(self.mode)

    def key_for(self, token: bytes) -> bytes:
        """The connection's key, unwrapped with the receiver's token (garbage with any other)."""
        return unwrap_connection_key(token, bytes.fromhex(self.wrapped_key), self.conn, self.salt)


@dataclass(frozen=True)
class ConnectFailed(Message):
    """coordinator -> client agent: the connect cannot be made; `error` is the errno name."""
    TYPE: ClassVar[str] = "connect_failed"
    conn: str
    error: str

    def __post_init__(self) -> None:
        check_token(self.conn, "conn")
        if self.error not in CONNECT_ERRORS:
            raise ValueError(f"error must be one of {', '.join(CONNECT_ERRORS)}, got {self.error!r}")


# --- rendezvous connection (opened from the port to be punched) --------------------------------

@dataclass(frozen=True)
class Observe(Message):
    """agent -> coordinator, first frame of a rendezvous connection, sent after its Challenge.

    mac = HMAC(key, observe-proof | challenge nonce | session | ticket), keyed by the credential
    the session authenticated with (an instance's token), binds the ticket to that session and
    to this connection: replayed on another connection (from another
    address, to make a peer punch toward it) it is refused. A ticket id is used once. `purpose`
    keeps the agent's own connects and the coordinator's choice of a ticket for an incoming
    connection from ever racing for one ticket."""
    TYPE: ClassVar[str] = "observe"
    v: int
    session: str
    ticket: str
    mac: str
    purpose: str = "outgoing"

    def __post_init__(self) -> None:
        check_token(self.session, "session")
        check_token(self.ticket, "ticket")
        check_token(self.mac, "mac")
        if self.purpose not in TICKET_PURPOSES:
            raise ValueError(f"purpose must be one of {', '.join(TICKET_PURPOSES)}, got {self.purpose!r}")


@dataclass(frozen=True)
class Observed(Message):
    """coordinator -> agent: this is the public endpoint your rendezvous connection came from."""
    TYPE: ClassVar[str] = "observed"
    endpoint: str

    def __post_init__(self) -> None:
        check_endpoint(self.endpoint)


# --- signals and the controller ----------------------------------------------------------------

@dataclass(frozen=True)
class Report(Message):
    """agent -> coordinator, every second: what the application is doing (never asked of it)."""
    TYPE: ClassVar[str] = "report"
    active: int  # overlay connections open now (both directions)
    accepted: int  # incoming overlay connections since start
    connected: int  # outgoing overlay connections since start
    cpu: float  # percent of one CPU, app process tree, over the last interval
    rss: int  # bytes, app process tree
    listening: list[int]  # ports the app listens on
    idle: float  # seconds without any open connection or CPU use
    direct: int  # connections set up on a direct (punched) path since start
    relayed: int  # ... and through the relay
    first_try: int = 0  # direct connections whose first simultaneous open succeeded
    draining: bool = False
    lifetime_left: float | None = None  # seconds, when the instance has a lifetime cap
    exited: int | None = None  # the app's exit status, in the agent's last report

    def __post_init__(self) -> None:
        for name in ("active", "accepted", "connected", "rss", "direct", "relayed", "first_try"):
            check_count(getattr(self, name), name)
        check_range(self.cpu, "cpu", 0, 1e6)  # percent of one CPU: 10,000 CPUs busy
        check_range(self.idle, "idle", 0, 1e9)
        if self.lifetime_left is not None:
            check_range(self.lifetime_left, "lifetime_left", -1e6, 1e6)
        if self.exited is not None:
            check_range(self.exited, "exited", 0, 255)  # a shell's exit status
        if len(self.listening) > MAX_LISTENING:
            raise ValueError(f"listening lists {len(self.listening)} ports, more than {MAX_LISTENING}")
        for port in self.listening:
            if not isinstance(port, int) or isinstance(port, bool):
                raise ValueError(f"listening ports must be integers, got {port!r}")
            check_port(port, "listening port")


@dataclass(frozen=True)
class Watch(Message):
    """controller -> coordinator, after auth instead of Register: send me the deployment's state
    (a Snapshot), then every InstanceUp/InstanceDown/InstanceReport/Demand as it happens."""
    TYPE: ClassVar[str] = "watch"


@dataclass(frozen=True)
class Snapshot(Message):
    """coordinator -> controller: every instance (name, service, addr, instance, nat, draining,
    quiet, report or null) and the services' virtual addresses."""
    TYPE: ClassVar[str] = "snapshot"
    instances: list[dict[str, Any]]
    services: dict[str, str]

    def __post_init__(self) -> None:
        if len(self.instances) > MAX_SNAPSHOT:
            raise ValueError(f"a snapshot of {len(self.instances)} instances is more than {MAX_SNAPSHOT}")
        for entry in self.instances:
            check_snapshot_entry(entry)
        check_addresses(self.services, "service")


_SNAPSHOT_ENTRY = {"name": str, "service": str, "addr": str, "instance": str, "nat": str,
                   "draining": bool, "quiet": bool}


def check_snapshot_entry(entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ValueError(f"snapshot instances must be objects, got {type(entry).__name__}")
    for key, kind in _SNAPSHOT_ENTRY.items():
        if not isinstance(entry.get(key), kind):
            raise ValueError(f"snapshot instance field {key!r} must be a {kind.__name__}, got {entry.get(key)!r}")
    extra = set(entry) - set(_SNAPSHOT_ENTRY) - {"report"}
    if extra:
        raise ValueError(f"snapshot instance has unknown field(s) {', '.join(sorted(extra))}")
    check_name(entry["name"])
    check_name(entry["service"], "service")
    check_ipv4(entry["addr"])
    report = entry.get("report")
    if report is not None:
        if not isinstance(report, dict):
            raise ValueError(f"snapshot instance report must be an object, got {report!r}")
        check_report(report)
    return entry


@dataclass(frozen=True)
class InstanceUp(Message):
    TYPE: ClassVar[str] = "instance_up"
    name: str
    service: str
    addr: str
    instance: str


@dataclass(frozen=True)
class InstanceDown(Message):
    TYPE: ClassVar[str] = "instance_down"
    name: str
    service: str
    instance: str
    reason: str


@dataclass(frozen=True)
class InstanceReport(Message):
    """coordinator -> controller: an agent's Report, with who sent it."""
    TYPE: ClassVar[str] = "instance_report"
    name: str
    service: str
    instance: str
    report: dict[str, Any]

    def __post_init__(self) -> None:
        check_report(self.report)

    @classmethod
    def of_checked(cls, name: str, service: str, instance: str, report: dict[str, Any]) -> InstanceReport:
        """One the coordinator forwards: its report came from a decoded Report, checked then."""
        message = object.__new__(cls)
        for field, value in (("name", name), ("service", service), ("instance", instance), ("report", report)):
            object.__setattr__(message, field, value)
        return message


@dataclass(frozen=True)
class InstanceQuiet(Message):
    """coordinator -> controller: the instance's agent has sent nothing (no Beat, no frame at all)
    for `silent` seconds (quiet: true), or has been heard from again after that (quiet: false).
    Its session stays open: quiet is a judgement for the controller, not a disconnection."""
    TYPE: ClassVar[str] = "instance_quiet"
    name: str
    service: str
    instance: str
    quiet: bool
    silent: float

    def __post_init__(self) -> None:
        if not 0 <= self.silent < 1e9:
            raise ValueError(f"silent must be >= 0 seconds, got {self.silent!r}")


@dataclass(frozen=True)
class Declare(Message):
    """controller -> coordinator: these services exist (name -> seconds a connect to it may wait
    for a first instance). Their names resolve, to a virtual address, even with no instance."""
    TYPE: ClassVar[str] = "declare"
    services: dict[str, float]

    def __post_init__(self) -> None:
        for name, hold in self.services.items():
            check_name(name, "service")
            if not isinstance(hold, (int, float)) or isinstance(hold, bool) or not 0 <= hold <= 900:
                raise ValueError(f"hold time for {name} must be 0..900 seconds, got {hold!r}")


@dataclass(frozen=True)
class Demand(Message):
    """coordinator -> controller: a connect to `service` is waiting for an instance listening on
    `port` (scale from zero)."""
    TYPE: ClassVar[str] = "demand"
    service: str
    port: int
    waiting: int  # connects held for this service now

    def __post_init__(self) -> None:
        check_port(self.port)
        check_count(self.waiting, "waiting")


@dataclass(frozen=True)
class Drain(Message):
    """controller -> coordinator -> agent: no new connections for `instance`; its agent stops the
    app once its connections are gone or after `grace` seconds."""
    TYPE: ClassVar[str] = "drain"
    instance: str
    grace: float = 30.0

    def __post_init__(self) -> None:
        check_range(self.grace, "grace", 0, MAX_DRAIN_GRACE)


@dataclass(frozen=True)
class Stop(Message):
    """controller -> coordinator -> agent: stop the app now (SIGTERM, then SIGKILL)."""
    TYPE: ClassVar[str] = "stop"
    instance: str
    reason: str = ""


# --- the relay port: NAT probes and relayed connections ------------------------------------------

@dataclass(frozen=True)
class Probe(Message):
    """agent -> relay port: which public endpoint do you see? (answered with Observed)

    With `again_after`, the relay answers a second time after that many idle seconds: if the
    second answer arrives, the NAT kept the mapping through that much idleness."""
    TYPE: ClassVar[str] = "probe"
    v: int
    again_after: int | None = None
    # The relay also connects back to the observed endpoint from a port of its own: a prober
    # listening there learns whether its NAT lets in what it never sent to (filtering).
    call_back: bool = False

    def __post_init__(self) -> None:
        if self.again_after is not None and not 0 < self.again_after <= 3600:
            raise ValueError(f"again_after must be 1..3600 seconds, got {self.again_after}")


@dataclass(frozen=True)
class Relay(Message):
    """agent -> relay port, the only frame: pair me with the other side of `conn`.

    mac = HMAC(connection key, relay-proof | conn | salt | role), the key and salt of the
    connection's Punch; the relay derives the key from conn and salt, and pairs the halves of
    one (conn, salt). After it, the relay splices the two sockets; the agents then authenticate
    end to end exactly as on a direct connection."""
    TYPE: ClassVar[str] = "relay"
    v: int
    conn: str
    salt: str
    role: str
    mac: str

    def __post_init__(self) -> None:
        check_token(self.conn, "conn")
        check_token(self.salt, "salt")
        if self.role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', got {self.role!r}")
        check_token(self.mac, "mac")


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Challenge, Auth, Welcome, Refused, Register, Registered, Error, Members, MembersDelta,
        Resync, Ping, Pong, Beat, Bye, Connect, Incoming, Accept, Refuse, Punch, ConnectFailed,
        Observe, Observed, NatReport, Probe, Relay, Report, Watch, Snapshot, InstanceUp,
        InstanceDown, InstanceReport, InstanceQuiet, Declare, Demand, Drain, Stop,
    )
}

def decode(wire: dict[str, Any]) -> Message:
    """A peer's frame -> a validated message, or ProtocolError saying what was wrong."""
    kind = wire.get("t")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None or not isinstance(kind, str):
        raise ProtocolError(f"unknown message type {str(kind)[:40]!r}")
    kwargs = _fields(cls, kind, wire, skip="t")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"{kind}: {str(exc)[:300]}") from None


def _fields(cls: type[Message], kind: str, wire: dict[str, Any], skip: str | None = None) -> dict[str, Any]:
    """The fields of `cls` from `wire` (all there, of the right type, nothing else but `skip`)."""
    kwargs: dict[str, Any] = {}
    for name, required, check in _schema(cls):
        if name not in wire:
            if required:
                raise ProtocolError(f"{kind}: missing field {name!r}")
            continue
        value = wire[name]
        if not check(value):
            raise ProtocolError(f"{kind}: field {name!r} has the wrong type ({str(value)[:60]})")
        if (type(value) is int or type(value) is float) and not -MAX_NUMBER < value < MAX_NUMBER:
            raise ProtocolError(f"{kind}: field {name!r} must be a finite number of magnitude below 2**53, "
                                f"got {str(value)[:60]}")
        kwargs[name] = value
    if len(wire) != len(kwargs) + (skip is not None):  # anything else is extra
        extra = set(wire) - {skip} - set(kwargs)
        raise ProtocolError(f"{kind}: unknown field(s) {', '.join(sorted(str(e)[:40] for e in extra))}")
    return kwargs


FieldSchema = tuple[tuple[str, bool, Callable[[Any], bool]], ...]
_SCHEMAS: dict[type[Message], FieldSchema] = {}


def _schema(cls: type[Message]) -> FieldSchema:
    """(name, required, type check) of each field of a message class, built once: resolving the
    (postponed) annotations cost ~0.2 ms per message, and interpreting them per value most of a
    decode (a report: 26 us)."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        schema = _SCHEMAS[cls] = tuple(
            (field.name,
             field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING,
             _type_check(hints[field.name]))
            for field in dataclasses.fields(cls)  # type: ignore[arg-type]
        )
    return schema


def _type_check(hint: Any) -> Callable[[Any], bool]:
    """JSON value vs a field's annotation, as a predicate. bool is not an int here, an int is a
    float."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[X] and X | None
        options = tuple(_type_check(arg) for arg in typing.get_args(hint))
        return lambda value: any(check(value) for check in options)
    if hint is type(None):
        return lambda value: value is None
    if hint is bool:
        return lambda value: value is True or value is False
    if hint is float:
        return lambda value: type(value) is float or type(value) is int
    if hint is int:
        return lambda value: type(value) is int
    origin = typing.get_origin(hint) or hint  # dict[str, str] -> dict: elements are __post_init__'s
    if origin in (str, dict, list):
        return lambda value: isinstance(value, origin)
    raise TypeError(f"unsupported field type {hint!r}")


# A Beat as every agent sends it, a few times a second: agents send these bytes as they are,
# and the coordinator compares a read with them to spare the JSON parse (its result would be
# Beat()). Defined once here, beside the message.
BEAT_FRAME = encode_frame(Beat().to_wire())
