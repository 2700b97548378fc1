"""The ticket pools close every rendezvous connection they open, also one whose open was still
under way when the coordinator session changed (drop_all): its connection belongs to the old
session, and nothing else holds it once drop_all forgets its future. The real TicketPools and
open_ticket run against a fake coordinator on loopback that speaks the rendezvous protocol
(Challenge, Observe, Observed) and holds back its answer to the first incoming ticket."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from dataclasses import dataclass, field

from boxer.agent.control import FramedSocket
from boxer.agent.tasks import Tasks
from boxer.agent.tickets import TicketPools
from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.wire import ProtocolError

TOKEN = auth.instance_token(bytes(range(32)), "1111aaaa")


@dataclass
class Registration:
    session: str


@dataclass
class Link:
    """What TicketPools reads of the coordinator link: the session, and whether it is up."""
    registration: Registration
    up: asyncio.Event = field(default_factory=asyncio.Event)


class FakeCoordinator:
    """Observes every rendezvous connection at once, but the first incoming one only when
    `answer_held` is set; records, for each, when the agent closed it."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.answer_held = asyncio.Event()
        self.held_observed = asyncio.Event()  # the held connection's Observe arrived
        self.held_closed = asyncio.Event()  # ... and the agent closed it afterwards
        self.observes: list[m.Observe] = []
        self._holding = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()
        return host, port

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        conns: set[asyncio.Task] = set()
        try:
            while True:
                sock, _ = await loop.sock_accept(self.listener)
                task = asyncio.ensure_future(self._serve_one(sock))
                conns.add(task)
                task.add_done_callback(conns.discard)
        finally:
            for task in conns:
                task.cancel()
            self.listener.close()

    async def _serve_one(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        framed = FramedSocket(sock)
        try:
            await framed.send(m.Challenge(v=m.PROTOCOL_VERSION, nonce=auth.new_token()))
            observe = await framed.receive()
            assert isinstance(observe, m.Observe)
            self.observes.append(observe)
            held = observe.purpose == "incoming" and not self._holding
            if held:
                self._holding = True
                self.held_observed.set()
                await self.answer_held.wait()
            await framed.send(m.Observed(endpoint=f"203.0.113.7:{sock.getpeername()[1]}"))
            try:
                while await asyncio.get_running_loop().sock_recv(sock, 4096):
                    pass
            except OSError:
                pass
            if held:
                self.held_closed.set()
        finally:
            framed.close()


def test_an_incoming_ticket_still_opening_when_the_session_changes_is_closed() -> None:
    async def scenario() -> None:
        coordinator = FakeCoordinator()
        serving = asyncio.ensure_future(coordinator.serve())
        link = Link(Registration("5e550001"))
        link.up.set()
        tasks = Tasks()
        pools = TicketPools(link, coordinator.address, TOKEN, tasks, size=1, max_age=60.0)  # type: ignore[arg-type]
        pools.app_up.set()
        tasks.spawn(pools.keep_filled())
        try:
            await asyncio.wait_for(coordinator.held_observed.wait(), 5)
            # The session changes while the incoming ticket's Observed is still on its way.
            link.registration.session = "5e550002"
            pools.drop_all()
            pools.refill()
            coordinator.answer_held.set()
            try:
                await asyncio.wait_for(coordinator.held_closed.wait(), 2)
            except asyncio.TimeoutError:
                raise AssertionError("the incoming ticket opened for the old session was never closed") from None
            # The pools go on: refilled in the new session.
            for _ in range(100):
                if any(o.session == "5e550002" and o.purpose == "incoming" for o in coordinator.observes):
                    break
                await asyncio.sleep(0.02)
            assert [o.purpose for o in coordinator.observes if o.session == "5e550001"] == ["outgoing", "incoming"]
            assert any(o.session == "5e550002" and o.purpose == "incoming" for o in coordinator.observes)
        finally:
            tasks.close()
            pools.drop_all()
            serving.cancel()
            await asyncio.sleep(0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(scenario())
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not unclosed, f"sockets left to the garbage collector (not closed by the pools): {unclosed}"


def test_an_incoming_with_a_ticket_but_no_peer_never_reaches_the_agent() -> None:
    """The deposited ticket an Incoming names is claimed (fast path, with the client's peer) or
    released (refused); an Incoming naming a ticket without a peer would take a fresh ticket and
    leave the named one in its pool until max_age. It cannot arrive: the message is refused when
    decoded (the coordinator only sends ticket, peer, wrapped_key and salt together)."""
    fast = m.Incoming(conn="c0ffee01", src_addr="100.64.0.2", src_port=40000, dst_port=80, ticket="aaaa0001",
                      peer="203.0.113.9:4000", wrapped_key="00" * 32, salt="5a170001")
    wire = {**fast.to_wire(), "peer": None, "wrapped_key": None, "salt": None}
    try:
        m.decode(wire)
    except ProtocolError as exc:
        assert "come together" in str(exc)
    else:
        raise AssertionError("an Incoming with a ticket but no peer was accepted")
    assert m.decode(fast.to_wire()) == fast
