"""The agent's native fast path (boxer/agent/fastpath.c), driven as the interposer and the agent
drive it: real Unix and loopback TCP sockets, no lab and no root needed."""

from __future__ import annotations

import array
import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

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
        self.started = True
        self.fast = FastPath(OWN, WAKE, accept_pickup=0.5)
        self.events: list[FastEvent] = []
        self.forwarded: list[Message] = []

    async def __aenter__(self) -> Harness:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o666)  # as the agent's: who may talk is the peer check's to say
        self.listener.listen(64)
        if self.started:
            self.start()
        return self

    def start(self) -> None:

        def on_forwarded(data: bytes, client: socket.socket) -> None:
            request = Message.unpack(data)
            self.forwarded.append(request)
            client.sendall(request.reply(status=111).pack())  # ECONNREFUSED, as Python would say
            client.close()

        self.fast.start(self.listener, on_forwarded, self.events.append)

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


# ---- who may talk to the agent (peercheck.c) -----------------------------------------------------

# One request over the agent's socket as the interposer makes it; prints the reply's bytes in hex
# (empty: closed unanswered) and whether a descriptor came with it. With "outside", it first
# leaves the test's process tree: its parent exits and it is re-parented away from us, as any
# other local process is (it prints its pid first).
ASK = r"""
import array, os, socket, sys, time
if sys.argv[1] == "outside":
    parent = os.getpid()
    if os.fork():
        os._exit(0)
    while os.getppid() == parent:
        time.sleep(0.01)
print(os.getpid(), flush=True)
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[2])
data, fds = b"", array.array("i")
try:
    s.sendall(bytes.fromhex(sys.argv[3]))
    while len(data) < 300:
        chunk, anc, _, _ = s.recvmsg(300 - len(data), socket.CMSG_SPACE(4))
        if not chunk:
            break
        data += chunk
        for _level, _kind, payload in anc:
            fds.frombytes(payload)
except (ConnectionResetError, BrokenPipeError):  # closed with our request unread
    pass
print(data.hex(), len(fds))
"""


def _peer(where: str, path: str, msg: Message, **popen) -> tuple[int, bytes, int]:
    """(its pid, the reply's bytes, descriptors received) of a process asking the agent."""
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", ASK, where, path, msg.pack().hex()],
                         capture_output=True, text=True, timeout=30, **popen)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 2, (out.stdout, out.stderr)
    pid, reply = out.stdout.splitlines()
    data, fds = reply.split(" ") if " " in reply else ("", reply)
    return int(pid), bytes.fromhex(data), int(fds)


