"""A test double of the agent's interposer-facing side, for the interposer's unit tests.

It speaks the real wire format (boxer.agent.ipc) on a real Unix socket and hands over real kernel
sockets, but its answers come from dicts the test fills in instead of the coordinator:

- RESOLVE/REVERSE are answered by the real agent's logic (boxer.agent.names.answer_lookup) from a
  real NameTable, `names`, with the machine's real /etc/hosts and nsswitch.conf: a test fills in
  `names.members`. Names starting with "mark." are NONAME and serve as markers a test program can
  drop into the request log (`ops()` shows them in order).
- CONNECT to an overlay (addr, port) in `routes` opens a real TCP connection to the mapped
  loopback port and passes its fd; `connect_errors` answers with an errno instead;
  `connect_delay` holds every answer back, as a punch in progress does.
- LISTEN/UNLISTEN/HELLO are recorded.
- `deliver(port, peer)` does what the real agent does for an inbound overlay connection: makes
  a real wake connection from 127.0.0.2 to the app's listener and, when the app's interposer
  sends ACCEPT with that wake port, passes the app's end of a real TCP connection whose other
  end it returns to the test.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from boxer.agent.ipc import SIZE, Message, Op, Resolution
from boxer.agent.localnames import LocalNamesSource
from boxer.agent.names import NameTable, answer_lookup

log = logging.getLogger(__name__)

WAKE_ADDR = "127.0.0.2"


@dataclass
class _Pending:
    app_end: socket.socket
    wake: socket.socket
    peer: tuple[str, int]


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError(f"peer closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one real loopback TCP connection."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        a = socket.create_connection(lst.getsockname())
        b, _ = lst.accept()
    return a, b


class FakeAgent:
    def __init__(self, path: str, own_addr: str = "100.64.0.3", own_name: str = "kv-3") -> None:
        self.path = path
        self.own_addr = own_addr
        self.names = NameTable(ipaddress.IPv4Network("100.64.0.0/10"), own_name, own_addr)
        self.names.update({})
        self.local_names = LocalNamesSource()
        self.routes: dict[tuple[str, int], int] = {}  # overlay (addr, port) -> loopback port
        self.connect_errors: dict[tuple[str, int], int] = {}
        self.connect_delay = 0.0  # seconds before a CONNECT is answered (a punch in progress)
        self.requests: list[Message] = []
        self._pending: dict[int, _Pending] = {}
        self._next_port = 50000
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(128)
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._serve, name="fake-agent", daemon=True)
        self._thread.start()

    # ---- test-facing API -------------------------------------------------------------------

    def ops(self, pid: int | None = None) -> list[tuple]:
        """The requests so far as (op name, port or name), in arrival order."""
        with self._lock:
            reqs = [r for r in self.requests if pid is None or r.pid == pid]
        out: list[tuple] = []
        for r in reqs:
            if r.op in (Op.RESOLVE,):
                out.append((r.op.name, r.name))
            elif r.op in (Op.LISTEN,):
                out.append((r.op.name, r.port, r.flags))
            elif r.op in (Op.UNLISTEN, Op.ACCEPT):
                out.append((r.op.name, r.port))
            elif r.op in (Op.CONNECT, Op.REVERSE):
                out.append((r.op.name, r.addr, r.port))
            else:
                out.append((r.op.name,))
        return out

    def wait_for(self, predicate, timeout: float = 10.0) -> Message:
        """Waits for a request matching predicate; returns it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for r in self.requests:
                    if predicate(r):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching request; got {self.ops()}")
                self._changed.wait(left)

    def deliver(self, port: int, peer: tuple[str, int]) -> socket.socket:
        """An inbound overlay connection from peer to the app's listener on port; returns the
        remote end (the test plays the peer on it)."""
        app_end, remote = tcp_pair()
        wake = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        wake.bind((WAKE_ADDR, 0))
        with self._lock:
            self._pending[wake.getsockname()[1]] = _Pending(app_end, wake, peer)
        wake.connect(("127.0.0.1", port))
        return remote

    def wake_without_connection(self, port: int) -> socket.socket:
        """A wake connection the agent has nothing for (the peer went away meanwhile)."""
        wake = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        wake.bind((WAKE_ADDR, 0))
        wake.connect(("127.0.0.1", port))
        return wake

    def close(self) -> None:
        self._closing = True
        try:
            # Unblocks accept(): a connection that the serve loop sees after _closing is set.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(self.path)
        except OSError:
            pass
        self._thread.join(5)
        self._server.close()
        for t in list(self._threads):
            t.join(5)
        with self._lock:
            for p in self._pending.values():
                p.app_end.close()
                p.wake.close()
            self._pending.clear()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    # ---- serving ---------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            conn, _ = self._server.accept()
            if self._closing:
                conn.close()
                return
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                req = Message.unpack(_recv_exact(conn, SIZE))
            except (EOFError, OSError) as e:
                log.warning("fake agent: bad request: %s", e)
                return
            with self._changed:
                self.requests.append(req)
                self._changed.notify_all()
            reply, fd = self._answer(req)
            try:
                if fd is None:
                    conn.sendall(reply.pack())
                else:
                    socket.send_fds(conn, [reply.pack()], [fd.fileno()])
            finally:
                if fd is not None:
                    fd.close()

    def _answer(self, req: Message) -> tuple[Message, socket.socket | None]:
        if req.op == Op.RESOLVE and req.name.startswith("mark."):
            return req.reply(flags=Resolution.NONAME), None
        if req.op in (Op.RESOLVE, Op.REVERSE):
            self.names.local = self.local_names.current()
            return answer_lookup(self.names, req), None
        if req.op == Op.CONNECT:
            time.sleep(self.connect_delay)
            key = (req.addr, req.port)
            if key in self.connect_errors:
                return req.reply(status=self.connect_errors[key]), None
            if key not in self.routes:
                return req.reply(status=errno.ECONNREFUSED), None
            sock = socket.create_connection(("127.0.0.1", self.routes[key]))
            with self._lock:
                self._next_port += 1
                port = self._next_port
            return req.reply(addr=self.own_addr, port=port), sock
        if req.op == Op.ACCEPT:
            with self._lock:
                pending = self._pending.pop(req.token, None)
            if pending is None:
                return req.reply(status=errno.ECONNABORTED), None
            pending.wake.close()
            return req.reply(addr=pending.peer[0], port=pending.peer[1]), pending.app_end
        return req.reply(), None  # HELLO, LISTEN, UNLISTEN: recorded above
