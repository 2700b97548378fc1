"""A small Lambda Runtime API server: what awslambdaric talks to, here on our own machine.

Only the calls a runtime makes (API version 2018-06-01):

    GET  /2018-06-01/runtime/invocation/next           -> the next event (blocks until one)
    POST /2018-06-01/runtime/invocation/{id}/response  -> the handler's result
    POST /2018-06-01/runtime/invocation/{id}/error     -> the handler raised
    POST /2018-06-01/runtime/init/error                -> the handler could not even be loaded

`invoke(event, timeout)` queues an event and returns a Future resolved by the runtime's answer.
The server runs in a daemon thread (http.server), so both sync and asyncio callers can use it.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Outcome", "RuntimeApiServer"]

log = logging.getLogger(__name__)

_PREFIX = "/2018-06-01/runtime"
_INVOCATION = re.compile(rf"^{_PREFIX}/invocation/(?P<id>[^/]+)/(?P<kind>response|error)$")
_POLL = 0.2  # how often a blocked /next checks whether the server is shutting down


@dataclass(frozen=True)
class Outcome:
    """How an invocation ended, as the runtime reported it."""

    request_id: str
    ok: bool  # True: /response; False: /error or /init/error
    payload: Any  # the handler's result, or Lambda's error object {errorMessage, errorType...}
    error_type: str | None = None


@dataclass
class _Invocation:
    request_id: str
    body: bytes
    deadline_ms: int
    future: Future[Outcome] = field(default_factory=Future)


class RuntimeApiServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 function_arn: str = "arn:aws:lambda:local:000000000000:function:boxer") -> None:
        self.function_arn = function_arn
        self._pending: queue.Queue[_Invocation] = queue.Queue()
        self._active: dict[str, _Invocation] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        # When the runtime first asked for an event: its init (start, import of the handler)
        # ended then, what Lambda reports as "Init Duration". time.monotonic().
        self.first_next_at: float | None = None
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name="lambda-runtime-api", daemon=True)

    @property
    def address(self) -> str:
        """host:port for AWS_LAMBDA_RUNTIME_API."""
        host, port = self._httpd.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> RuntimeApiServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            for invocation in self._active.values():
                if not invocation.future.done():
                    invocation.future.cancel()

    def __enter__(self) -> RuntimeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def invoke(self, event: Any, timeout: float) -> Future[Outcome]:
        invocation = _Invocation(
            request_id=str(uuid.uuid4()),
            body=json.dumps(event).encode(),
            deadline_ms=int((time.time() + timeout) * 1000),
        )
        with self._lock:
            self._active[invocation.request_id] = invocation
        self._pending.put(invocation)
        return invocation.future

    # -- called from the HTTP handler threads ---------------------------------------------

    def _next(self) -> _Invocation | None:
        if self.first_next_at is None:
            self.first_next_at = time.monotonic()
        while not self._closing.is_set():
            try:
                return self._pending.get(timeout=_POLL)
            except queue.Empty:
                continue
        return None

    def _finish(self, request_id: str | None, outcome: Outcome) -> bool:
        with self._lock:
            if request_id is None:  # init error: fails whatever is in flight or queued next
                targets = [i for i in self._active.values() if not i.future.done()]
            else:
                invocation = self._active.get(request_id)
                if invocation is None or invocation.future.done():
                    return False
                targets = [invocation]
        for invocation in targets:
            invocation.future.set_result(
                Outcome(invocation.request_id, outcome.ok, outcome.payload, outcome.error_type)
            )
        return True


def _make_handler(server: RuntimeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # the runtime keeps its connection open

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("runtime api: " + format, *args)

        def do_GET(self) -> None:
            if self.path != f"{_PREFIX}/invocation/next":
                return self._reply(404, {"errorType": "NotFound", "errorMessage": self.path})
            invocation = server._next()
            if invocation is None:  # shutting down
                return self._reply(503, {"errorType": "ShuttingDown", "errorMessage": ""})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(invocation.body)))
            self.send_header("Lambda-Runtime-Aws-Request-Id", invocation.request_id)
            self.send_header("Lambda-Runtime-Deadline-Ms", str(invocation.deadline_ms))
            self.send_header("Lambda-Runtime-Invoked-Function-Arn", server.function_arn)
            self.send_header("Lambda-Runtime-Trace-Id", f"Root=1-{invocation.request_id[:8]}")
            self.end_headers()
            self.wfile.write(invocation.body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                payload = json.loads(body) if body else None
            except json.JSONDecodeError:
                payload = body.decode(errors="replace")
            error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
            if self.path == f"{_PREFIX}/init/error":
                server._finish(None, Outcome("", False, payload, error_type))
                return self._reply(202, {"status": "OK"})
            match = _INVOCATION.match(self.path)
            if match is None:
                return self._reply(404, {"errorType": "NotFound", "errorMessage": self.path})
            ok = match["kind"] == "response"
            if not server._finish(match["id"], Outcome(match["id"], ok, payload, error_type)):
                return self._reply(400, {"errorType": "InvalidRequestID",
                                         "errorMessage": f"unknown or finished {match['id']}"})
            self._reply(202, {"status": "OK"})

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the runtime is gone (the sandbox is ending): nobody to answer

    return Handler
