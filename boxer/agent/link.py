"""The agent's lasting link to the coordinator: heartbeats, keepalives, and reconnection after
any loss.

Heartbeats (when to send what, and when to give a session up, is decided by the sans-IO
boxer.nat_traversal.client.Heartbeat): the coordinator says in Registered how often it wants a
Beat (0.2 s by default); the link sends them from the event loop, so a beat proves the agent's
loop runs, and the coordinator tells the controller when an instance has gone quiet (SIGSTOP, a
freeze, a hung loop) well within a second. Every `ping_interval` a Ping goes instead, which the coordinator
answers: that is how the link notices a coordinator that went away without a FIN/RST.

The coordinator is soft state. When its connection drops (it restarted, or a NAT mapping
expired while the instance was frozen), the agent reconnects with backoff and re-registers under
the same name, instance id and overlay address, so nothing an application holds goes stale.
Established connections never pass through the coordinator and are not affected.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from boxer.agent.control import ControlSession, CoordinatorError, Registration, open_session
from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.client import Heartbeat, LinkLost, SendPing
from boxer.nat_traversal.wire import ProtocolError

log = logging.getLogger(__name__)

BEAT_FRAME = m.BEAT_FRAME  # sent as they are: the coordinator compares a read with them


@dataclass(frozen=True)
class LinkTimeouts:
    ping_interval: float = 5.0  # also keeps the control connection's NAT mapping warm
    silence_pings: float = 3.0  # no frame for this many intervals: dead, even without a FIN/RST

    @property
    def silence(self) -> float:
        return self.ping_interval * self.silence_pings
    backoff_first: float = 0.05
    # A new connection attempt starts at most this far apart (0.45 s with jitter), even while
    # earlier ones still wait for an answer: each sends a fresh SYN, where one attempt's own
    # retransmits back off to 1, 2, 4 s. New connections work again within a second of the
    # coordinator's return (a restart, the end of a network cut), and a thousand agents still
    # spread over half a second.
    backoff_max: float = 0.3
    attempt_timeout: float = 3.0  # one attempt (connect, handshake, registration) gives up after this
    # Our control connection is stuck when the kernel has retransmitted our unacknowledged data
    # this many times in a row and heard no ACK for `stall_ack` s: the path is cut (a frozen
    # coordinator's kernel still ACKs). TCP's own retransmits back off exponentially, so after a
    # 10 s cut the next would leave ~3-6 s after the path is back; a new connection does not wait.
    stall_retransmits: int = 3
    stall_ack: float = 1.5


class LinkDown(Exception):
    pass


class CoordinatorLink:
    def __init__(self, session: ControlSession, coordinator: tuple[str, int], credential: auth.Credential,
                 register: m.Register, timeouts: LinkTimeouts = LinkTimeouts()) -> None:
        self.session = session
        self.coordinator = coordinator
        self.credential = credential  # the instance's token: what a new session authenticates with
        self.timeouts = timeouts
        # Re-registration keeps the address we were given.
        self._register = m.Register(name=register.name, service=register.service,
                                    instance=register.instance, addr=session.registration.addr)
        self.up = asyncio.Event()
        self.up.set()
        self.reconnects = 0
        self.closed = False
        self._last_heard = asyncio.get_running_loop().time()

    @property
    def registration(self) -> Registration:
        return self.session.registration

    @property
    def members(self) -> dict[str, str]:
        return self.session.members

    async def wait_up(self, wait: float = 2.0) -> None:
        """Returns once a session is up; while reconnecting, waits up to `wait` for it."""
        if self.up.is_set():
            return
        if wait <= 0:
            raise LinkDown("the coordinator is unreachable")
        try:
            await asyncio.wait_for(self.up.wait(), wait)
        except asyncio.TimeoutError:
            raise LinkDown("the coordinator is unreachable") from None

    async def send(self, message: m.Message, wait: float = 2.0) -> None:
        """Sends on the current session; while reconnecting, waits up to `wait` for it."""
        await self.wait_up(wait)
        try:
            await self.session.send(message)
        except OSError as exc:
            raise LinkDown(f"the coordinator link failed: {exc}") from None

    async def run(self, on_message: Callable[[m.Message], None],
                  on_new_session: Callable[[], None]) -> None:
        """Until closed: serve the session; when it dies, reconnect and call on_new_session.

        Each session starts with the full Members its handshake received: it is handed to
        on_message first, so the deltas that follow on that session apply to its version."""
        on_message(self.session.snapshot)
        while not self.closed:
            try:
                await self._serve(on_message)
            except (OSError, ProtocolError, LinkDown, asyncio.IncompleteReadError) as exc:
                log.warning("lost the coordinator (%s); reconnecting", exc or type(exc).__name__)
            except Exception:  # whatever a peer sent, the link lives on: a new session
                log.exception("coordinator link failed; reconnecting")
            self.up.clear()
            self.session.close()
            await self._reconnect()
            if self.closed:
                return
            self.reconnects += 1
            on_message(self.session.snapshot)
            on_new_session()
            self.up.set()

    async def _serve(self, on_message: Callable[[m.Message], None]) -> None:
        loop = asyncio.get_running_loop()
        # beat None: this coordinator wants no heartbeats
        heartbeat = Heartbeat(self.session.registration.beat, self.timeouts.ping_interval, self.timeouts.silence,
                              loop.time())

        def heard(message: m.Message) -> None:
            heartbeat.heard(loop.time())
            on_message(message)

        reader = asyncio.create_task(self.session.dispatch_forever(heard))
        try:
            while not reader.done():
                done, _ = await asyncio.wait({reader}, timeout=max(0.0, heartbeat.next_timer() - loop.time()))
                if done:
                    break
                for action in heartbeat.tick(loop.time(), _stalled(self.session.framed.sock, self.timeouts)):
                    if isinstance(action, LinkLost):
                        raise LinkDown(action.why)
                    if isinstance(action, SendPing):
                        await self.session.send(m.Ping(seq=action.seq))
                    else:
                        await self.session.send_frame(BEAT_FRAME)
            reader.result()
        finally:
            reader.cancel()

    async def _reconnect(self) -> None:
        """Attempts overlap: a new one starts every backoff step while older ones wait (each
        with its own deadline); the first session that comes up is kept, the others closed."""
        delay = self.timeouts.backoff_first
        attempts: set[asyncio.Task[ControlSession]] = set()
        try:
            while not self.closed:
                attempts.add(asyncio.create_task(open_session(
                    self.coordinator, self.credential, self._register, timeout=self.timeouts.attempt_timeout)))
                done, _ = await asyncio.wait(attempts, timeout=delay * (0.5 + random.random()))
                for attempt in done:
                    attempts.discard(attempt)
                    exc = attempt.exception()
                    if exc is None:
                        self.session = attempt.result()
                        log.warning("reconnected to the coordinator as %s at %s", self.registration.name,
                                    self.registration.addr)
                        return
                    if isinstance(exc, CoordinatorError):
                        log.info("coordinator not back yet: %s", exc)
                    else:  # anything answering on the coordinator's address: try again
                        log.warning("reconnecting to the coordinator failed: %r", exc)
                delay = min(delay * 2, self.timeouts.backoff_max)
        finally:
            for attempt in attempts:
                attempt.cancel()
                attempt.add_done_callback(_close_session)

    async def close(self) -> None:
        self.closed = True
        try:
            await asyncio.wait_for(self.session.send(m.Bye(reason="stopped")), 1.0)
        except Exception:
            pass
        self.session.close()


def _close_session(attempt: asyncio.Task[ControlSession]) -> None:
    """A reconnect attempt that lost the race: close its session if it got one."""
    if not attempt.cancelled() and attempt.exception() is None:
        attempt.result().close()


def _stalled(sock: socket.socket, timeouts: LinkTimeouts) -> bool:
    """The kernel's view of our control connection (TCP_INFO): `retransmits` consecutive RTO
    retransmissions of unacknowledged data, and no ACK for `stall_ack` seconds."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    except OSError:
        return False
    if len(info) < _TCP_INFO.size:
        return False
    retransmits, unacked, last_ack_recv = _unpack_tcp_info(info)
    return (unacked > 0 and retransmits >= timeouts.stall_retransmits
            and last_ack_recv >= timeouts.stall_ack * 1000)


# struct tcp_info (linux/tcp.h): u8 state, ca_state, retransmits, probes, backoff, options,
# wscales, flags; then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked, lost, retrans, fackets,
# last_data_sent, last_ack_sent, last_data_recv, last_ack_recv (ms).
_TCP_INFO = struct.Struct("=8B13I")


def _unpack_tcp_info(info: bytes) -> tuple[int, int, int]:
    fields = _TCP_INFO.unpack_from(info)
    return fields[2], fields[8 + 4], fields[8 + 12]
