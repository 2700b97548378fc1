"""The relay port: answers NAT probes, and carries connections that cannot be punched.

A relayed connection is two TCP connections (agent A -> relay, agent B -> relay) that the relay
pairs by connection id and then joins with splice(2): the bytes move from one socket to the other
inside the kernel, never through user space. Each agent still hands its application a plain
kernel TCP socket (the one to the relay), and the two agents authenticate end to end over the
joined path exactly as on a direct connection, so the relay learns nothing it could replay.

The relay reads exactly one frame from each side (sized reads, never past it): whatever follows
is the agents' business and is spliced untouched.

Anyone may connect to this port, so everything it holds is bounded (limits.RelayLimits): a
deadline for the first frame, unauthenticated connections per source and in all, waiting NAT
probes and their `again_after`, relayed pairs, and each pair's bytes, duration and idle time. A
relay proof is used once. The accept loop outlives running out of descriptors.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import fcntl
import itertools
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.limits import Refusals, RelayLimits
from boxer.nat_traversal.wire import MAX_FRAME, ProtocolError, encode_frame

log = logging.getLogger(__name__)

PAIRING_TIMEOUT = 5.0  # how long the first half waits for the second
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# Out of descriptors (or kernel memory): accepting again at once would spin; wait this long.
ACCEPT_PAUSE = 0.1
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# A splice thread wakes this often to check its pair's limits (idle, duration) even when no byte
# moves (SO_RCVTIMEO / SO_SNDTIMEO bound each blocking splice).
SPLICE_CHECK = 1.0
# Relay proofs (conn, salt, role) seen, kept this long and at most this many: a replayed one is
# refused (a conn id is fresh per connection, so a legitimate half never comes twice).
REPLAY_WINDOW = 600.0
REPLAY_MEMORY = 65536


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

    def pair_done(self) -> None:
        with self._lock:
            self.active -= 1


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
    def __init__(self, secret: bytes, limits: RelayLimits | None = None, refusals: Refusals | None = None) -> None:
        self.secret = secret
        self.limits = RelayLimits() if limits is None else limits
        self.refusals = Refusals() if refusals is None else refusals
        self.stats = RelayStats()
        self._waiting: dict[str, _Half] = {}
        self._listener: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        # Connections that have not sent a valid Relay frame (probes included), oldest first.
        self._unauthenticated: dict[int, tuple[asyncio.Task[bool], str]] = {}
        self._by_source: collections.Counter[str] = collections.Counter()
        self._ids = itertools.count(1)
        self._probes_waiting: collections.Counter[str] = collections.Counter()  # source -> held probes
        self._background: set[asyncio.Task[None]] = set()
        self._seen: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()

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
        for serving, _ in list(self._unauthenticated.values()):
            serving.cancel()
        for task in list(self._background):
            task.cancel()
        for half in self._waiting.values():
            half.timer.cancel()
            half.sock.close()
        self._waiting.clear()

    @property
    def unauthenticated(self) -> int:
        return len(self._unauthenticated)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                sock, peer = await loop.sock_accept(self._listener)
            except OSError as exc:
                # Out of descriptors: the loop pauses and goes on (the bounds below free some);
                # anything else (ECONNABORTED: the peer left the queue) costs that one connection.
                if exc.errno in _RESOURCE_ERRORS:
                    self.refusals.refuse("relay-accept", self._now(),
                                         f"relay cannot accept: {exc.strerror}; pausing {ACCEPT_PAUSE:g} s")
                    await asyncio.sleep(ACCEPT_PAUSE)
                continue
            self._admit(sock, peer)

    def _admit(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        source = peer[0]
        limits = self.limits
        if self._by_source[source] >= limits.unauthenticated_per_source:
            self.refusals.refuse("relay-unauthenticated-per-source", self._now(),
                                 f"{source} already holds {limits.unauthenticated_per_source} relay connections "
                                 "without a valid first frame")
            sock.close()
            return
        if len(self._unauthenticated) >= limits.unauthenticated:
            oldest, _ = next(iter(self._unauthenticated.values()))
            self.refusals.refuse("relay-unauthenticated", self._now(),
                                 f"{limits.unauthenticated} relay connections without a valid first frame; "
                                 "closing the oldest")
            oldest.cancel()
            self._release(next(iter(self._unauthenticated)))
        key = next(self._ids)
        task = asyncio.create_task(self._serve(key, sock, peer))
        self._unauthenticated[key] = (task, source)
        self._by_source[source] += 1
        task.add_done_callback(lambda done: self._served(key, sock, done))

    def _served(self, key: int, sock: socket.socket, task: asyncio.Task[bool]) -> None:
        """The socket is closed unless it was paired: also when its task was cancelled (evicted)
        before it ever ran."""
        self._release(key)
        if task.cancelled() or task.exception() is not None or not task.result():
            sock.close()

    def _release(self, key: int) -> None:
        """The connection `key` no longer counts as unauthenticated (it paired, or it is gone)."""
        entry = self._unauthenticated.pop(key, None)
        if entry is not None:
            self._by_source[entry[1]] -= 1
            if self._by_source[entry[1]] <= 0:
                del self._by_source[entry[1]]

    async def _serve(self, key: int, sock: socket.socket, peer: tuple[str, int]) -> bool:
        """True if the socket was kept (a relay half); otherwise _served closes it."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            message = await asyncio.wait_for(read_one_frame(loop, sock), self.limits.first_frame)
        except (ProtocolError, asyncio.TimeoutError, OSError) as exc:
            self.refusals.refuse("relay-first-frame", self._now(),
                                 f"bad first frame from {peer[0]}:{peer[1]}: {exc or 'none in time'}")
            return False
        if isinstance(message, m.Probe):
            await self._answer_probe(loop, sock, peer, message)
            return False
        # The proof is keyed by the connection's key, which the coordinator gave its two agents
        # and we derive: neither agent holds the secret, nor anyone else the key.
        if not isinstance(message, m.Relay) or not auth.verify(auth.relay_proof(
                auth.connection_key(self.secret, message.conn, message.salt), message.conn, message.salt,
                message.role), message.mac):
            self.refusals.refuse("relay-proof", self._now(), f"{peer[0]}:{peer[1]} sent no valid relay request")
            return False
        if not self._first_use(message):
            self.refusals.refuse("relay-replay", self._now(), f"{peer[0]}:{peer[1]} sent a relay proof already "
                                 f"used ({message.conn} {message.role})")
            return False
        if _pair_id(message) not in self._waiting and len(self._waiting) + self.stats.active >= self.limits.pairs:
            self.refusals.refuse("relay-pairs", self._now(),
                                 f"the relay carries its limit of {self.limits.pairs} connections")
            return False
        self._release(key)
        self._pair(message, sock)
        return True

    def _first_use(self, message: m.Relay) -> bool:
        """Each (conn, salt, role) proof pairs once; remembered for REPLAY_WINDOW seconds."""
        now = self._now()
        while self._seen and (len(self._seen) >= REPLAY_MEMORY
                              or now - next(iter(self._seen.values())) > REPLAY_WINDOW):
            self._seen.popitem(last=False)
        key = (_pair_id(message), message.role)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True

    async def _answer_probe(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, peer: tuple[str, int],
                            message: m.Probe) -> None:
        """Observed once; with `again_after`, once more after that many idle seconds (bounded); then
        the connection is held until the prober closes it, at most `first_frame` seconds."""
        observed = encode_frame(m.Observed(endpoint=f"{peer[0]}:{peer[1]}").to_wire())
        source, limits = peer[0], self.limits
        try:
            await loop.sock_sendall(sock, observed)
            if message.call_back and self._may_hold_probe(source, "call-back"):
                self._probes_waiting[source] += 1
                task = asyncio.create_task(_call_back(peer))
                self._background.add(task)
                task.add_done_callback(lambda t: self._call_back_done(t, source))
            if message.again_after is not None:
                if message.again_after > limits.probe_again_after:
                    self.refusals.refuse("relay-probe-again-after", self._now(),
                                         f"{source} asked for a second answer after {message.again_after} s "
                                         f"(at most {limits.probe_again_after} s)")
                    return
                if not self._may_hold_probe(source, "second answer"):
                    return
                self._probes_waiting[source] += 1
                try:
                    await asyncio.sleep(message.again_after)
                    await loop.sock_sendall(sock, observed)
                finally:
                    self._probe_done(source)
            await asyncio.wait_for(loop.sock_recv(sock, 1), limits.first_frame)  # the prober closes
        except (OSError, asyncio.TimeoutError):
            pass

    def _may_hold_probe(self, source: str, what: str) -> bool:
        limits = self.limits
        if (sum(self._probes_waiting.values()) >= limits.probes_waiting
                or self._probes_waiting[source] >= limits.probes_waiting_per_source):
            self.refusals.refuse("relay-probes-waiting", self._now(),
                                 f"no {what} for {source}: {limits.probes_waiting} probes wait already "
                                 f"({limits.probes_waiting_per_source} per address)")
            return False
        return True

    def _call_back_done(self, task: asyncio.Task[None], source: str) -> None:
        self._background.discard(task)
        self._probe_done(source)

    def _probe_done(self, source: str) -> None:
        self._probes_waiting[source] -= 1
        if self._probes_waiting[source] <= 0:
            del self._probes_waiting[source]

    def _pair(self, message: m.Relay, sock: socket.socket) -> None:
        pair = _pair_id(message)
        other = self._waiting.get(pair)
        if other is None:
            timer = asyncio.get_running_loop().call_later(PAIRING_TIMEOUT, self._expire, pair)
            self._waiting[pair] = _Half(message.role, sock, timer)
            return
        if other.role == message.role:
            log.warning("relay: two %s halves for %s; dropping the new one", message.role, message.conn)
            sock.close()
            return
        del self._waiting[pair]
        other.timer.cancel()
        self.stats.active += 1
        self.stats.total += 1
        log.info("relay: joined connection %s", message.conn)
        splice = _Splice(other.sock, sock, self.stats, self.limits, self._pair_limit_hit)
        splice.start()

    def _pair_limit_hit(self, kind: str, why: str) -> None:
        """From a splice thread: a pair reached its byte, duration or idle limit and was closed."""
        self.refusals.refuse(kind, time.monotonic(), why)

    def _expire(self, pair: str) -> None:
        half = self._waiting.pop(pair, None)
        if half is not None:
            log.info("relay: no partner for %s within %.0f s", pair.partition("|")[0], PAIRING_TIMEOUT)
            half.sock.close()


