"""The agent's lasting link to the coordinator: heartbeats, keepalives, and reconnection after
any loss.

Heartbeats: the coordinator says in Registered how often it wants a Beat (0.2 s by default); the
link sends them from the event loop, so a beat proves the agent's loop runs, and the
coordinator tells the controller when an instance has gone quiet (SIGSTOP, a freeze, a hung
loop) well within a second. Every `ping_interval` a Ping goes instead, which the coordinator
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
from collections.abc import Callable
from dataclasses import dataclass

from boxer.agent.control import ControlSession, CoordinatorError, Registration, open_session
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.wire import ProtocolError, encode_frame

log = logging.getLogger(__name__)

BEAT_FRAME = encode_frame(m.Beat().to_wire())


@dataclass(frozen=True)
class LinkTimeouts:
    ping_interval: float = 5.0  # also keeps the control connection's NAT mapping warm
    silence_pings: float = 3.0  # no frame for this many intervals: dead, even without a FIN/RST

    @property
    def silence(self) -> float:
        return self.ping_interval * self.silence_pings
    backoff_first: float = 0.05
    # With jitter a reconnect waits at most 0.75 s: new connections work again well within 2 s of
    # the coordinator's return, and a thousand agents still spread over half a second.
    backoff_max: float = 0.5


class LinkDown(Exception):
    pass


class CoordinatorLink:
    def __init__(self, session: ControlSession, coordinator: tuple[str, int], secret: bytes,
                 register: m.Register, timeouts: LinkTimeouts = LinkTimeouts()) -> None:
        self.session = session
        self.coordinator = coordinator
        self.secret = secret
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
        self._last_heard = loop.time()

        def heard(message: m.Message) -> None:
            self._last_heard = loop.time()
            on_message(message)

        reader = asyncio.create_task(self.session.dispatch_forever(heard))
        ping_interval = self.timeouts.ping_interval
        beat = self.session.registration.beat  # None: this coordinator wants no heartbeats
        step = min(beat, ping_interval) if beat else ping_interval
        try:
            seq = 0
            next_ping = loop.time() + ping_interval
            while not reader.done():
                before = loop.time()
                done, _ = await asyncio.wait({reader}, timeout=step)
                if done:
                    break
                now = loop.time()
                if now - before - step > ping_interval + 1.0:
                    # We were frozen (Lambda freezes sandboxes between invocations; SIGSTOP does
                    # the same): our NAT mappings have likely expired, so do not wait to find out.
                    raise LinkDown(f"frozen for about {now - before:.0f} s")
                if now - self._last_heard > self.timeouts.silence:
                    raise LinkDown(f"no word from the coordinator for {self.timeouts.silence:g} s")
                if now >= next_ping - step / 2:  # (a timer may fire a hair early)
                    seq += 1
                    next_ping = now + ping_interval
                    await self.session.send(m.Ping(seq=seq))
                elif beat:
                    await self.session.send_frame(BEAT_FRAME)
            reader.result()
        finally:
            reader.cancel()

    async def _reconnect(self) -> None:
        delay = self.timeouts.backoff_first
        while not self.closed:
            try:
                self.session = await open_session(self.coordinator, self.secret, self._register, timeout=2.0)
                log.warning("reconnected to the coordinator as %s at %s", self.registration.name,
                            self.registration.addr)
                return
            except CoordinatorError as exc:
                log.info("coordinator not back yet: %s", exc)
            except Exception:  # anything answering on the coordinator's address: try again
                log.exception("reconnecting to the coordinator failed")
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.timeouts.backoff_max)

    async def close(self) -> None:
        self.closed = True
        try:
            await asyncio.wait_for(self.session.send(m.Bye(reason="stopped")), 1.0)
        except Exception:
            pass
        self.session.close()
