"""The Python side of the agent's native fast path (boxer/agent/fastpath.c says why it exists).

The native thread owns the interposer's Unix listener and answers the three steps of a warm
connection by itself: the client's CONNECT from a spare, the server's GO byte, the server's
ACCEPT. This module fills its tables (spares, held spares, connections to wake the app for),
receives the requests it forwards (everything else, with the client's descriptor), and reads its
events (a spare used, a connection accepted) so the agent's counters and spare making follow.

Descriptors passed to the native side become its own: we detach them from their socket objects.
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import enum
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from boxer.agent.ipc import SIZE

log = logging.getLogger(__name__)

LIBRARY = Path(__file__).resolve().parent.parent / "libboxer_fastpath.so"
_EVENT = struct.Struct("=HHHHII")  # struct event in fastpath.c
_EVENTS_PER_READ = 256


class EventKind(enum.IntEnum):
    SPARE_USED = 1  # a CONNECT was answered from a spare: (addr, port) is the target
    ACCEPTED = 2  # the app accepted a connection on port
    HELD_DONE = 3  # a held spare ended (used, closed, or timed out)
    WAKE_FAILED = 4  # the app did not take a connection on port (not listening, or too slow)
    REFUSED = 5  # a connection from outside the agent's process tree, closed unread (peer_pid, peer_uid)


@dataclass(frozen=True)
class FastEvent:
    kind: EventKind
    port: int
    local_port: int
    addr: str
    peer_pid: int = 0  # REFUSED: who connected (0: in a pid namespace we cannot see)
    peer_uid: int = 0


def _load() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(LIBRARY), use_errno=True)
    except OSError as exc:
        raise RuntimeError(f"the agent's native fast path is missing ({exc}); reinstall boxer with "
                           "`pip install -e .` on a machine with a C compiler") from None
    u16, u32, dbl, c_int = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_double, ctypes.c_int
    lib.bx_fp_start.argtypes = [c_int, c_int, c_int, u32, u32, dbl]
    lib.bx_fp_put_spare.argtypes = [u32, u16, c_int, u16, dbl]
    lib.bx_fp_spare_count.argtypes = [u32, u16]
    lib.bx_fp_hold.argtypes = [c_int, u16, u32, u16, dbl]
    lib.bx_fp_wake.argtypes = [c_int, u16, u32, u16]
    lib.bx_fp_set_listening.argtypes = [u16, c_int]
    lib.bx_fp_set_listening.restype = None
    lib.bx_fp_stop.restype = None
    return lib


def _addr(text: str) -> int:
    """Dotted quad -> the uint32 whose memory holds it in network order (what C compares)."""
    return int.from_bytes(socket.inet_aton(text), sys.byteorder)


def _text(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, sys.byteorder))


class FastPath:
    """One per agent process (the native side's state is process-wide)."""

    def __init__(self, own_addr: str, wake_addr: str, accept_pickup: float) -> None:
        self.own_addr = own_addr
        self.wake_addr = wake_addr
        self.accept_pickup = accept_pickup
        self._lib = _load()
        self._started = False
        self._python_end: socket.socket | None = None
        self._native_end: socket.socket | None = None
        self._events_r = self._events_w = -1

    def start(self, listener: socket.socket,
              on_forwarded: Callable[[bytes, socket.socket], None],
              on_event: Callable[[FastEvent], None]) -> None:
        """Serve `listener` from the native thread; call back on the running loop for forwarded
        requests (the raw message and the interposer's connection) and for events."""
        loop = asyncio.get_running_loop()
        self._python_end, self._native_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._python_end.setblocking(False)
        self._events_r, self._events_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._lib.bx_fp_start(listener.fileno(), self._native_end.fileno(), self._events_w,
                                 _addr(self.own_addr), _addr(self.wake_addr), self.accept_pickup) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot start the agent's fast path: {os.strerror(err)}")
        self._started = True
        loop.add_reader(self._python_end.fileno(), self._receive_forwarded, on_forwarded)
        loop.add_reader(self._events_r, self._read_events, on_event)

    def _receive_forwarded(self, on_forwarded: Callable[[bytes, socket.socket], None]) -> None:
        assert self._python_end is not None
        while True:
            try:
                data, ancdata, _flags, _addr = self._python_end.recvmsg(
                    SIZE, socket.CMSG_SPACE(array.array("i").itemsize), socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            fds = array.array("i")
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            if not fds:
                if not data:  # the native side is gone
                    asyncio.get_running_loop().remove_reader(self._python_end.fileno())
                    return
                continue
            on_forwarded(data, socket.socket(fileno=fds[0]))
            for extra in fds[1:]:
                os.close(extra)

    def _read_events(self, on_event: Callable[[FastEvent], None]) -> None:
        try:
            data = os.read(self._events_r, _EVENT.size * _EVENTS_PER_READ)
        except (BlockingIOError, InterruptedError):
            return
        for kind, port, local_port, _pad, addr, uid in _EVENT.iter_unpack(data):
            try:
                if kind == EventKind.REFUSED:
                    event = FastEvent(EventKind.REFUSED, 0, 0, "", peer_pid=addr, peer_uid=uid)
                else:
                    event = FastEvent(EventKind(kind), port, local_port, _text(addr))
                on_event(event)
            except Exception:
                log.exception("error while handling a fast-path event")

    # --- the tables ------------------------------------------------------------------------

    def put_spare(self, target: tuple[str, int], sock: socket.socket, local_port: int, max_age: float) -> None:
        """A client-side spare for target, answered to the app's next CONNECT there."""
        sock.setblocking(True)  # the app gets it as is; the native side uses MSG_DONTWAIT
        self._lib.bx_fp_put_spare(_addr(target[0]), target[1], sock.detach(), local_port, max_age)

    def spare_count(self, target: tuple[str, int]) -> int:
        return self._lib.bx_fp_spare_count(_addr(target[0]), target[1])

    def hold(self, sock: socket.socket, port: int, peer: tuple[str, int], max_wait: float) -> None:
        """Our end of a client's spare: wait for its GO byte, then wake the app."""
        sock.setblocking(True)
        self._lib.bx_fp_hold(sock.detach(), port, _addr(peer[0]), peer[1], max_wait)

    def wake(self, sock: socket.socket, port: int, peer: tuple[str, int]) -> bool:
        """Wake the app's listener on port for this connection; False if nothing listens."""
        sock.setblocking(True)
        return self._lib.bx_fp_wake(sock.detach(), port, _addr(peer[0]), peer[1]) == 0

    def set_listening(self, port: int, count: int) -> None:
        self._lib.bx_fp_set_listening(port, count)

    def held_count(self) -> int:
        return self._lib.bx_fp_held_count()

    def stop(self) -> None:
        if self._started:
            self._started = False
            try:
                loop = asyncio.get_running_loop()
                if self._python_end is not None:
                    loop.remove_reader(self._python_end.fileno())
                loop.remove_reader(self._events_r)
            except RuntimeError:
                pass
            self._lib.bx_fp_stop()
        for sock in (self._python_end, self._native_end):
            if sock is not None:
                sock.close()
        for fd in (self._events_r, self._events_w):
            if fd >= 0:
                os.close(fd)
        self._python_end = self._native_end = None
        self._events_r = self._events_w = -1
