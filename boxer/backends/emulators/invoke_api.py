"""A local Lambda *Invoke* API: what boto3's `lambda.invoke()` talks to, on this machine.

The `lambda` backend calls Invoke on AWS. To drive that same backend (the real boto3 client,
retries, concurrency slots) without AWS, point boto3 at this server with the standard
service-specific endpoint variable (botocore >= 1.31):

    server = InvokeApiServer([LocalFunction("boxer-demo", slots=[wrap_h1, wrap_h2])]).start()
    os.environ["AWS_ENDPOINT_URL_LAMBDA"] = server.endpoint_url

or from the shell, `boxer lambda-local serve --function boxer-demo --lab demo --hosts h1,h2`.

Each accepted event runs in a *sandbox*: `python -m boxer.backends.emulators.lambda_local` (the Runtime
API, the real awslambdaric and our handler, see lambda_local.py), prefixed by one of the
function's `slots` - e.g. `ip netns exec bx-demo-h1`, so the instance sits behind a lab NAT.
A slot runs one invocation at a time, like one Lambda execution environment; the number of
slots is the function's concurrency.

The calls, as Lambda answers them (API version 2015-03-31):

    POST /2015-03-31/functions/{name}/invocations
         X-Amz-Invocation-Type: Event            -> 202; queued until a slot is free
                                RequestResponse  -> 200 with the handler's result (and
                                                    X-Amz-Function-Error when it failed);
                                                    429 when every slot is busy
                                DryRun           -> 204
         unknown function -> 404 ResourceNotFoundException
    GET  /2015-03-31/functions/{name}/configuration -> the function's configuration

Every call must be signed (SigV4) with the server's credentials, as Lambda's are: those in its
environment at start (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or `credentials=`; an unsigned
or wrongly signed call gets 403 and runs (or tells) nothing. `fetch_stats()` signs its GET. Bodies are
bounded (Lambda's payload limits; a larger Content-Length is refused unread).

Errors carry `x-amzn-ErrorType` and a JSON body {"Type", "message"}, which botocore turns into
ClientError codes. Knobs for tests: `latency=` (seconds before each Invoke is answered, as the round trip to
Lambda's endpoint), `throttle(n)` (or `throttle_first=`) answers the next n
Invoke calls 429 TooManyRequestsException; `LocalFunction(drop=True)` accepts events (202) and
runs nothing, like an invocation whose sandbox never gets going. Our own endpoints, outside
Lambda's API: `GET /_boxer/stats` (counters) and `POST /_boxer/throttle` ({"count": n}), signed
like the rest (the counters name functions and say what ran).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from boxer._python import module_argv
from boxer.backends.emulators.sigv4 import signed_by

__all__ = ["InvokeApiServer", "LocalFunction", "fetch_stats"]

log = logging.getLogger(__name__)

API = "/2015-03-31/functions"
_ROUTE = re.compile(rf"^{API}/(?P<name>[^/]+)/(?P<what>invocations|configuration)$")
MAX_EVENT_PAYLOAD = 256 * 1024  # bytes: Lambda's limit for an asynchronous invocation
MAX_SYNC_PAYLOAD = 6 * 1024 * 1024  # and for a synchronous one
STOP_GRACE = 10.0  # seconds a sandbox gets after SIGTERM before its tree is killed


@dataclass(frozen=True)
class LocalFunction:
    """One function: its name, timeout, sandboxes (argv prefixes) and environment.

    `slots`: one argv prefix per execution environment, e.g. `[["ip", "netns", "exec", "bx-
    demo-h1"]]`; `[[]]` runs sandboxes as plain processes here. `env`: the function's
    environment variables, on top of the server's own environment (which is how credentials
    reach the handler here; on AWS they come from the function's role)."""

    name: str
    timeout: float = 900.0
    slots: Sequence[Sequence[str]] = ((),)
    env: Mapping[str, str] = field(default_factory=dict)
    drop: bool = False
    memory_mb: int = 1769
    handler: str = "boxer.backends.aws_lambda.handler.handler"  # the image's CMD

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9_-]{1,64}$", self.name):
            raise ValueError(f"function name {self.name!r} is not a Lambda function name")
        if not 0 < self.timeout <= 900:
            raise ValueError(f"timeout {self.timeout} s must be in (0, 900]")
        if not self.slots:
            raise ValueError("a function needs at least one slot (concurrency >= 1)")


class _Function:
    """A function's run-time state: free slots, queued events, running sandboxes."""

    def __init__(self, config: LocalFunction) -> None:
        self.config = config
        self.free: list[tuple[str, ...]] = [tuple(s) for s in config.slots]
        self.queue: deque[tuple[str, bytes]] = deque()
        self.running: dict[str, subprocess.Popen[bytes]] = {}


