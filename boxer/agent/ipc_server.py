"""The agent's Unix socket server for the interposer: one request and one reply per connection.

The listener is served by the native fast path (boxer/agent/fastpath.c), which answers warm
CONNECTs and ACCEPTs itself and forwards every other request here with the interposer's
connection attached; we answer on that connection and close it.

Who may connect: the socket is 0666 (its directory 0711, made by the runner), because the app's
descendants change uid and gid (runuser, su, setpriv, a server's own `user nobody;`) and must
keep the overlay. The boundary is the fast path's peer check instead (boxer/agent/peercheck.c):
every connection is accepted by the native thread, which closes, unread, any whose peer is not
the agent or one of its descendants (the app's process tree, daemons adopted by the subreaper
included). This server never accepts a connection itself: it only sees those the native side
forwards over a private socketpair, already checked.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from boxer.agent.fastpath import FastEvent, FastPath
from boxer.agent.ipc import SIZE, IpcError, Message

log = logging.getLogger(__name__)

class Answer(NamedTuple):
    """A reply, the socket it passes (or None) and what to do once the interposer has it."""

    reply: Message
    passed: socket.socket | None
    # Run once the reply is sent and the interposer closed its end of the request, i.e. it has
    # the passed socket: what must not be seen by the app before its call returned.
    then: Callable[[], None]


# A handler answers a request with a reply and, optionally, a socket to pass by SCM_RIGHTS (or an
# Answer). The server closes that socket after sending: the interposer's copy is the only one left.
Handler = Callable[[Message], Awaitable[tuple[Message, socket.socket | None] | Answer]]
THEN_WAIT = 1.0  # seconds we wait for the interposer to close its end before running `then` anyway


class IpcServer:
    def __init__(self, path: str, handler: Handler, fast: FastPath,
                 on_fast_event: Callable[[FastEvent], None]) -> None:
        self.path = path
        self._handler = handler
        self._fast = fast
        self._on_fast_event = on_fast_event
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        os.chmod(self.path, 0o666)  # any uid of the app's tree; peercheck.c refuses everyone else
        listener.listen(1024)
        self._listener = listener
        self._fast.start(listener, self._forwarded, self._on_fast_event)

    def _forwarded(self, data: bytes, client: socket.socket) -> None:
        client.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._serve(data, client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, data: bytes, client: socket.socket) -> None:
        passed: socket.socket | None = None
        try:
            if len(data) != SIZE:
                raise IpcError(f"request of {len(data)} bytes, expected {SIZE}")
            request = Message.unpack(data)
            t0 = time.monotonic()
            answer = await self._handler(request)
            reply, passed = answer[0], answer[1]
            await _send_with_fd(client, reply.pack(), passed)
            if isinstance(answer, Answer):
                await _closed_by_peer(client, THEN_WAIT)
                answer.then()
            log.debug("ipc %s served in %.3f ms", request.op.name, (time.monotonic() - t0) * 1e3)
        except IpcError as exc:
            log.warning("malformed request from the interposer: %s", exc)
        except (BrokenPipeError, ConnectionResetError):
            # The app died (Ctrl-C) while its call waited for us: nobody is left to answer.
            log.debug("the interposer went away before its reply (its process exited)")
        except Exception:
            log.exception("error while serving the interposer")
        finally:
            client.close()
            if passed is not None:
                passed.close()

    def close(self) -> None:
        self._fast.stop()
        for task in self._tasks:
            task.cancel()
        if self._listener is not None:
            self._listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


async def _closed_by_peer(client: socket.socket, timeout: float) -> None:
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 1), timeout)
    except (asyncio.TimeoutError, OSError):
        pass


async def _send_with_fd(client: socket.socket, data: bytes, passed: socket.socket | None) -> None:
    ancillary = []
    if passed is not None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [passed.fileno()]))]
    # 300 bytes into an empty Unix socket buffer: never partial, and the rare EAGAIN is waited out.
    while True:
        try:
            client.sendmsg([data], ancillary)
            return
        except BlockingIOError:
            await asyncio.sleep(0.001)
