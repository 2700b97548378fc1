"""The agent's half of the coordinator protocol, without I/O.

The broker (broker.py) is the coordinator's half; this is the agent's. Each object here is fed
events (a ticket is ready, a message from the coordinator arrived, a path opened or failed, time
passed) and answers with actions (send this, start that path, close this one, the outcome); the
agent's asyncio code (boxer/agent/) only moves bytes and sockets. Time is always passed in
(`now`), and every timer comes from a `Timeouts` given at construction, so the tests drive a
virtual clock and expect exact times and errnos.

  ConnectTransaction    one app connect: a ticket, the coordinator's answer, the paths' race,
                        and another attempt when the failure is one it may not meet
  IncomingTransaction   one connection to our app: refused, or punched and handed over
  PathRace              one connection's paths, direct and relayed, raced like happy eyeballs
  SpareGoals            how many warm spares to keep per target
  Handshake             a control session's first frames: challenge, proofs, registration
  Heartbeat             a control session's beats and pings, and when to give it up

Every legal transition of each machine is in one table; anything else raises IllegalTransition
(our bug, never the peer's: the coordinator's messages are checked by messages.decode()).

The race, and why the client alone chooses. The coordinator tells both agents to punch in the
same instant. Each starts the direct path (a simultaneous open) at once and the relay
`Timeouts.relay_delay` later (at once when the coordinator says `mode: relay`, or when the direct
path fails first). A path is "open" when its TCP connection is: for the relay, that says nothing
of the peer, which may never come. Both sides must end on the same path, so the client chooses:
it sends its 32-byte proof on one path only, the first direct path that opens or the first relay
path on which the server's proof arrives, and closes the other. The server sends its proof on
every path that opens and keeps the one on which the client's proof arrives. Nothing is added to
the wire, and on the common path (the punch through well within the delay) the proofs move
exactly as before: both at once, as soon as the simultaneous open completes.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.wire import ProtocolError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0  # whole overlay connect, from the app's call to a connected socket
    punch: float = 3.0  # the paths' race, proofs included, once the coordinator said go
    # Happy eyeballs: the relay starts this long after the direct path. A punch takes about two
    # round trips between the peers (benchmarks/bench_punch.py: p99 8 ms on the lab's clean
    # links, 44 ms at 10 ms round trip, 225 ms at 100 ms); a lost SYN costs the kernel's 1 s
    # retransmission. 0.25 s (RFC 8305's and trio's default) stays above the first up to ~100 ms
    # round trips, so the relay is rarely started in vain, and well under the second, when the
    # relay should win (docs/architecture.md, "Paths").
    relay_delay: float = 0.25
    # A connect to a service may be held by the coordinator while an instance starts (scale from
    # zero); the coordinator bounds that wait, we only guard against losing it meanwhile.
    service_hold: float = 120.0
    attempts: int = 3  # a connect the app made, at most, before its failure is the app's
    retry_margin: float = 1.0  # no new attempt with less than this left before the deadline
    # A ticket's NAT mapping is kept by its idle rendezvous connection; NATs expire idle mappings
    # (Lambda's is undocumented, a NAT Gateway's is 350 s), so tickets are renewed well before.
    ticket_max_age: float = 20.0
    accept_pickup: float = 10.0  # an accepted connection not fetched by the app by then is dropped


class IllegalTransition(Exception):
    """We misused a state machine: an event its current state does not allow (a bug here or in
    the shell that drives it, never the peer's)."""

    def __init__(self, machine: str, event: str, role: str, state: enum.Enum) -> None:
        super().__init__(f"{machine}: event {event!r} is not legal for the {role} in state {state.value!r}")
        self.event = event
        self.role = role
        self.state = state


# --- the paths' race ----------------------------------------------------------------------------


class Path(enum.Enum):
    DIRECT = "direct"
    RELAY = "relayed"


class PathState(enum.Enum):
    WAITING = "waiting"  # not started yet (the relay during its delay)
    OPENING = "opening"  # punching, or connecting to the relay
    OPEN = "open"  # a TCP connection; the proofs are exchanged on it
    CHOSEN = "chosen"  # the client's proof went on it (the client's direct path only)
    WON = "won"  # authenticated both ways and ours: the app gets it
    FAILED = "failed"
    CLOSED = "closed"  # lost the race, or was never needed


S = PathState
# (state, event) -> next state. "choose" is the client's alone; the rest both roles'.
_PATH_MOVES: dict[tuple[PathState, str], PathState] = {
    (S.WAITING, "start"): S.OPENING,
    (S.WAITING, "close"): S.CLOSED,
    (S.OPENING, "opened"): S.OPEN,
    (S.OPENING, "failed"): S.FAILED,
    (S.OPENING, "close"): S.CLOSED,
    (S.OPEN, "choose"): S.CHOSEN,
    (S.OPEN, "proven"): S.WON,  # server: the client chose it; client: the relay, chosen as proven
    (S.OPEN, "failed"): S.FAILED,  # the peer closed it, or its proof was wrong
    (S.OPEN, "close"): S.CLOSED,
    (S.CHOSEN, "proven"): S.WON,
    (S.CHOSEN, "failed"): S.FAILED,
    (S.CHOSEN, "close"): S.CLOSED,  # the deadline passed before the peer's proof came
    # News from a path we closed or that failed already comes late (its I/O was under way): ignored.
    (S.CLOSED, "opened"): S.CLOSED,
    (S.CLOSED, "failed"): S.CLOSED,
    (S.CLOSED, "proven"): S.CLOSED,
    (S.CLOSED, "close"): S.CLOSED,
    (S.FAILED, "close"): S.FAILED,
}
_CLIENT_ONLY = {"choose"}
del S


@dataclass(frozen=True)
class StartPath:
    path: Path
    deadline: float


@dataclass(frozen=True)
class SendProof:
    path: Path


@dataclass(frozen=True)
class ClosePath:
    path: Path


@dataclass(frozen=True)
class RaceWon:
    path: Path


@dataclass(frozen=True)
class RaceFailed:
    errno: str
    why: str


RaceAction = StartPath | SendProof | ClosePath | RaceWon | RaceFailed


class PathRace:
    """One connection's paths, for one role. `start(now)`, then feed `opened`, `failed`,
    `proven` (the peer's proof on that path verified) and `tick` (at `next_timer()`); the
    outcome is the one RaceWon or RaceFailed action, after which the race takes no more events
    but late news of closed paths."""

    def __init__(self, conn: str, role: str, mode: str, relay_available: bool, timeouts: Timeouts) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role must be client or server, got {role!r}")
        self.conn = conn
        self.role = role
        self.mode = mode
        self.relay_available = relay_available
        self.timeouts = timeouts
        self.states = {Path.DIRECT: PathState.WAITING, Path.RELAY: PathState.WAITING}
        self.errors: dict[Path, str] = {}
        self.started_at: float | None = None
        self.deadline = float("inf")
        self.relay_at: float | None = None  # when the relay starts, if it is still waiting
        self.outcome: RaceWon | RaceFailed | None = None
        self.history: list[tuple[float, Path, PathState]] = []  # (when, path, new state)

    def set_state(self, path: Path, event: str, now: float) -> None:
        old = self.states[path]
        new = _PATH_MOVES.get((old, event))
        if new is None or (event in _CLIENT_ONLY and self.role != "client"):
            raise IllegalTransition(f"path race {self.conn} ({path.value})", event, self.role, old)
        if new is not old:
            self.states[path] = new
            self.history.append((now, path, new))
            log.debug("%s %s %s: %s -> %s on %s at +%.1f ms", self.conn, self.role, path.value, old.value,
                      new.value, event, (now - (self.started_at or now)) * 1e3)

    def start(self, now: float) -> list[RaceAction]:
        if self.started_at is not None:
            raise IllegalTransition(f"path race {self.conn}", "start", self.role, self.states[Path.DIRECT])
        self.started_at = now
        self.deadline = now + self.timeouts.punch
        actions: list[RaceAction] = []
        if self.mode == "relay" and self.relay_available:
            # A symmetric NAT on one side: no punch can work, so not even tried.
            self.set_state(Path.DIRECT, "close", now)
            return self._start(Path.RELAY, now)
        actions += self._start(Path.DIRECT, now)
        if self.relay_available:
            self.relay_at = now + self.timeouts.relay_delay
        else:
            self.set_state(Path.RELAY, "close", now)
        return actions

    def next_timer(self) -> float | None:
        """When to call tick(): the relay's start, or the deadline; None once decided."""
        if self.outcome is not None:
            return None
        return min(self.deadline, self.relay_at) if self.relay_at is not None else self.deadline

    def tick(self, now: float) -> list[RaceAction]:
        if self.outcome is not None:
            return []
        if now >= self.deadline:
            return self._fail_all("ETIMEDOUT", f"no path within {self.timeouts.punch:g} s", now)
        if self.relay_at is not None and now >= self.relay_at and self.states[Path.RELAY] is PathState.WAITING:
            return self._start(Path.RELAY, now)
        return []

    def opened(self, path: Path, now: float) -> list[RaceAction]:
        self._check_running("opened", path, now)
        self.set_state(path, "opened", now)
        if self.states[path] is PathState.CLOSED:
            return [ClosePath(path)]  # lost the race while it was opening: its socket goes too
        if self.role == "server":
            return [SendProof(path)]  # the client decides; its proof arrives on the path it chose
        if path is Path.DIRECT:
            # The client chooses the first direct path that opens: our proof goes on it alone.
            self.set_state(path, "choose", now)
            return [SendProof(path), *self._close_others(path, now)]
        return []  # a relay connection says nothing of the peer until its proof comes through

    def proven(self, path: Path, now: float) -> list[RaceAction]:
        self._check_running("proven", path, now)
        if self.states[path] is PathState.CLOSED:
            return []
        actions: list[RaceAction] = []
        if self.role == "client" and self.states[path] is PathState.OPEN:
            actions.append(SendProof(path))  # the relay, proven first: chosen now
        self.set_state(path, "proven", now)
        return [*actions, *self._close_others(path, now), self._decide(RaceWon(path))]

    def failed(self, path: Path, errno: str, now: float) -> list[RaceAction]:
        self._check_running("failed", path, now)
        if self.states[path] is PathState.CLOSED:
            return []
        chosen = self.states[path] is PathState.CHOSEN
        self.set_state(path, "failed", now)
        self.errors[path] = errno
        if chosen:
            # Our proof went on it: the server may be taking it; no other path can be agreed on now.
            return self._fail_all(errno, f"the chosen {path.value} path failed", now)
        if self.states[Path.RELAY] is PathState.WAITING:
            return self._start(Path.RELAY, now)  # the direct path failed early: no need to wait
        if all(state in (PathState.FAILED, PathState.CLOSED) for state in self.states.values()):
            # An authentication failure says more than a timeout on the other path.
            error = "ECONNABORTED" if "ECONNABORTED" in self.errors.values() else errno
            return [self._decide(RaceFailed(error, "every path failed"))]
        return []

    def _check_running(self, event: str, path: Path, now: float) -> None:
        if self.outcome is not None and self.states[path] is not PathState.CLOSED:
            raise IllegalTransition(f"path race {self.conn} ({path.value}), decided", event, self.role,
                                    self.states[path])

    def _start(self, path: Path, now: float) -> list[RaceAction]:
        self.set_state(path, "start", now)
        if path is Path.RELAY:
            self.relay_at = None
        return [StartPath(path, self.deadline)]

    def _close_others(self, keep: Path, now: float) -> list[RaceAction]:
        actions: list[RaceAction] = []
        for path, state in self.states.items():
            if path is keep or state in (PathState.CLOSED, PathState.FAILED):
                continue
            self.set_state(path, "close", now)
            if state is not PathState.WAITING:
                actions.append(ClosePath(path))
        self.relay_at = None
        return actions

    def _fail_all(self, errno: str, why: str, now: float) -> list[RaceAction]:
        actions: list[RaceAction] = []
        for path, state in self.states.items():
            if state in (PathState.CLOSED, PathState.FAILED):
                continue
            self.set_state(path, "close", now)
            if state is not PathState.WAITING:
                actions.append(ClosePath(path))
        self.relay_at = None
        return [*actions, self._decide(RaceFailed(errno, why))]

    def _decide(self, outcome: RaceWon | RaceFailed) -> RaceWon | RaceFailed:
        self.outcome = outcome
        return outcome


# --- one app connect ----------------------------------------------------------------------------


class ConnectState(enum.Enum):
    WAIT_TICKET = "wait-ticket"  # for the link to be up and a ticket of its session
    ASKED = "asked"  # Connect sent; waiting for Punch or ConnectFailed
    PUNCHING = "punching"  # the paths race; a late refusal may still end the attempt
    CONNECTED = "connected"
    FAILED = "failed"


C = ConnectState
_CONNECT_MOVES: dict[tuple[ConnectState, str], ConnectState] = {
    (C.WAIT_TICKET, "ticket"): C.ASKED,
    (C.ASKED, "punch"): C.PUNCHING,
    (C.ASKED, "refused"): C.WAIT_TICKET,  # another attempt (or FAILED: see _attempt_failed)
    (C.PUNCHING, "refused"): C.WAIT_TICKET,
    (C.PUNCHING, "race_failed"): C.WAIT_TICKET,
    (C.PUNCHING, "race_won"): C.CONNECTED,
    (C.WAIT_TICKET, "give_up"): C.FAILED,
    (C.ASKED, "give_up"): C.FAILED,
    (C.PUNCHING, "give_up"): C.FAILED,
}
del C


@dataclass(frozen=True)
class TakeTicket:
    """Wait for the link (until `deadline`), then take a ticket of its session; report it with
    ticket(), or link_down() / local_error()."""
    deadline: float


@dataclass(frozen=True)
class SendMessage:
    message: m.Message


@dataclass(frozen=True)
class Punch:
    """Run a PathRace for this Punch from the ticket's port."""
    punch: m.Punch
    local_port: int


@dataclass(frozen=True)
class Abandon:
    """The attempt on `conn` is over: stop its race (if any) and close its ticket."""
    conn: str


@dataclass(frozen=True)
class Connected:
    conn: str
    path: Path
    local_port: int
    attempts: int


@dataclass(frozen=True)
class Failed:
    errno: str
    why: str


ConnectAction = TakeTicket | SendMessage | Punch | Abandon | Connected | Failed


class ConnectTransaction:
    """One connect the app made to another instance (or a spare made for it). begin(), then feed
    ticket(), message() (Punch/ConnectFailed for the current conn), race_won()/race_failed(),
    link_down(), local_error(), and tick() at next_timer(). Ends with one Connected or Failed."""

    role = "client"

    def __init__(self, addr: str, port: int, service: bool, timeouts: Timeouts, warm: bool = False,
                 new_token: Callable[[], str] = auth.new_token) -> None:
        self.addr = addr
        self.port = port
        self.service = service
        self.warm = warm
        self.timeouts = timeouts
        self.new_token = new_token
        self.state = ConnectState.WAIT_TICKET
        self.attempt = 0
        self.conn: str | None = None  # the current attempt's connection id
        self.local_port: int | None = None
        self.began = 0.0
        self.deadline = float("inf")
        self.outcome: Connected | Failed | None = None
        self.errors: list[tuple[float, str]] = []  # (when, errno) of each failed attempt

    def _move(self, event: str) -> None:
        new = _CONNECT_MOVES.get((self.state, event))
        if new is None:
            raise IllegalTransition(f"connect to {self.addr}:{self.port}", event, self.role, self.state)
        self.state = new

    def begin(self, now: float) -> list[ConnectAction]:
        if self.attempt:
            raise IllegalTransition(f"connect to {self.addr}:{self.port}", "begin", self.role, self.state)
        wait = self.timeouts.connect + (self.timeouts.service_hold if self.service else 0.0)
        self.began = now
        self.deadline = now + wait
        self.attempt = 1
        return [TakeTicket(self.deadline)]

    def next_timer(self) -> float | None:
        return None if self.outcome is not None else self.deadline

    def tick(self, now: float) -> list[ConnectAction]:
        if self.outcome is not None or now < self.deadline:
            return []
        return self._give_up("ETIMEDOUT", f"no connection within {self.deadline - self.began:g} s")

    def ticket(self, ticket: str, local_port: int, now: float) -> list[ConnectAction]:
        self._move("ticket")
        self.conn = self.new_token()
        self.local_port = local_port
        return [SendMessage(m.Connect(conn=self.conn, dst_addr=self.addr, dst_port=self.port, src_port=local_port,
                                      ticket=ticket, warm=self.warm))]

    def message(self, msg: m.Message, now: float) -> list[ConnectAction]:
        """A coordinator message about our current connection id (Punch or ConnectFailed)."""
        if self.outcome is not None or getattr(msg, "conn", None) != self.conn:
            return []  # about an attempt given up already
        if isinstance(msg, m.Punch):
            self._move("punch")
            assert self.local_port is not None
            return [Punch(msg, self.local_port)]
        if isinstance(msg, m.ConnectFailed):
            self._move("refused")
            return self._attempt_failed(msg.error, now)
        raise IllegalTransition(f"connect to {self.addr}:{self.port}", msg.TYPE, self.role, self.state)

    def race_won(self, path: Path, now: float) -> list[ConnectAction]:
        self._move("race_won")
        assert self.conn is not None and self.local_port is not None
        self.outcome = Connected(self.conn, path, self.local_port, self.attempt)
        return [self.outcome]

    def race_failed(self, errno: str, now: float) -> list[ConnectAction]:
        self._move("race_failed")
        return self._attempt_failed(errno, now)

    def link_down(self, now: float) -> list[ConnectAction]:
        return self._give_up("ENETUNREACH", "the coordinator is unreachable")

    def local_error(self, errno: str, now: float) -> list[ConnectAction]:
        """Our own resources failed (ports, descriptors): the app sees a plain failure."""
        return self._give_up("ECONNABORTED" if errno == "EADDRINUSE" else errno, "a local resource failed")

    def _attempt_failed(self, errno: str, now: float) -> list[ConnectAction]:
        self.errors.append((now, errno))
        assert self.conn is not None
        done = Abandon(self.conn)
        if (self.attempt < self.timeouts.attempts and now <= self.deadline - self.timeouts.retry_margin
                and worth_another_try(errno, self.service)):
            self.attempt += 1
            log.info("connect to %s:%d: %s; trying again (attempt %d)", self.addr, self.port, errno, self.attempt)
            return [done, TakeTicket(self.deadline)]
        self._move("give_up")
        self.outcome = Failed(errno, f"after {self.attempt} attempt(s)")
        return [done, self.outcome]

    def _give_up(self, errno: str, why: str) -> list[ConnectAction]:
        if self.outcome is not None:
            return []
        self._move("give_up")
        self.outcome = Failed(errno, why)
        return [*([Abandon(self.conn)] if self.conn else []), self.outcome]


def worth_another_try(error: str, service: bool) -> bool:
    """A failed connect the app need not see, because another may succeed: ECONNABORTED (a
    ticket retired, or a peer's rendezvous connection lost, at that very moment) and, to a
    service, EHOSTUNREACH (the instance the coordinator chose went away while the connection
    was set up: stopped after a drain, or crashed; the next connect goes to another one)."""
    return error == "ECONNABORTED" or (service and error == "EHOSTUNREACH")


# --- one connection to our app ------------------------------------------------------------------


class IncomingState(enum.Enum):
    NEW = "new"
    CLAIMING = "claiming"  # the ticket we deposited, which the coordinator gave the client
    TAKING = "taking"  # no deposited ticket: one of ours, for an Accept
    ACCEPTED = "accepted"  # Accept sent; waiting for Punch
    PUNCHING = "punching"
    DELIVERED = "delivered"  # handed to the fast path (woken, or held as a client's spare)
    REFUSED = "refused"
    FAILED = "failed"


I = IncomingState  # noqa: E741
_INCOMING_MOVES: dict[tuple[IncomingState, str], IncomingState] = {
    (I.NEW, "refuse"): I.REFUSED,
    (I.NEW, "claim"): I.CLAIMING,
    (I.NEW, "take"): I.TAKING,
    (I.CLAIMING, "ticket"): I.PUNCHING,
    (I.CLAIMING, "no_ticket"): I.REFUSED,
    (I.TAKING, "ticket"): I.ACCEPTED,
    (I.ACCEPTED, "punch"): I.PUNCHING,
    (I.ACCEPTED, "other"): I.FAILED,
    (I.PUNCHING, "race_won"): I.DELIVERED,
    (I.PUNCHING, "race_failed"): I.FAILED,
    (I.CLAIMING, "give_up"): I.FAILED,
    (I.TAKING, "give_up"): I.FAILED,
    (I.ACCEPTED, "give_up"): I.FAILED,
    (I.PUNCHING, "give_up"): I.FAILED,
}
del I


@dataclass(frozen=True)
class ClaimTicket:
    """Wait for the deposited ticket `ticket`; report it with ticket() or no_ticket()."""
    ticket: str


@dataclass(frozen=True)
class ReleaseTicket:
    """A deposited ticket the coordinator used for a connection we refuse: close it."""
    ticket: str


@dataclass(frozen=True)
class Deliver:
    """Hand the won path to the fast path: hold it (a client's spare) or wake the app."""
    path: Path
    warm: bool


IncomingAction = TakeTicket | ClaimTicket | ReleaseTicket | SendMessage | Punch | Deliver | Abandon | Failed


class IncomingTransaction:
    """One Incoming from the coordinator. begin(listening, spares_full) decides at once whether
    it is refused; then feed ticket()/no_ticket(), message() (the Punch after our Accept),
    race_won()/race_failed(), and tick() at next_timer()."""

    role = "server"

    def __init__(self, msg: m.Incoming, timeouts: Timeouts) -> None:
        self.msg = msg
        self.timeouts = timeouts
        self.state = IncomingState.NEW
        self.deadline = float("inf")
        self.local_port: int | None = None
        self.outcome: Deliver | Failed | None = None

    def _move(self, event: str) -> None:
        new = _INCOMING_MOVES.get((self.state, event))
        if new is None:
            raise IllegalTransition(f"incoming {self.msg.conn}", event, self.role, self.state)
        self.state = new

    def begin(self, listening: bool, spares_full: bool, now: float) -> list[IncomingAction]:
        msg = self.msg
        release: list[IncomingAction] = [ReleaseTicket(msg.ticket)] if msg.ticket is not None else []
        if msg.warm and spares_full:
            return self._refuse("ECONNABORTED", release)
        if not listening:
            return self._refuse("ECONNREFUSED", release)
        self.deadline = now + self.timeouts.connect
        if msg.ticket is not None and msg.peer is not None:
            self._move("claim")
            return [ClaimTicket(msg.ticket)]
        self._move("take")
        return [TakeTicket(self.deadline)]

    def _refuse(self, error: str, release: list[IncomingAction]) -> list[IncomingAction]:
        self._move("refuse")
        self.outcome = Failed(error, "refused")
        return [SendMessage(m.Refuse(conn=self.msg.conn, error=error)), *release, self.outcome]

    def next_timer(self) -> float | None:
        return None if self.outcome is not None or self.state is IncomingState.NEW else self.deadline

    def tick(self, now: float) -> list[IncomingAction]:
        if self.outcome is not None or now < self.deadline:
            return []
        return self._give_up("ETIMEDOUT", "no punch in time")

    def ticket(self, ticket: str, local_port: int, now: float) -> list[IncomingAction]:
        claimed = self.state is IncomingState.CLAIMING
        self._move("ticket")
        self.local_port = local_port
        if claimed:
            msg = self.msg
            assert msg.peer is not None
            assert msg.wrapped_key is not None and msg.salt is not None  # (they come with peer: messages.Incoming)
            # Wrapped for us, as the Punch would have been: the agent unwraps either the same way.
            punch = m.Punch(conn=msg.conn, role="server", peer=msg.peer, ticket=ticket, wrapped_key=msg.wrapped_key,
                            salt=msg.salt, mode=msg.mode)
            return [Punch(punch, local_port)]
        return [SendMessage(m.Accept(conn=self.msg.conn, ticket=ticket))]

    def no_ticket(self, now: float) -> list[IncomingAction]:
        """The deposited ticket's rendezvous connection died meanwhile."""
        self._move("no_ticket")
        self.outcome = Failed("ECONNABORTED", "the deposited ticket is gone")
        return [SendMessage(m.Refuse(conn=self.msg.conn, error="ECONNABORTED")), self.outcome]

    def message(self, msg: m.Message, now: float) -> list[IncomingAction]:
        """The coordinator's answer to our Accept; anything later about the connection is late news."""
        if self.outcome is not None or self.state is IncomingState.PUNCHING:
            return []
        if isinstance(msg, m.Punch):
            self._move("punch")
            assert self.local_port is not None
            return [Punch(msg, self.local_port)]
        self._move("other")  # the coordinator gave the connect up (ConnectFailed)
        self.outcome = Failed(getattr(msg, "error", "ECONNABORTED"), f"{msg.TYPE} instead of punch")
        return [Abandon(self.msg.conn), self.outcome]

    def race_won(self, path: Path, now: float) -> list[IncomingAction]:
        self._move("race_won")
        self.outcome = Deliver(path, self.msg.warm)
        return [Abandon(self.msg.conn), self.outcome]

    def race_failed(self, errno: str, now: float) -> list[IncomingAction]:
        self._move("race_failed")
        self.outcome = Failed(errno, "no path")
        return [Abandon(self.msg.conn), self.outcome]

    def _give_up(self, errno: str, why: str) -> list[IncomingAction]:
        if self.outcome is not None:
            return []
        self._move("give_up")
        self.outcome = Failed(errno, why)
        return [Abandon(self.msg.conn), self.outcome]

    def link_down(self, now: float) -> list[IncomingAction]:
        return self._give_up("ENETUNREACH", "the coordinator is unreachable")


# --- warm spares --------------------------------------------------------------------------------

Target = tuple[str, int]


@dataclass
class SpareGoals:
    """How many warm spares to keep per (peer, port): `initial` at first, one more each time the
    app connects there while the spare is still being remade, up to `most`."""

    initial: int = 1
    most: int = 4
    goals: dict[Target, int] = field(default_factory=dict)
    making: set[Target] = field(default_factory=set)  # targets with a maker running

    def missed(self, target: Target) -> None:
        """The app connected with no spare there (the fast path would have used one)."""
        if target in self.making:
            self.goals[target] = min(self.most, self.goals.get(target, self.initial) + 1)

    def wanted(self, target: Target, have: int) -> int:
        if self.initial <= 0:
            return 0
        return self.goals.get(target, self.initial) - have

    def should_start(self, target: Target, have: int) -> bool:
        """True (and the maker counted as running) if spares are wanted and none is being made."""
        if self.wanted(target, have) <= 0 or target in self.making:
            return False
        self.making.add(target)
        return True

    def done(self, target: Target) -> None:
        self.making.discard(target)


# --- the control session's beats and pings ------------------------------------------------------


@dataclass(frozen=True)
class SendBeat:
    """A Beat (the coordinator's proof that our event loop runs; never answered)."""


@dataclass(frozen=True)
class SendPing:
    seq: int


@dataclass(frozen=True)
class LinkLost:
    why: str


HeartbeatAction = SendBeat | SendPing | LinkLost


class Heartbeat:
    """What the link sends on its control session, and when it gives the session up.

    A Beat every `beat` seconds (as the coordinator asked in Registered; None: none), a Ping
    instead every `ping_interval` (the coordinator answers it: a coordinator gone without a
    FIN/RST is noticed after `silence` seconds without a frame). A tick that comes more than a
    ping interval and a second late means we were frozen (Lambda freezes sandboxes between
    invocations; SIGSTOP does the same): our NAT mappings have likely expired, so the session is
    given up at once. `stalled` is the kernel's view (the link's TCP_INFO check)."""

    def __init__(self, beat: float | None, ping_interval: float, silence: float, now: float) -> None:
        self.beat = beat
        self.ping_interval = ping_interval
        self.silence = silence
        self.step = min(beat, ping_interval) if beat else ping_interval
        self.last_heard = now
        self.last_tick = now
        self.next_ping = now + ping_interval
        self.seq = 0

    def heard(self, now: float) -> None:
        """Any frame from the coordinator."""
        self.last_heard = now

    def next_timer(self) -> float:
        return self.last_tick + self.step

    def tick(self, now: float, stalled: bool = False) -> list[HeartbeatAction]:
        slept, self.last_tick = now - self.last_tick, now
        if slept - self.step > self.ping_interval + 1.0:
            return [LinkLost(f"frozen for about {slept:.0f} s")]
        if now - self.last_heard > self.silence:
            return [LinkLost(f"no word from the coordinator for {self.silence:g} s")]
        if stalled:
            return [LinkLost("our frames to the coordinator go unacknowledged (the path is cut)")]
        if now >= self.next_ping - self.step / 2:  # (a timer may fire a hair early)
            self.seq += 1
            self.next_ping = now + self.ping_interval
            return [SendPing(self.seq)]
        return [SendBeat()] if self.beat else []


# --- the control session's handshake ------------------------------------------------------------


class HandshakeState(enum.Enum):
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_WELCOME = "await-welcome"  # Auth sent: the coordinator must prove it holds the secret too
    AWAIT_REGISTERED = "await-registered"  # Register sent
    AWAIT_MEMBERS = "await-members"  # registered; the full membership comes next
    AWAIT_SNAPSHOT = "await-snapshot"  # Watch sent (the controller's session)
    DONE = "done"


class HandshakeRefused(Exception):
    """The coordinator refused us, or the peer is not our coordinator. The message says which."""


@dataclass(frozen=True)
class Authenticated:
    """Both sides proved they hold the deployment secret (and nothing was asked next)."""
    welcome: m.Welcome


@dataclass(frozen=True)
class Joined:
    """Registered, with the full membership the session's deltas apply to."""
    session: str
    registered: m.Registered
    members: m.Members


@dataclass(frozen=True)
class Watching:
    snapshot: m.Snapshot


HandshakeAction = SendMessage | Authenticated | Joined | Watching

H = HandshakeState
# (state, message type) -> the handler's name. Messages not listed are ignored in the states
# marked patient (the coordinator may send others meanwhile) and break the protocol elsewhere.
_HANDSHAKE_MOVES: dict[tuple[HandshakeState, str], str] = {
    (H.AWAIT_CHALLENGE, m.Challenge.TYPE): "_on_challenge",
    (H.AWAIT_WELCOME, m.Welcome.TYPE): "_on_welcome",
    (H.AWAIT_WELCOME, m.Refused.TYPE): "_on_refused",
    (H.AWAIT_REGISTERED, m.Registered.TYPE): "_on_registered",
    (H.AWAIT_REGISTERED, m.Error.TYPE): "_on_registration_error",
    (H.AWAIT_MEMBERS, m.Members.TYPE): "_on_members",
    (H.AWAIT_MEMBERS, m.Error.TYPE): "_on_registration_error",
    (H.AWAIT_SNAPSHOT, m.Snapshot.TYPE): "_on_snapshot",
    (H.AWAIT_SNAPSHOT, m.Error.TYPE): "_on_watch_refused",
    (H.AWAIT_SNAPSHOT, m.Refused.TYPE): "_on_watch_refused",
}
_PATIENT = {H.AWAIT_REGISTERED, H.AWAIT_MEMBERS, H.AWAIT_SNAPSHOT}
_EXPECTED = {H.AWAIT_CHALLENGE: "a challenge", H.AWAIT_WELCOME: "welcome"}
del H


class Handshake:
    """The first frames of a control session: the coordinator's Challenge, our Auth (HMAC over
    both nonces, keyed by the role's credential: an instance's token, which the controller
    issued, with `Auth.instance` its id; the deployment secret for the controller), its Welcome
    (its proof, checked here: only who holds the secret can derive the token), then `then`:
    a Register (an agent: ends with Joined once Registered and the full Members came), a Watch
    (the controller: ends with Watching and the first Snapshot), or nothing (Authenticated).

    The peer breaking the protocol raises ProtocolError; a refusal, or a peer without the
    secret, HandshakeRefused; feeding it after it ended, IllegalTransition."""

    role = "agent"

    def __init__(self, credential: auth.Credential, where: str, then: m.Register | m.Watch | None,
                 new_token: Callable[[], str] = auth.new_token) -> None:
        self.credential = credential
        self.where = where
        self.then = then
        self.new_token = new_token
        self.state = HandshakeState.AWAIT_CHALLENGE
        self._nonce = ""
        self._challenge = ""
        self._session = ""
        self._registered: m.Registered | None = None

    def receive(self, msg: m.Message) -> list[HandshakeAction]:
        if self.state is HandshakeState.DONE:
            raise IllegalTransition("handshake", msg.TYPE, self.role, self.state)
        handler = _HANDSHAKE_MOVES.get((self.state, msg.TYPE))
        if handler is None:
            if self.state in _PATIENT:
                return []
            raise ProtocolError(f"expected {_EXPECTED[self.state]}, got {msg.TYPE}")
        actions: list[HandshakeAction] = getattr(self, handler)(msg)
        return actions

    @property
    def _instance(self) -> str | None:
        return self.credential.instance

    @property
    def _key(self) -> bytes:
        """The role's credential: an instance's token (it may register that instance only), or
        the deployment secret itself (the controller)."""
        return self.credential.key

    def _on_challenge(self, msg: m.Challenge) -> list[HandshakeAction]:
        self._challenge = msg.nonce
        self._nonce = self.new_token()
        self.state = HandshakeState.AWAIT_WELCOME
        return [SendMessage(m.Auth(v=m.PROTOCOL_VERSION, nonce=self._nonce, instance=self._instance,
                                   mac=auth.mac(self._key, auth.AGENT_PROOF, msg.nonce, self._nonce)))]

    def _on_welcome(self, msg: m.Welcome) -> list[HandshakeAction]:
        expected = auth.mac(self._key, auth.COORDINATOR_PROOF, self._nonce, self._challenge)
        if not auth.verify(expected, msg.mac):
            raise HandshakeRefused(f"the peer at {self.where} does not hold the deployment secret (its proof "
                                   "does not match our credential): not our coordinator")
        self._session = msg.session
        if self.then is None:
            self.state = HandshakeState.DONE
            return [Authenticated(msg)]
        self.state = (HandshakeState.AWAIT_REGISTERED if isinstance(self.then, m.Register)
                      else HandshakeState.AWAIT_SNAPSHOT)
        return [SendMessage(self.then)]

    def _on_refused(self, msg: m.Refused) -> list[HandshakeAction]:
        raise HandshakeRefused(f"the coordinator at {self.where} refused us: {msg.reason}")

    def _on_registered(self, msg: m.Registered) -> list[HandshakeAction]:
        self._registered = msg
        self.state = HandshakeState.AWAIT_MEMBERS
        return []

    def _on_registration_error(self, msg: m.Error) -> list[HandshakeAction]:
        raise HandshakeRefused(f"registration refused: {msg.reason}")

    def _on_members(self, msg: m.Members) -> list[HandshakeAction]:
        # The coordinator sends the full membership, including us, right after Registered.
        assert self._registered is not None
        self.state = HandshakeState.DONE
        return [Joined(self._session, self._registered, msg)]

    def _on_snapshot(self, msg: m.Snapshot) -> list[HandshakeAction]:
        self.state = HandshakeState.DONE
        return [Watching(msg)]

    def _on_watch_refused(self, msg: m.Error | m.Refused) -> list[HandshakeAction]:
        raise HandshakeRefused(f"the coordinator refused to be watched: {msg.reason}")
