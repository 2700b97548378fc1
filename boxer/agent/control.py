"""The agent's control session with the coordinator, and its rendezvous connections.

`open_session` authenticates (mutual challenge-response) and registers, as the sans-IO
boxer.nat_traversal.client.Handshake says; `ControlSession` then reads the coordinator's
messages and hands each to a callback. `open_ticket` opens a rendezvous
connection from a fresh local port, so the coordinator learns that port's public endpoint; the
connection stays open because it holds the NAT mapping the punch will reuse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.client import (
    Authenticated,
    Handshake,
    HandshakeAction,
    HandshakeRefused,
    Joined,
    SendMessage,
    Watching,
)
from boxer.nat_traversal.wire import MAX_DOWNSTREAM_FRAME, FrameDecoder, FrameError, ProtocolError, encode_frame

log = logging.getLogger(__name__)


class CoordinatorError(Exception):
    """The coordinator cannot be reached, or refused us. The message says which and what to do."""


def parse_endpoint(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


class FramedSocket:
    """A non-blocking TCP socket carrying protocol frames, driven by the event loop."""

    MAX_RECEIVE = MAX_DOWNSTREAM_FRAME  # we talk to the coordinator, whose frames grow with the fleet

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._decoder = FrameDecoder(self.MAX_RECEIVE)
        self._loop = asyncio.get_running_loop()

    async def send(self, message: m.Message) -> None:
        await self._loop.sock_sendall(self.sock, encode_frame(message.to_wire()))

    async def send_frame(self, frame: bytes) -> None:
        """An already encoded frame (one sent often, like a Beat)."""
        await self._loop.sock_sendall(self.sock, frame)

    async def receive(self) -> m.Message:
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return m.decode(frame)
            data = await self._loop.sock_recv(self.sock, 65536)
            if not data:
                raise ConnectionResetError("the coordinator closed the connection")
            self._decoder.receive_data(data)

    async def receive_skipping(self, skipped: Callable[[ProtocolError], None]) -> m.Message:
        """The next message that decodes. A frame that arrived whole but is malformed is handed
        to `skipped` and passed over: the stream is still in step, and one bad frame from an
        authenticated coordinator (a bug, a newer version) must not cost the session. A broken
        framing (FrameError) still raises."""
        while True:
            try:
                return await self.receive()
            except FrameError:
                raise
            except ProtocolError as exc:
                skipped(exc)

    def close(self) -> None:
        self.sock.close()


async def _connect(coordinator: tuple[str, int], reusable_port: bool, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if reusable_port:
            # The punched connection will later leave from this same port while this one keeps
            # the NAT mapping alive: both need SO_REUSEADDR and SO_REUSEPORT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("0.0.0.0", 0))
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, coordinator), timeout)
        return sock
    except BaseException:
        sock.close()
        raise


@dataclass
class Registration:
    session: str
    name: str
    addr: str
    prefix: str
    relay_port: int | None = None
    beat: float | None = None  # seconds between the Beats the coordinator wants; None: none


class ControlSession:
    def __init__(self, framed: FramedSocket, registration: Registration, snapshot: m.Members):
        self.framed = framed
        self.skipped = 0  # malformed frames passed over on this session
        self.registration = registration
        # The full membership the coordinator sent after Registered; its deltas follow on this
        # session, each applying only to the version before it.
        self.snapshot = snapshot

    @property
    def members(self) -> dict[str, str]:
        return self.snapshot.hosts

    @property
    def services(self) -> dict[str, str]:
        return self.snapshot.services

    async def send(self, message: m.Message) -> None:
        await self.framed.send(message)

    async def send_frame(self, frame: bytes) -> None:
        await self.framed.send_frame(frame)

    async def dispatch_forever(self, handle: Callable[[m.Message], Awaitable[None] | None]) -> None:
        """Hands every message to `handle` until the connection ends (then raises)."""
        while True:
            message = await self.framed.receive_skipping(self._skip)
            try:
                result = handle(message)
                if result is not None:
                    await result
            except Exception:  # a bug handling one message must not cost the session
                log.exception("error while handling %s from the coordinator", message.TYPE)

    def _skip(self, exc: ProtocolError) -> None:
        self.skipped += 1
        log.warning("skipped a malformed frame from the coordinator: %s", exc)

    def close(self) -> None:
        self.framed.close()


async def open_session(coordinator: tuple[str, int], credential: auth.Credential, register: m.Register,
                       timeout: float = 5.0) -> ControlSession:
    """A registered control session: authenticated with `credential` (the instance's token; the
    coordinator lets it register that instance only)."""
    where = f"{coordinator[0]}:{coordinator[1]}"
    try:
        sock = await _connect(coordinator, False, timeout)
    except asyncio.TimeoutError:
        raise CoordinatorError(f"cannot reach the coordinator at {where}: no answer within {timeout:g} s "
                               "(check --coordinator / BOXER_COORDINATOR and that it is running)") from None
    except OSError as exc:
        raise CoordinatorError(f"cannot reach the coordinator at {where}: {exc.strerror or exc} "
                               "(check --coordinator / BOXER_COORDINATOR and that it is running)") from None
    framed = FramedSocket(sock)
    try:
        return await asyncio.wait_for(_handshake(framed, credential, register, where), timeout)
    except asyncio.TimeoutError:
        framed.close()
        raise CoordinatorError(f"the coordinator at {where} did not complete the handshake within "
                               f"{timeout:g} s") from None
    except (ProtocolError, OSError) as exc:
        framed.close()
        raise CoordinatorError(f"handshake with the coordinator at {where} failed: {exc}") from None
    except BaseException:
        framed.close()
        raise


async def open_controller_session(coordinator: tuple[str, int], secret: bytes,
                                  timeout: float = 5.0) -> tuple[FramedSocket, m.Snapshot]:
    """The controller's session: authenticated like an agent's, then Watch instead of Register.

    Returns the framed socket (send Declare/Drain/Stop on it; receive InstanceUp/InstanceDown/
    InstanceReport/Demand/Members/Pong from it) and the first Snapshot."""
    where = f"{coordinator[0]}:{coordinator[1]}"
    try:
        sock = await _connect(coordinator, False, timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise CoordinatorError(f"cannot reach the coordinator at {where}: {exc or 'timed out'}") from None
    framed = FramedSocket(sock)
    try:
        watching = await asyncio.wait_for(_run(framed, Handshake(auth.Credential.controller(secret), where,
                                                                 m.Watch())), timeout)
        assert isinstance(watching, Watching)
        return framed, watching.snapshot
    except HandshakeRefused as exc:
        framed.close()
        raise CoordinatorError(str(exc)) from None
    except asyncio.TimeoutError:
        framed.close()
        raise CoordinatorError(f"the coordinator at {where} did not answer in time") from None
    except (ProtocolError, OSError) as exc:
        framed.close()
        raise CoordinatorError(f"session with the coordinator at {where} failed: {exc}") from None
    except BaseException:
        framed.close()
        raise


async def _run(framed: FramedSocket, handshake: Handshake) -> HandshakeAction:
    """Carries out a Handshake (boxer.nat_traversal.client) on `framed`: its outcome."""
    while True:
        for action in handshake.receive(await framed.receive()):
            if isinstance(action, SendMessage):
                await framed.send(action.message)
            else:
                return action


async def _authenticate(framed: FramedSocket, credential: auth.Credential, where: str) -> m.Welcome:
    """Authenticated both ways, nothing asked next (benchmarks/bench_heartbeat.py's sessions)."""
    try:
        done = await _run(framed, Handshake(credential, where, None))
    except HandshakeRefused as exc:
        raise CoordinatorError(str(exc)) from None
    assert isinstance(done, Authenticated)
    return done.welcome


async def _handshake(framed: FramedSocket, credential: auth.Credential, register: m.Register,
                     where: str) -> ControlSession:
    try:
        joined = await _run(framed, Handshake(credential, where, register))
    except HandshakeRefused as exc:
        raise CoordinatorError(str(exc)) from None
    assert isinstance(joined, Joined)
    reply = joined.registered
    registration = Registration(joined.session, reply.name, reply.addr, reply.prefix, reply.relay_port, reply.beat)
    return ControlSession(framed, registration, joined.members)


@dataclass
class Ticket:
    """A local port whose public endpoint the coordinator has observed, ready to be punched."""
    ticket: str
    local_port: int
    public_endpoint: str
    rendezvous: FramedSocket
    session: str  # tickets die with the session they were observed in
    opened_at: float = dataclasses.field(default_factory=time.monotonic)

    def close(self) -> None:
        self.rendezvous.close()


async def open_ticket(coordinator: tuple[str, int], key: bytes, session: str,
                      purpose: str = "outgoing", ticket: str | None = None,
                      timeout: float = 5.0) -> Ticket:
    """A rendezvous connection for `session`, its Observe proof keyed by `key`: the credential
    the session authenticated with (the instance's token)."""
    from boxer.agent.features import current

    # Without SO_REUSEPORT no punch can leave from this port: the ticket still names the
    # instance's endpoint, and the connection goes through the relay (paths.PathOpener).
    sock = await _connect(coordinator, current().reuseport, timeout)
    local_port = sock.getsockname()[1]
    framed = FramedSocket(sock)
    ticket = ticket or auth.new_token()
    try:
        # The proof covers the connection's challenge, so it is good on this connection only.
        challenge = await asyncio.wait_for(framed.receive(), timeout)
        if not isinstance(challenge, m.Challenge):
            raise CoordinatorError(f"rendezvous refused: expected a challenge, got {challenge.TYPE}")
        await framed.send(m.Observe(v=m.PROTOCOL_VERSION, session=session, ticket=ticket,
                                    mac=auth.mac(key, auth.OBSERVE_PROOF, challenge.nonce, session, ticket),
                                    purpose=purpose))
        while True:
            reply = await asyncio.wait_for(framed.receive(), timeout)
            if isinstance(reply, m.Observed):
                return Ticket(ticket, local_port, reply.endpoint, framed, session)
            if isinstance(reply, m.Refused):
                raise CoordinatorError(f"rendezvous refused: {reply.reason}")
    except BaseException:
        framed.close()
        raise
