"""The agent's native fast path (boxer/agent/fastpath.c), driven as the interposer and the agent
drive it: real Unix and loopback TCP sockets, no lab and no root needed."""

from __future__ import annotations

import array
import asyncio
import socket
import time

import pytest

from boxer.agent.fastpath import EventKind, FastEvent, FastPath
from boxer.agent.ipc import SIZE, Message, Op

OWN = "100.64.0.7"
PEER = "100.64.0.9"
WAKE = "127.0.0.2"


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair: (ours, the far end)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        far, _ = server.accept()
    return ours, far


def _request(path: str, msg: Message) -> tuple[Message, socket.socket | None]:
    """What the interposer does: one connection, one request, one reply with maybe an fd."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(msg.pack())
        data, fds = b"", array.array("i")
        while len(data) < SIZE:
            chunk, anc, _, _ = s.recvmsg(SIZE - len(data), socket.CMSG_SPACE(4))
            if not chunk:
                break
            data += chunk
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload)
    return Message.unpack(data), (socket.socket(fileno=fds[0]) if fds else None)


class Harness:
    def __init__(self, tmp_path) -> None:
        self.path = str(tmp_path / "agent.sock")
        self.fast = FastPath(OWN, WAKE, accept_pickup=0.5)
        self.events: list[FastEvent] = []
        self.forwarded: list[Message] = []

    async def __aenter__(self) -> Harness:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        self.listener.listen(64)

        def on_forwarded(data: bytes, client: socket.socket) -> None:
            request = Message.unpack(data)
            self.forwarded.append(request)
            client.sendall(request.reply(status=111).pack())  # ECONNREFUSED, as Python would say
            client.close()

        self.fast.start(self.listener, on_forwarded, self.events.append)
        return self

    async def __aexit__(self, *exc) -> None:
        self.fast.stop()
        self.listener.close()

    def app_listening(self) -> tuple[socket.socket, int]:
        """The app's listener on a fresh port, announced as its LISTEN would."""
        app = socket.create_server(("0.0.0.0", 0))
        port = app.getsockname()[1]
        self.fast.set_listening(port, 1)
        return app, port

    async def ask(self, msg: Message) -> tuple[Message, socket.socket | None]:
        return await asyncio.to_thread(_request, self.path, msg)

    async def event(self, kind: EventKind, timeout: float = 2.0) -> FastEvent:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.kind is kind:
                    self.events.remove(event)
                    return event
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {kind.name} event; got {self.events}")


def test_a_connect_is_answered_from_a_spare_with_a_go_byte(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            ours, far = _tcp_pair()
            local_port = ours.getsockname()[1]
            h.fast.put_spare((PEER, 6379), ours, local_port, max_age=30)
            assert h.fast.spare_count((PEER, 6379)) == 1
            assert h.fast.spare_count((PEER, 6380)) == 0

            reply, fd = await h.ask(Message(op=Op.CONNECT, addr=PEER, port=6379))
            assert reply.status == 0 and fd is not None
            assert (reply.addr, reply.port) == (OWN, local_port)  # what getsockname will say
            assert fd.getsockname()[1] == local_port
            far.settimeout(2)
            assert far.recv(1) == b"\x01"  # GO: the server agent wakes its app
            fd.sendall(b"hello")
            assert far.recv(5) == b"hello"  # the app's bytes go straight through
            used = await h.event(EventKind.SPARE_USED)
            assert (used.addr, used.port, used.local_port) == (PEER, 6379, local_port)
            assert h.fast.spare_count((PEER, 6379)) == 0

            # No spare left: the request goes to Python, which answers it.
            reply, fd2 = await h.ask(Message(op=Op.CONNECT, addr=PEER, port=6379))
            assert reply.status == 111 and fd2 is None
            assert [f.op for f in h.forwarded] == [Op.CONNECT]
            fd.close()
            far.close()

    asyncio.run(main())


def test_a_spare_closed_by_its_server_or_expired_is_not_used(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            dead, far = _tcp_pair()
            h.fast.put_spare((PEER, 80), dead, dead.getsockname()[1], max_age=30)
            far.close()  # the server agent gave it up
            old, far2 = _tcp_pair()
            h.fast.put_spare((PEER, 81), old, old.getsockname()[1], max_age=0.05)
            await asyncio.sleep(0.2)
            assert h.fast.spare_count((PEER, 81)) == 0
            for port in (80, 81):
                reply, fd = await h.ask(Message(op=Op.CONNECT, addr=PEER, port=port))
                assert fd is None and reply.status == 111  # forwarded: a cold connect
            assert not [e for e in h.events if e.kind is EventKind.SPARE_USED]
            far2.settimeout(2)
            assert far2.recv(1) == b""  # the expired spare was closed, not leaked
            far2.close()

    asyncio.run(main())


def test_a_held_spare_wakes_the_listener_on_go_and_accept_returns_the_connection(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            app, port = h.app_listening()
            ours, far = _tcp_pair()  # far plays the client agent's end
            h.fast.hold(ours, port, (PEER, 40000), max_wait=10)
            assert h.fast.held_count() == 1
            app.settimeout(0.3)
            with pytest.raises(socket.timeout):
                app.accept()  # no wake before GO: the app knows nothing of spares
            far.sendall(b"\x01" + b"GET")
            app.settimeout(2)
            wake, source = app.accept()
            assert source[0] == WAKE
            reply, conn = await h.ask(Message(op=Op.ACCEPT, port=port, token=source[1]))
            assert reply.status == 0 and conn is not None
            assert (reply.addr, reply.port) == (PEER, 40000)  # getpeername: the overlay peer
            conn.settimeout(2)
            assert conn.recv(3) == b"GET"  # the GO byte was read by the fast path, not the app
            accepted = await h.event(EventKind.ACCEPTED)
            assert accepted.port == port and accepted.local_port == conn.getsockname()[1]
            assert h.fast.held_count() == 0
            # A second ACCEPT for the same wake port has nothing: Python says ECONNABORTED.
            reply, none = await h.ask(Message(op=Op.ACCEPT, port=port, token=source[1]))
            assert none is None and [f.op for f in h.forwarded] == [Op.ACCEPT]
            for s in (wake, conn, far, app):
                s.close()

    asyncio.run(main())


def test_unlisten_closes_held_spares_and_an_unaccepted_connection_expires(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            app, port = h.app_listening()
            ours, far = _tcp_pair()
            h.fast.hold(ours, port, (PEER, 1), max_wait=10)
            h.fast.set_listening(port, 0)
            far.settimeout(2)
            assert far.recv(1) == b""  # the client's spare is closed: its app sees a refusal
            assert h.fast.held_count() == 0

            h.fast.set_listening(port, 1)
            ours2, far2 = _tcp_pair()
            assert h.fast.wake(ours2, port, (PEER, 2))  # a connection made the slow way
            app.settimeout(2)
            wake, _ = app.accept()  # ...the app is woken but never sends ACCEPT
            await h.event(EventKind.WAKE_FAILED, timeout=3)  # accept_pickup is 0.5 s here
            far2.settimeout(2)
            assert far2.recv(1) == b""  # dropped, not leaked
            for s in (wake, far, far2, app):
                s.close()

    asyncio.run(main())


def test_a_malformed_or_partial_request_never_stops_the_fast_path(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            with socket.socket(socket.AF_UNIX) as s:  # half a request, then hang up
                s.connect(h.path)
                s.sendall(b"x" * 100)
            reply, _ = await h.ask(Message(op=Op.RESOLVE, name="kv"))
            assert reply.status == 111 and h.forwarded[-1].name == "kv"

    asyncio.run(main())
