"""The control API's client: what the CLI calls to talk to a deployment's controller.

    client = ControlClient.local(paths)           # the deployment's Unix socket
    client = ControlClient.remote("203.0.113.7:7443", ca=pem, token=token)   # TCP + TLS
    client.status() -> dict                       # what status.json holds, as the controller sees it now
    for status in client.watch(timeout=60): ...   # after every tick
    applied, statuses = client.apply(content, path)   # or ControlError with the refusal
    applied, statuses = client.up(content, path, folder="web", name="")   # a controller host
    client.down() -> int                          # instances told to stop; the controller exits
    for line in client.logs("web", tail=20, follow=True): ...   # LogLine: source, text, time, event

Synchronous (the CLI is); every failure is a ControlError (a DeploymentError) whose message
names the controller and says what went wrong, never a gRPC traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from boxer.controller.api import control_pb2 as pb
from boxer.controller.api import control_pb2_grpc as pb_grpc
from boxer.controller.api.convert import to_dict
from boxer.controller.errors import DeploymentError
from boxer.controller.paths import DeployPaths

__all__ = ["Applied", "ControlClient", "ControlError", "LogLine", "watch_when_up"]

log = logging.getLogger(__name__)

# The largest deployment file sent (Up, Apply): the server's MAX_REQUEST less room for the
# request's other fields. Checked here to say it in one line instead of gRPC's
# "Received message larger than max (N vs. 4194304)".
MAX_FILE = 4 * 1024 * 1024 - 64 * 1024
CALL_TIMEOUT = 10.0  # seconds a unary call may take (a Down: the controller answers at once)


class ControlError(DeploymentError):
    """The controller could not be reached, or refused; `code` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class LogLine:
    """One line of `boxer logs`: `source` the instance's name (or "controller"), `time` when it
    was written (None: the controller's log, whose lines carry their own), `event` True for what
    the controller did or saw (started, exited ...) rather than the instance's output."""

    source: str
    text: str
    time: float | None = None
    service: str = ""
    event: bool = False


@dataclass(frozen=True)
class Applied:
    changes: tuple[str, ...]
    rollouts: tuple[str, ...]


def _check_size(content: bytes, path: str) -> None:
    if len(content) > MAX_FILE:
        raise ControlError(f"{path or 'the deployment file'}: {len(content) / 2**20:.1f} MiB is more than a controller"
                           f" takes: a deployment file may be at most {MAX_FILE // 1024} KiB")


