"""The agent's link and the controller's watch loop survive any frame from whatever answers on
the coordinator's address, before or after authentication (issue 13).

A real coordinator (CoordinatorServer and Broker) runs in the test's event loop on loopback;
hostile frames are written into its connections to the agent or controller, as a buggy or
hostile coordinator would send them; the impostor that answers before authentication is a plain
asyncio server on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

from boxer.agent.control import open_session
from boxer.agent.link import CoordinatorLink, LinkTimeouts
from boxer.controller.runtime import ControllerRuntime
from boxer.controller.validate import parse_deployment
from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.broker import Broker
from boxer.nat_traversal.coordinator import CoordinatorServer, _PeerProtocol
from boxer.nat_traversal.wire import encode_frame

SECRET = b"s" * 32
REPORT = {"active": 1, "accepted": 2, "connected": 3, "cpu": 1.5, "rss": 1000, "listening": [80],
          "idle": 0.0, "direct": 1, "relayed": 0}


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# What a broken peer may send once a session is up: each arrives as one whole frame.
HOSTILE = [
    frame(b"not json"),
    frame(b"[" * 50_000 + b"]" * 50_000),  # RecursionError in json before issue 13
    frame(b'{"t":"ping","seq":' + b"9" * 5000 + b"}"),  # ValueError (int digits) before
    frame(b'{"t":"pong","seq":NaN}'),
    frame(b'{"t":"members_delta","base":1e999,"version":2,"hosts":{},"gone":[]}'),
    frame(b"[1,2]"),
    frame(b'{"t":"nonsense"}'),
    encode_frame({"t": "instance_report", "name": "web-1", "service": "web", "instance": "ab" * 8,
                  "report": {**REPORT, "cpu": 10**400}}),
    encode_frame({"t": "instance_report", "name": "web-1", "service": "web", "instance": "ab" * 8,
                  "report": {**REPORT, "active": 10**400}}),
    encode_frame({"t": "drain", "instance": "ab" * 8, "grace": 1e300}),
    encode_frame({"t": "snapshot", "instances": [{"name": 7}], "services": {}}),
]


class Coordinator:
    """The real coordinator, on 127.0.0.1, in this event loop."""

    def __init__(self) -> None:
        self.server: CoordinatorServer | None = None
        self.listener: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self.server = CoordinatorServer(Broker(SECRET, prefix="100.64.0.0/24"))
        server = self.server
        self.listener = await loop.create_server(lambda: _PeerProtocol(server), "127.0.0.1", port,
                                                 reuse_address=True)
        self.port = self.listener.sockets[0].getsockname()[1]

    def inject(self, data: bytes) -> None:
        """Write `data` to every connection the coordinator holds."""
        assert self.server is not None
        for peer in self.server.peers.values():
            assert peer.transport is not None
            peer.transport.write(data)

    async def stop(self) -> None:
        assert self.listener is not None and self.server is not None
        self.listener.close()
        for peer in list(self.server.peers.values()):
            if peer.transport is not None:
                peer.transport.abort()
        await self.listener.wait_closed()


async def wait_until(what: str, predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def agent_link(coordinator: Coordinator, name: str) -> tuple[CoordinatorLink, list[m.Message], asyncio.Task]:
    register = m.Register(name=name, service="web", instance=f"{abs(hash(name)):016x}"[:16])
    credential = auth.Credential.derived(SECRET, register.instance)
    session = await open_session(("127.0.0.1", coordinator.port), credential, register)
    link = CoordinatorLink(session, ("127.0.0.1", coordinator.port), credential, register,
                           LinkTimeouts(ping_interval=0.5))
    seen: list[m.Message] = []
    task = asyncio.get_running_loop().create_task(link.run(seen.append, lambda: None))
    return link, seen, task


def test_the_agent_keeps_its_session_across_malformed_frames() -> None:
    async def scenario() -> None:
        coordinator = Coordinator()
        await coordinator.start()
        link, seen, task = await agent_link(coordinator, "web-1")
        try:
            coordinator.inject(b"".join(HOSTILE))
            await wait_until("every hostile frame skipped", lambda: link.session.skipped == len(HOSTILE))
            # The same session still works both ways: a newcomer's delta reaches us, our pings
            # are answered (the link would have dropped a silent session by now).
            other = await open_session(("127.0.0.1", coordinator.port), auth.Credential.derived(SECRET, "cd" * 8),
                                       m.Register(name="web-2", service="web", instance="cd" * 8))
            await wait_until("web-2 in our membership", lambda: "web-2" in link.members or any(
                isinstance(msg, m.MembersDelta) and "web-2" in msg.hosts for msg in seen))
            await asyncio.sleep(1.0)
            assert link.reconnects == 0 and not task.done()
            assert any(isinstance(msg, m.Pong) for msg in seen)
            other.close()
        finally:
            link.closed = True
            task.cancel()
            link.session.close()
            await coordinator.stop()

    asyncio.run(scenario())


def test_the_agent_reconnects_after_broken_framing_and_after_an_impostor() -> None:
    async def scenario() -> None:
        coordinator = Coordinator()
        await coordinator.start()
        port = coordinator.port
        link, _, task = await agent_link(coordinator, "web-1")
        try:
            coordinator.inject(struct.pack(">I", 2**31))  # a length beyond any limit: out of step
            await wait_until("a new session", lambda: link.reconnects == 1)

            # Now something else answers on the coordinator's address, before authentication:
            # each connection gets one kind of garbage instead of a Challenge.
            await coordinator.stop()
            answers = iter(HOSTILE * 20)
            served = 0

            async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                nonlocal served
                served += 1
                try:
                    with contextlib.suppress(OSError):
                        writer.write(next(answers, b"x"))
                        await writer.drain()
                        await asyncio.sleep(0.05)
                finally:
                    writer.close()

            fake = await asyncio.start_server(impostor, "127.0.0.1", port, reuse_address=True)
            link.session.close()  # drop the session now rather than at its silence limit
            await wait_until("the link to try the impostor a few times", lambda: served >= 4, timeout=10)
            fake.close()
            await fake.wait_closed()
            assert not task.done(), task
            await coordinator.start(port)
            await wait_until("a session with the real coordinator again", lambda: link.reconnects >= 2
                             and link.up.is_set(), timeout=10)
            assert not task.done()
        finally:
            link.closed = True
            task.cancel()
            link.session.close()
            with contextlib.suppress(Exception):
                await coordinator.stop()

    asyncio.run(scenario())


class NoBackend:
    """A deployment of min 0: nothing is ever launched."""

    name = "none"

    async def launch(self, spec: Any) -> Any:
        raise AssertionError("nothing should be launched")

    async def stop(self, handle: Any) -> None:
        pass


def test_the_controller_keeps_its_session_across_malformed_frames() -> None:
    async def scenario() -> None:
        coordinator = Coordinator()
        await coordinator.start()
        deployment = parse_deployment("name: t\nservices:\n  web:\n    command: [\"true\"]\n"
                                      "    minInstances: 0\n    maxInstances: 1\n    autoscale: {target: 10}\n")
        runtime = ControllerRuntime(deployment, NoBackend(), coordinator=("127.0.0.1", coordinator.port),
                                    secret=SECRET, tick=0.05)
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(runtime.run(stop))
        try:
            await asyncio.wait_for(runtime.connected.wait(), 5)
            session = runtime._session
            ticks = runtime.metrics.counters.get(("boxer_controller_ticks_total", ()), 0)
            coordinator.inject(b"".join(HOSTILE))
            await wait_until("every hostile frame skipped", lambda: runtime.metrics.counters.get(
                ("boxer_controller_malformed_frames_total", ()), 0) == len(HOSTILE))
            await asyncio.sleep(0.3)
            assert runtime._session is session and runtime.connected.is_set()
            assert runtime.metrics.counters[("boxer_controller_ticks_total", ())] > ticks + 2
            assert not task.done()
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
            await coordinator.stop()

    asyncio.run(scenario())


def test_a_tick_that_raises_is_counted_and_the_next_one_runs(monkeypatch) -> None:
    """No exception in one tick ends the controller, nor runs its teardown (which would stop
    every instance): it is logged, counted, and the next tick runs."""
    import boxer.controller.runtime as runtime_module

    real_decide = runtime_module.decide
    calls = {"n": 0}

    def flaky_decide(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] in (2, 3):
            raise OverflowError("cannot convert float infinity to integer")
        return real_decide(*args, **kwargs)

    monkeypatch.setattr(runtime_module, "decide", flaky_decide)

    async def scenario() -> None:
        coordinator = Coordinator()
        await coordinator.start()
        deployment = parse_deployment("name: t\nservices:\n  web:\n    command: [\"true\"]\n"
                                      "    minInstances: 0\n    maxInstances: 1\n    autoscale: {target: 10}\n")
        runtime = ControllerRuntime(deployment, NoBackend(), coordinator=("127.0.0.1", coordinator.port),
                                    secret=SECRET, tick=0.05)
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(runtime.run(stop))
        shutdowns = []
        real_shutdown = runtime.shutdown

        async def shutdown() -> None:
            shutdowns.append(True)
            await real_shutdown()

        runtime.shutdown = shutdown  # type: ignore[method-assign]
        try:
            await wait_until("five ticks", lambda: calls["n"] >= 5)
            assert not task.done() and not shutdowns
            assert runtime.metrics.counters[("boxer_controller_tick_errors_total", ())] == 2
            assert "OverflowError" in (runtime.status()["error"] or "")
            ticks = runtime.metrics.counters[("boxer_controller_ticks_total", ())]
            await asyncio.sleep(0.3)
            assert runtime.metrics.counters[("boxer_controller_ticks_total", ())] > ticks
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
            await coordinator.stop()

    asyncio.run(scenario())
