"""The relay port: answers NAT probes, and carries connections that cannot be punched.

A relayed connection is two TCP connections (agent A -> relay, agent B -> relay) that the relay
pairs by connection id and then joins with splice(2): the bytes move from one socket to the other
inside the kernel, never through user space. Each agent still hands its application a plain
kernel TCP socket (the one to the relay), and the two agents authenticate end to end over the
joined path exactly as on a direct connection, so the relay learns nothing it could replay.

The relay reads exactly one frame from each side (sized reads, never past it): whatever follows
is the agents' business and is spliced untouched.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.wire import MAX_FRAME, ProtocolError, encode_frame

log = logging.getLogger(__name__)

PAIRING_TIMEOUT = 5.0  # how long the first half waits for the second
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass
class _Half:
    role: str
    sock: socket.socket
    timer: asyncio.TimerHandle


class RelayStats:
    def __init__(self) -> None:
        self.active = 0
        self.total = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes += n


async def read_one_frame(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> m.Message:
    header = await _read_exactly(loop, sock, 4)
    (length,) = struct.unpack(">I", header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} exceeds the limit")
    import json

    try:
        obj = json.loads(await _read_exactly(loop, sock, length))
    except ValueError as exc:
        raise ProtocolError(f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame must hold a JSON object")
    return m.decode(obj)


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise ProtocolError("connection closed mid-frame")
        data += chunk
    return data


async def _call_back(peer: tuple[str, int], timeout: float = 2.0) -> None:
    """One unsolicited connection to a prober's public endpoint, from a port it never talked to.
    Only ever to the prober's own address, and one SYN: nothing to amplify."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, peer), timeout)
        await loop.sock_sendall(sock, b"!")
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        sock.close()


class RelayServer:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.stats = RelayStats()
        self._waiting: dict[str, _Half] = {}
        self._listener: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        # Tasks serving one connection each: the loop holds only weak references to tasks.
        self._serving: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1024)
        listener.setblocking(False)
        self._listener = listener
        self._task = asyncio.create_task(self._accept_forever())
        bound: int = listener.getsockname()[1]
        return bound

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._listener is not None:
            self._listener.close()
        for half in self._waiting.values():
            half.timer.cancel()
            half.sock.close()
        self._waiting.clear()

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            sock, peer = await loop.sock_accept(self._listener)
            self._spawn(self._serve(sock, peer))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            message = await asyncio.wait_for(read_one_frame(loop, sock), PAIRING_TIMEOUT)
        except (ProtocolError, asyncio.TimeoutError, OSError) as exc:
            log.warning("relay: bad first frame from %s:%d: %s", peer[0], peer[1], exc)
            sock.close()
            return
        if isinstance(message, m.Probe):
            observed = encode_frame(m.Observed(endpoint=f"{peer[0]}:{peer[1]}").to_wire())
            try:
                await loop.sock_sendall(sock, observed)
                if message.call_back:
                    self._spawn(_call_back(peer))
                if message.again_after is not None:
                    await asyncio.sleep(message.again_after)
                    await loop.sock_sendall(sock, observed)
                await asyncio.sleep(PAIRING_TIMEOUT)  # the prober closes once it has its answer
            except OSError:
                pass
            finally:
                sock.close()
            return
        if not isinstance(message, m.Relay) or not auth.verify(
                auth.mac(self.secret, auth.RELAY_PROOF, message.conn, message.role), message.mac):
            log.warning("relay: refusing %s:%d (not a valid relay request)", peer[0], peer[1])
            sock.close()
            return
        self._pair(message, sock)

    def _pair(self, message: m.Relay, sock: socket.socket) -> None:
        other = self._waiting.get(message.conn)
        if other is None:
            timer = asyncio.get_running_loop().call_later(PAIRING_TIMEOUT, self._expire, message.conn)
            self._waiting[message.conn] = _Half(message.role, sock, timer)
            return
        if other.role == message.role:
            log.warning("relay: two %s halves for %s; dropping the new one", message.role, message.conn)
            sock.close()
            return
        del self._waiting[message.conn]
        other.timer.cancel()
        self.stats.active += 1
        self.stats.total += 1
        log.info("relay: joined connection %s", message.conn)
        _Splice(other.sock, sock, self.stats).start()

    def _expire(self, conn: str) -> None:
        half = self._waiting.pop(conn, None)
        if half is not None:
            log.info("relay: no partner for %s within %.0f s", conn, PAIRING_TIMEOUT)
            half.sock.close()


class _Splice:
    """Two threads, one per direction, each moving bytes socket -> pipe -> socket in the kernel."""

    def __init__(self, a: socket.socket, b: socket.socket, stats: RelayStats) -> None:
        self.a, self.b, self.stats = a, b, stats
        self._remaining = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        for sock in (self.a, self.b):
            sock.setblocking(True)
        threading.Thread(target=self._pump, args=(self.a, self.b), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.b, self.a), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        r, w = os.pipe()
        try:
            try:
                fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
            # Not SPLICE_F_MORE: it corks small writes (up to 200 ms) waiting for more data.
            flags = os.SPLICE_F_MOVE
            while True:
                n = os.splice(src.fileno(), w, PIPE_SIZE, flags=flags)
                if n == 0:
                    break
                self.stats.add_bytes(n)
                while n:
                    n -= os.splice(r, dst.fileno(), n, flags=flags)
        except OSError:
            pass
        finally:
            os.close(r)
            os.close(w)
            try:
                dst.shutdown(socket.SHUT_WR)  # pass the half-close on, as TCP would
            except OSError:
                pass
            with self._lock:
                self._remaining -= 1
                done = self._remaining == 0
            if done:
                self.a.close()
                self.b.close()
                self.stats.active -= 1