class ControlClient:
    def __init__(self, target: str, *, credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None, options: tuple[tuple[str, Any], ...] = ()) -> None:
        self.target = target
        self.tls = credentials is not None
        self.server_name = dict(options).get("grpc.ssl_target_name_override")
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.ControlStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    @classmethod
    def local(cls, paths: DeployPaths) -> ControlClient:
        return cls(f"unix:{paths.control_socket}")

    @classmethod
    def remote(cls, address: str, *, ca: bytes, token: str, server_name: str | None = None) -> ControlClient:
        """A controller on another machine: TLS checked against `ca` (PEM), `token` on each call.
        `server_name`: the name its certificate is for, when not the address's host."""
        options = (("grpc.ssl_target_name_override", server_name),) if server_name else ()
        return cls(address, credentials=grpc.ssl_channel_credentials(root_certificates=ca), token=token,
                   options=options)

    @classmethod
    def at(cls, address: str, *, ca: bytes | None = None, token: str | None = None,
           server_name: str | None = None) -> ControlClient:
        """`unix:PATH` (a socket only its owner may open: no TLS, no credential) or HOST:PORT
        (TLS against `ca`, and `token`), as `boxer --controller` names a controller."""
        if address.startswith("unix:"):
            return cls(address)
        if ca is None or token is None:
            raise ControlError(f"a controller at {address} is reached with TLS and a credential: "
                               "give its CA certificate and its token")
        return cls.remote(address, ca=ca, token=token, server_name=server_name)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, error: grpc.RpcError) -> ControlError:
        code = error.code() if isinstance(error, grpc.Call) else None
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        if code is grpc.StatusCode.UNAVAILABLE:
            return ControlError(f"no controller answers on {self.target} ({details}){self._unavailable_hint(details)}",
                                code)
        if code is grpc.StatusCode.UNAUTHENTICATED:
            return ControlError(f"the controller on {self.target} refused the credential: {details}", code)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return ControlError(f"the controller on {self.target} did not answer in time", code)
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:  # a request beyond the server's MAX_REQUEST
            return ControlError(f"the controller on {self.target} refused a request this large ({details}):"
                                f" a deployment file may be at most {MAX_FILE // 1024} KiB", code)
        if code is grpc.StatusCode.FAILED_PRECONDITION:  # a controller host between deployments
            return ControlError(f"no deployment runs on the controller at {self.target}", code)
        return ControlError(f"the controller on {self.target}: {details}", code)

    def _unavailable_hint(self, details: str | None) -> str:
        """What is likely wrong when a TCP controller does not answer: gRPC reports a TLS mismatch
        as an unreachable peer ('Socket closed', 'failed to connect to all addresses'), which is
        true and says nothing of TLS."""
        text = (details or "").lower()
        if self.target.startswith("unix:") or "connection refused" in text:
            return ""  # nothing listens there: no TLS question
        if not self.tls:
            return (": a controller host's control port speaks TLS only, and this client spoke without it;"
                    " give --controller-ca (its CA certificate) and --controller-token-file")
        if any(word in text for word in ("ssl", "tls", "certificate", "handshake", "verification", "socket closed")):
            name = self.server_name or self.target.rpartition(":")[0]
            return (f": the TLS handshake failed: is --controller-ca the CA that signed the controller host's"
                    f" certificate, and is that certificate for {name!r} (--controller-server-name)?")
        return ""

    def status(self, timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        try:
            return to_dict(self._stub.Status(pb.StatusRequest(), timeout=timeout, metadata=self._metadata))
        except grpc.RpcError as exc:
            raise self._fail(exc) from None

    def watch(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Statuses, one now and one after every tick, until `timeout` seconds have passed
        (then the iteration just ends) or the controller goes (ControlError)."""
        call = self._stub.Watch(pb.WatchRequest(), timeout=timeout, metadata=self._metadata)
        yield from self._statuses(call, lambda reply: reply)

    def _statuses(self, call: Any, unwrap: Callable[[Any], Any]) -> Iterator[dict[str, Any]]:
        try:
            for reply in call:
                yield to_dict(unwrap(reply))
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            raise self._fail(exc) from None
        finally:
            call.cancel()

    def apply(self, content: bytes, path: str, *, max_concurrency: int | None = None,
              register_timeout: float | None = None,
              timeout: float | None = None) -> tuple[Applied, Iterator[dict[str, Any]]]:
        """Hand an edited deployment file to the controller. Its answer, and then the statuses
        after every tick (a rollout's progress) until `timeout`; a refusal is a ControlError."""
        _check_size(content, path)
        request = pb.ApplyRequest(file=content, path=path, max_concurrency=max_concurrency,
                                  register_timeout=register_timeout)
        return self._progress(self._stub.Apply(request, timeout=timeout, metadata=self._metadata))

    def up(self, content: bytes, path: str, *, folder: str, name: str = "", backend: str = "",
           register_timeout: float | None = None,
           timeout: float | None = None) -> tuple[Applied, Iterator[dict[str, Any]]]:
        """Send a deployment file to a controller host, which starts it and runs it whether or not
        we stay: what it noted (`changes`), and its statuses after every tick until `timeout`;
        a refusal is a ControlError with the reason."""
        _check_size(content, path)
        request = pb.UpRequest(file=content, path=path, folder=folder, name=name, backend=backend,
                               register_timeout=register_timeout)
        return self._progress(self._stub.Up(request, timeout=timeout, metadata=self._metadata),
                              f"the controller on {self.target} refused the deployment")

    def _progress(self, call: Any, refused: str = "the controller refused the change"
                  ) -> tuple[Applied, Iterator[dict[str, Any]]]:
        try:
            first = next(call)
        except StopIteration:
            raise ControlError(f"the controller on {self.target} ended the apply without an answer") from None
        except grpc.RpcError as exc:
            raise self._fail(exc) from None
        if first.HasField("refused"):
            call.cancel()
            raise ControlError(f"{refused}: {first.refused.reason}")
        applied = Applied(tuple(first.applied.changes), tuple(first.applied.rollouts))
        return applied, self._statuses(call, lambda reply: reply.status)

    def down(self, timeout: float = CALL_TIMEOUT) -> int:
        try:
            return int(self._stub.Down(pb.DownRequest(), timeout=timeout, metadata=self._metadata).instances)
        except grpc.RpcError as exc:
            raise self._fail(exc) from None

    def logs(self, name: str = "", *, tail: int = 0, follow: bool = False, since: float | None = None,
             timeout: float | None = None) -> Iterator[LogLine]:
        """Lines of a service's or an instance's logs, with their starts and exits (events),
        or with no name the controller's own log. An unknown name is a ControlError whose
        message names the services and instances there are."""
        call = self._stub.Logs(pb.LogsRequest(name=name, tail=tail, follow=follow, since=since), timeout=timeout,
                               metadata=self._metadata)
        try:
            for line in call:
                yield LogLine(line.source, line.text, line.time if line.HasField("time") else None,
                              line.service, line.event)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                raise ControlError(str(exc.details()), exc.code()) from None
            raise self._fail(exc) from None
        finally:
            call.cancel()


def watch_when_up(paths: DeployPaths, until: float, running: Callable[[], bool],
                  poll: float = 0.1) -> Iterator[dict[str, Any] | None]:
    """A controller just started: None while its control socket does not answer yet (each
    `poll` seconds), then its statuses, until the monotonic time `until` or until `running()`
    says its process is gone."""
    with ControlClient.local(paths) as client:
        while time.monotonic() < until and running():
            try:
                yield from client.watch(timeout=max(0.0, until - time.monotonic()))
                return
            except ControlError as exc:
                if exc.code is not grpc.StatusCode.UNAVAILABLE:
                    raise
                log.debug("controller not answering yet: %s", exc)
            yield None
            time.sleep(poll)
