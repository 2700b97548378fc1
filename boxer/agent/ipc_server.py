"""The agent's Unix socket server for the interposer: one request and one reply per connection."""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
import time
from typing import Awaitable, Callable

from boxer.ipc import SIZE, IpcError, Message

log = logging.getLogger(__name__)

# A handler answers a request with a reply and, optionally, a socket to pass by SCM_RIGHTS.
# The server closes that socket after sending: the interposer's copy is the only one left.
Handler = Callable[[Message], Awaitable[tuple[Message, socket.socket | None]]]


class IpcServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._listener: socket.socket | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        os.chmod(self.path, 0o600)
        listener.listen(1024)
        listener.setblocking(False)
        self._listener = listener
        self._task = asyncio.create_task(self._accept_forever())

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            client, _ = await loop.sock_accept(self._listener)
            asyncio.create_task(self._serve(client))

    async def _serve(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        passed: socket.socket | None = None
        try:
            data = b""
            while len(data) < SIZE:
                chunk = await loop.sock_recv(client, SIZE - len(data))
                if not chunk:
                    return
                data += chunk
            request = Message.unpack(data)
            t0 = time.monotonic()
            reply, passed = await self._handler(request)
            await _send_with_fd(client, reply.pack(), passed)
            log.debug("ipc %s served in %.3f ms", request.op.name, (time.monotonic() - t0) * 1e3)
        except IpcError as exc:
            log.warning("malformed request from the interposer: %s", exc)
        except Exception:
            log.exception("error while serving the interposer")
        finally:
            client.close()
            if passed is not None:
                passed.close()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._listener is not None:
            self._listener.close()
        try:
            os.unlink(self.path)
        except OSError:
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