class InvokeApiServer:
    def __init__(self, functions: Sequence[LocalFunction], host: str = "127.0.0.1",
                 port: int = 0, *, region: str = "us-east-1", account: str = "000000000000",
                 throttle_first: int = 0, latency: float = 0.0, python: str = sys.executable,
                 log_dir: str | Path | None = None, credentials: tuple[str, str] | None = None) -> None:
        if not functions:
            raise ValueError("serve at least one function")
        if credentials is None:
            key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
            if not key or not secret:
                raise ValueError("the Invoke API runs code for whoever calls it: set AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY (random values; boto3 signs with the same) and it "
                                 "serves only calls signed with them")
            credentials = (key, secret)
        self.credentials = credentials
        self.region = region
        self.account = account
        self.python = python
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._functions = {f.name: _Function(f) for f in functions}
        self._lock = threading.Lock()
        self._throttle_left = throttle_first
        # seconds each Invoke waits before it is answered: the round trip to Lambda's endpoint,
        # which is what a client with few connections pays per launch (the benchmark's knob)
        self.latency = latency
        self._closing = False
        self._threads: set[threading.Thread] = set()
        self.counts: Counter[str] = Counter()  # what /_boxer/stats reports
        self.results: list[dict[str, Any]] = []  # finished invocations, newest last
        self._httpd = _Server((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name="lambda-invoke-api", daemon=True)

    # -- life cycle ------------------------------------------------------------------------

    @property
    def address(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def endpoint_url(self) -> str:
        """What AWS_ENDPOINT_URL_LAMBDA should be."""
        return f"http://{self.address}"

    def start(self) -> InvokeApiServer:
        self._thread.start()
        log.info("local Invoke API on %s: %s", self.endpoint_url,
                 ", ".join(f"{n} ({len(f.config.slots)} slots)"
                           for n, f in self._functions.items()))
        return self

    def close(self) -> None:
        """Stop answering, drop queued events, stop every running sandbox (SIGTERM: it kills
        its runtime and the instance's process tree), and wait for them."""
        with self._lock:
            self._closing = True
            for function in self._functions.values():
                self.counts["dropped_on_close"] += len(function.queue)
                function.queue.clear()
            running = [p for f in self._functions.values() for p in f.running.values()]
        self._httpd.shutdown()
        self._httpd.server_close()
        for proc in running:
            _terminate(proc)
        for thread in list(self._threads):
            thread.join(timeout=STOP_GRACE + 5)

    def __enter__(self) -> InvokeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def throttle(self, count: int) -> None:
        """Answer the next `count` Invoke calls with 429 TooManyRequestsException."""
        with self._lock:
            self._throttle_left = max(0, int(count))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                **dict(self.counts),
                "throttle_left": self._throttle_left,
                "functions": {
                    name: {"slots": len(f.config.slots), "free": len(f.free),
                           "running": len(f.running), "queued": len(f.queue)}
                    for name, f in self._functions.items()
                },
                "results": list(self.results[-20:]),
            }

    def function_arn(self, name: str) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"

    # -- called from the HTTP handler threads ---------------------------------------------

    def _lookup(self, raw: str) -> _Function | None:
        name = unquote(raw)
        if name.startswith("arn:"):  # arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
            parts = name.split(":")
            name = parts[6] if len(parts) > 6 else ""
        else:
            name = name.split(":")[0]  # NAME:QUALIFIER
        return self._functions.get(name)

    def _take_throttle(self) -> bool:
        with self._lock:
            if self._throttle_left > 0:
                self._throttle_left -= 1
                self.counts["throttled"] += 1
                return True
            return False

    def _enqueue(self, function: _Function, request_id: str, body: bytes) -> None:
        with self._lock:
            self.counts["events"] += 1
            if function.config.drop:
                self.counts["dropped"] += 1
                log.info("invoke %s (%s): event accepted and dropped", function.config.name,
                         request_id)
                return
            function.queue.append((request_id, body))
        self._pump(function)

    def _pump(self, function: _Function) -> None:
        """Start queued events while the function has free slots."""
        while True:
            with self._lock:
                if self._closing or not function.queue or not function.free:
                    return
                request_id, body = function.queue.popleft()
                slot = function.free.pop(0)
                thread = threading.Thread(target=self._run_async, name=f"invoke-{request_id[:8]}",
                                          args=(function, slot, request_id, body), daemon=True)
                self._threads.add(thread)
            thread.start()

    def _run_async(self, function: _Function, slot: tuple[str, ...], request_id: str,
                   body: bytes) -> None:
        try:
            self._run(function, slot, request_id, body)
        finally:
            with self._lock:
                function.free.append(slot)
                self._threads.discard(threading.current_thread())
            self._pump(function)

    def _claim(self, function: _Function) -> tuple[str, ...] | None:
        with self._lock:
            if self._closing or not function.free:
                return None
            self.counts["requests"] += 1
            return function.free.pop(0)

    def _release(self, function: _Function, slot: tuple[str, ...]) -> None:
        with self._lock:
            function.free.append(slot)
        self._pump(function)

    def _run(self, function: _Function, slot: tuple[str, ...], request_id: str,
             body: bytes) -> dict[str, Any]:
        """One invocation in a sandbox; its LocalResult as a dict."""
        config = function.config
        argv = [*slot, *module_argv("boxer.backends.emulators.lambda_local", "--timeout", f"{config.timeout:g}",
                                    "--handler", config.handler, python=self.python)]
        env = dict(os.environ)
        env.update(config.env)
        env.setdefault("AWS_REGION", self.region)
        env.setdefault("AWS_DEFAULT_REGION", env["AWS_REGION"])
        stderr: Any = None
        if self.log_dir is not None:
            folder = self.log_dir / config.name
            folder.mkdir(parents=True, exist_ok=True)
            stderr = open(folder / f"{request_id}.log", "ab")  # noqa: SIM115
        started = time.monotonic()
        try:
            with self._lock:
                if self._closing:
                    return {"status": "stopped", "payload": None, "duration": 0.0}
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=stderr, env=env, start_new_session=True)
                function.running[request_id] = proc
        except OSError as exc:
            result = {"status": "crashed", "payload": {"errorMessage": f"cannot start the "
                      f"sandbox {argv[0]!r}: {exc.strerror}"}, "duration": 0.0}
            self._finished(config.name, request_id, result)
            return result
        finally:
            if stderr is not None:
                stderr.close()
        log.info("invoke %s (%s): sandbox %d %s", config.name, request_id, proc.pid,
                 " ".join(slot) or "(here)")
        try:
            stdout, _ = proc.communicate(body)
        finally:
            with self._lock:
                function.running.pop(request_id, None)
        try:
            result = json.loads(stdout.decode().strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError, UnicodeDecodeError):
            result = {"status": "crashed", "payload": {"exit_code": proc.returncode},
                      "duration": round(time.monotonic() - started, 3)}
            if self._closing and proc.returncode == -signal.SIGTERM:
                # close() stopped a sandbox still starting, before it could catch SIGTERM.
                result["status"] = "stopped"
        self._finished(config.name, request_id, result)
        return dict(result)

    def _finished(self, name: str, request_id: str, result: dict[str, Any]) -> None:
        log.info("invoke %s (%s): %s after %.1f s", name, request_id, result.get("status"),
                 result.get("duration") or 0.0)
        with self._lock:
            self.counts[f"result_{result.get('status')}"] += 1
            self.results.append({"function": name, "request_id": request_id, **result})
            del self.results[:-100]