@pytest.fixture
def open_dir():
    """A folder others may traverse (pytest's tmp is 0700), as the agent's is (0711)."""
    d = Path(tempfile.mkdtemp(prefix="boxer-peer-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _as_nobody() -> dict:
    """Popen arguments that drop uid, gid and supplementary groups, as runuser or setpriv do."""
    return {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}


def test_descendants_are_answered_whatever_their_user_and_outsiders_get_nothing(open_dir):
    """A child of the agent that dropped to nobody:nogroup is answered; a process outside the
    agent's tree, with the agent's own uid or nobody's, gets its connection closed unread: no
    answer, not the spare's descriptor, nothing forwarded, and a REFUSED event naming it."""
    async def main():
        async with Harness(open_dir) as h:
            pid, reply, _ = await asyncio.to_thread(_peer, "inside", h.path, Message(op=Op.RESOLVE, name="kv"),
                                                    **_as_nobody())
            assert Message.unpack(reply).status == 111  # forwarded to Python, which answered
            assert [f.name for f in h.forwarded] == ["kv"]

            ours, far = _tcp_pair()
            h.fast.put_spare((PEER, 6379), ours, ours.getsockname()[1], max_age=30)
            outsiders = [{}] + ([_as_nobody()] if os.geteuid() == 0 else [])
            for popen in outsiders:
                pid, reply, fds = await asyncio.to_thread(_peer, "outside", h.path,
                                                          Message(op=Op.CONNECT, addr=PEER, port=6379), **popen)
                assert (reply, fds) == (b"", 0)
                refused = await h.event(EventKind.REFUSED)
                assert (refused.peer_pid, refused.peer_uid) == (pid, popen.get("user", os.geteuid()))
            assert h.fast.spare_count((PEER, 6379)) == 1  # the spare was not handed over
            assert [f.name for f in h.forwarded] == ["kv"]
            assert not [e for e in h.events if e.kind is EventKind.SPARE_USED]
            far.settimeout(0.2)
            with pytest.raises(socket.timeout):
                far.recv(1)  # no GO byte: the server side was not woken either
            for sock in (far,):
                sock.close()

    asyncio.run(main())


NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def _child_with_pid(pid: int, tries: int = 200) -> int | None:
    """A child of ours (sleeping) given exactly `pid` (ns_last_pid, root), or None. Other processes
    on the machine may take the number between our write and our fork: tried again then."""
    for _ in range(tries):
        if Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
            continue
        NS_LAST_PID.write_text(str(pid - 1))
        child = os.fork()
        if child == 0:
            try:
                time.sleep(30)
            finally:
                os._exit(0)
        if child == pid:
            return child
        os.kill(child, 9)
        os.waitpid(child, 0)
    return None


# Connects from outside the test's tree, sends a request, then hands the connection to a child
# of its own and exits; prints its (the connector's) pid. The child writes "answered" on stderr if
# a reply ever comes.
HAND_OVER = r"""
import os, socket, sys, time
parent = os.getpid()
if os.fork():
    os._exit(0)
while os.getppid() == parent:
    time.sleep(0.01)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(bytes.fromhex(sys.argv[2]))
connector = os.getpid()
if os.fork() == 0:
    print(connector, flush=True)
    os.close(1)
    s.settimeout(10)
    try:
        os.write(2, b"answered" if s.recv(300) else b"")
    except (ConnectionResetError, BrokenPipeError):
        pass
    os._exit(0)
os._exit(0)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="choosing the next pid (ns_last_pid) needs root")
def test_a_connector_that_exited_and_whose_pid_a_descendant_took_is_refused(open_dir):
    """The race a walk of the parent links alone loses: an outsider connects, hands its
    connection to a process of its own and exits, and its pid goes to a child of the agent before
    the agent accepts. The walk from that pid reaches the agent; SO_PEERPIDFD still names the
    connector, which has exited."""
    h = Harness(open_dir)
    h.started = False  # listening but not accepting: the connection waits in the backlog

    async def main():
        async with h:
            proc = subprocess.Popen(["/usr/bin/python3", "-I", "-c", HAND_OVER, h.path,
                                     Message(op=Op.RESOLVE, name="kv").pack().hex()],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            connector = int(proc.stdout.readline())
            while Path(f"/proc/{connector}").exists():  # exited, and reaped by its new parent
                await asyncio.sleep(0.01)
            child = _child_with_pid(connector)
            if child is None:
                proc.kill()
                proc.wait()
                pytest.skip(f"could not give pid {connector} to a child (the machine forks too much)")
            try:
                h.start()
                refused = await h.event(EventKind.REFUSED)
                assert refused.peer_pid == connector
                _, err = await asyncio.to_thread(proc.communicate, timeout=15)
                assert err == ""  # closed unanswered
                assert h.forwarded == []
            finally:
                os.kill(child, 9)
                os.waitpid(child, 0)

    asyncio.run(main())


# Leaves the test's tree, then forks until a child gets pid argv[3] (ns_last_pid; other processes
# on the machine may take it first); that child asks the agent and prints the reply in hex, or
# "taken" when the pid could not be had.
REUSER = r"""
import os, socket, sys, time
parent = os.getpid()
if os.fork():
    os._exit(0)
while os.getppid() == parent:
    time.sleep(0.01)
target = int(sys.argv[3])
for _ in range(200):
    if os.path.exists(f"/proc/{target}"):
        time.sleep(0.05)
        continue
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(target - 1))
    child = os.fork()
    if child == 0:
        if os.getpid() != target:
            os._exit(1)
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(sys.argv[1])
        data = b""
        try:
            s.sendall(bytes.fromhex(sys.argv[2]))
            data = s.recv(300)
        except (ConnectionResetError, BrokenPipeError):
            pass
        print(data.hex() or "-", flush=True)
        os._exit(0)
    if os.waitpid(child, 0)[1] == 0:
        break
else:
    print("taken", flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="choosing the next pid (ns_last_pid) needs root")
def test_a_remembered_process_that_exited_vouches_for_no_one_who_gets_its_pid(open_dir):
    """The check remembers processes it allowed (by pidfd). One of them exits, and a process
    outside the agent's tree is given its pid: its connection is refused, not taken for the
    remembered one's."""
    async def main():
        async with Harness(open_dir) as h:
            msg = Message(op=Op.RESOLVE, name="kv")
            pid, reply, _ = await asyncio.to_thread(_peer, "inside", h.path, msg)
            assert Message.unpack(reply).status == 111  # allowed, and remembered; it has exited now
            out = await asyncio.to_thread(
                subprocess.run, ["/usr/bin/python3", "-I", "-c", REUSER, h.path, msg.pack().hex(), str(pid)],
                capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            if out.stdout.strip() == "taken":
                pytest.skip(f"could not give pid {pid} to an outsider (the machine forks too much)")
            assert out.stdout.strip() == "-"  # closed unanswered
            refused = await h.event(EventKind.REFUSED)
            assert refused.peer_pid == pid
            assert [f.name for f in h.forwarded] == ["kv"]

    asyncio.run(main())