def _pair_id(message: m.Relay) -> str:
    """The halves of one connection: its id and the coordinator's salt (a half with the same id
    and another salt belongs to another brokered connect, and never joins this one)."""
    return f"{message.conn}|{message.salt}"


class _Splice:
    """Two threads, one per direction, each moving bytes socket -> pipe -> socket in the kernel.

    Each blocking splice returns at least every SPLICE_CHECK seconds (socket timeouts), so a
    thread checks its pair's limits also while nothing moves: past `pair_idle` seconds without a
    byte either way, `pair_duration` seconds in all, or `pair_bytes` carried, both sockets are shut
    down (each thread's splice then ends) and the limit is reported to `on_limit`."""

    def __init__(self, a: socket.socket, b: socket.socket, stats: RelayStats, limits: RelayLimits,
                 on_limit: Callable[[str, str], None]) -> None:
        self.a, self.b, self.stats, self.limits = a, b, stats, limits
        self._on_limit = on_limit
        self._remaining = 2
        self._lock = threading.Lock()
        self._started = self._last_moved = time.monotonic()
        self._bytes = 0
        self._stopped = False

    def start(self) -> None:
        check = min(SPLICE_CHECK, self.limits.pair_idle)
        timeout = struct.pack("ll", int(check), int((check % 1) * 1e6))
        for sock in (self.a, self.b):
            sock.setblocking(True)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        threading.Thread(target=self._pump, args=(self.a, self.b), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.b, self.a), daemon=True).start()

    def _moved(self, n: int) -> None:
        self.stats.add_bytes(n)
        with self._lock:
            self._bytes += n
            self._last_moved = time.monotonic()

    def _within_limits(self) -> bool:
        """False (and both sockets shut down) once a limit is passed."""
        limits, now = self.limits, time.monotonic()
        with self._lock:
            if self._stopped:
                return False
            if self._bytes > limits.pair_bytes:
                kind, why = "relay-pair-bytes", f"a relayed connection carried over {limits.pair_bytes} bytes"
            elif now - self._started > limits.pair_duration:
                kind, why = "relay-pair-duration", f"a relayed connection lasted {limits.pair_duration:g} s"
            elif now - self._last_moved > limits.pair_idle:
                kind, why = "relay-pair-idle", f"a relayed connection was idle {limits.pair_idle:g} s"
            else:
                return True
            self._stopped = True
        self._on_limit(kind, why + ": closed")
        for sock in (self.a, self.b):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return False

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        r, w = os.pipe()
        try:
            try:
                fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
            # Not SPLICE_F_MORE: it corks small writes (up to 200 ms) waiting for more data.
            flags = os.SPLICE_F_MOVE
            while self._within_limits():
                try:
                    n = os.splice(src.fileno(), w, PIPE_SIZE, flags=flags)
                except BlockingIOError:  # SO_RCVTIMEO: nothing arrived within SPLICE_CHECK
                    continue
                if n == 0:
                    break
                self._moved(n)
                while n:
                    try:
                        n -= os.splice(r, dst.fileno(), n, flags=flags)
                    except BlockingIOError:  # SO_SNDTIMEO: the receiver is not reading
                        if not self._within_limits():
                            return
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
                self.stats.pair_done()