class _Server(ThreadingHTTPServer):
    # A controller's burst opens its whole connection pool at once (64 for aiobotocore): with
    # socketserver's backlog of 5, connections past it were dropped by the kernel and the
    # client saw them closed before an answer. Lambda's endpoint takes them all.
    request_queue_size = 1024
    daemon_threads = True


def fetch_stats(endpoint_url: str, credentials: tuple[str, str] | None = None, *, region: str = "us-east-1",
                timeout: float = 5.0) -> dict[str, Any]:
    """`GET /_boxer/stats`, signed with `credentials` (default: AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY, as the server reads them). OSError if it cannot be reached,
    urllib.error.HTTPError (403) if the credentials are not the server's."""
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    if credentials is None:
        credentials = (os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
    url = f"{endpoint_url.rstrip('/')}/_boxer/stats"
    request = AWSRequest(method="GET", url=url)
    SigV4Auth(Credentials(*credentials), "lambda", region).add_auth(request)
    signed = urllib.request.Request(url, headers=dict(request.headers.items()), method="GET")
    with urllib.request.urlopen(signed, timeout=timeout) as reply:
        stats: dict[str, Any] = json.loads(reply.read())
    return stats


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a sandbox (it stops its runtime and the instance), kill its tree if it lingers."""
    from boxer.backends.emulators.lambda_local import _kill_tree

    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=STOP_GRACE)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        log.warning("sandbox %d ignored SIGTERM for %g s; killing its tree", proc.pid,
                    STOP_GRACE)
        _kill_tree(proc)


def _make_handler(server: InvokeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # botocore keeps its connections open

        def setup(self) -> None:
            super().setup()
            with server._lock:  # one per TCP connection: shows whether clients reuse theirs
                server.counts["connections"] += 1

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("invoke api: " + format, *args)

        def _body(self) -> bytes | None:
            """The body, or None (and an error answered, the connection closed) if it is larger
            than any Lambda payload or its length is not a number."""
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_SYNC_PAYLOAD:
                self.close_connection = True  # what was sent is not read: no request follows it
                self._error(413, "RequestTooLargeException", f"Request must be smaller than {MAX_SYNC_PAYLOAD} "
                            "bytes for the InvokeFunction operation")
                return None
            return self.rfile.read(length) if length else b""

        def _refused_signature(self, body: bytes) -> bool:
            """True (and 403 answered) unless the request is signed with the server's credentials."""
            why = signed_by(self.command, self.path, self.headers, body, *server.credentials)
            if why is None:
                return False
            with server._lock:
                server.counts["unsigned"] += 1
            log.warning("invoke api: refused %s %s from %s: %s", self.command, self.path,
                        self.client_address[0], why)
            self._error(403, "UnrecognizedClientException", f"The security token included in the request is "
                        f"invalid: {why}")
            return True

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if self._refused_signature(b""):
                return None
            if path == "/_boxer/stats":
                return self._json(200, server.stats())
            match = _ROUTE.match(path)
            if match is None or match["what"] != "configuration":
                return self._error(404, "UnknownOperationException", f"no route {path}")
            function = server._lookup(match["name"])
            if function is None:
                return self._not_found(match["name"])
            config = function.config
            self._json(200, {
                "FunctionName": config.name,
                "FunctionArn": server.function_arn(config.name),
                "Timeout": int(config.timeout),
                "MemorySize": config.memory_mb,
                "PackageType": "Image",
                "State": "Active",
                "LastUpdateStatus": "Successful",
                "Version": "$LATEST",
            })

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            body = self._body()
            if body is None or self._refused_signature(body):
                return None
            if path == "/_boxer/throttle":
                try:
                    count = int(json.loads(body or b"{}").get("count", 0))
                except (ValueError, AttributeError):
                    return self._error(400, "InvalidParameterValueException",
                                       'expected {"count": n}')
                server.throttle(count)
                return self._json(200, {"throttle_left": count})
            match = _ROUTE.match(path)
            if match is None or match["what"] != "invocations":
                return self._error(404, "UnknownOperationException", f"no route {path}")
            function = server._lookup(match["name"])
            if function is None:
                return self._not_found(match["name"])
            kind = self.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
            if kind not in ("Event", "RequestResponse", "DryRun"):
                return self._error(400, "InvalidParameterValueException",
                                   f"invalid invocation type {kind!r}")
            if server.latency:
                time.sleep(server.latency)  # this connection's thread only: the others go on
            if server._take_throttle():
                return self._error(429, "TooManyRequestsException", "Rate Exceeded.",
                                   Reason="CallerRateLimitExceeded")
            if kind == "DryRun":
                return self._reply(204, b"")
            limit = MAX_EVENT_PAYLOAD if kind == "Event" else MAX_SYNC_PAYLOAD
            if len(body) > limit:
                return self._error(413, "RequestTooLargeException",
                                   f"Request must be smaller than {limit} bytes for the "
                                   "InvokeFunction operation")
            try:
                json.loads(body or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                return self._error(400, "InvalidRequestContentException",
                                   "Could not parse request body into json")
            request_id = str(uuid.uuid4())
            if kind == "Event":
                server._enqueue(function, request_id, body or b"{}")
                return self._reply(202, b"", request_id)
            slot = server._claim(function)
            if slot is None:
                with server._lock:
                    server.counts["throttled_concurrency"] += 1
                return self._error(429, "TooManyRequestsException", "Rate Exceeded.",
                                   Reason="ReservedFunctionConcurrentInvocationLimitExceeded")
            try:
                result = ({"status": "ok", "payload": None} if function.config.drop
                          else server._run(function, slot, request_id, body or b"{}"))
            finally:
                server._release(function, slot)
            payload = json.dumps(result.get("payload")).encode()
            headers = {"X-Amz-Executed-Version": "$LATEST"}
            if result.get("status") != "ok":
                headers["X-Amz-Function-Error"] = "Unhandled"
            self._reply(200, payload, request_id, headers)

        def _not_found(self, raw: str) -> None:
            name = unquote(raw)
            arn = name if name.startswith("arn:") else server.function_arn(name)
            self._error(404, "ResourceNotFoundException", f"Function not found: {arn}")

        def _error(self, status: int, code: str, message: str, **extra: str) -> None:
            self._json(status, {"Type": "User", "message": message, **extra},
                       {"x-amzn-ErrorType": code})

        def _json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
            self._reply(status, json.dumps(body).encode(), None, headers)

        def _reply(self, status: int, data: bytes, request_id: str | None = None,
                   headers: Mapping[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-amzn-RequestId", request_id or str(uuid.uuid4()))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if data:
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                log.info("invoke api: the client left before the answer (%d)", status)

    return Handler
