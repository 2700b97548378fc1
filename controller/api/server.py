"""The control API's server, in the controller process (controller/daemon.py).

One servicer, served on the deployment's Unix socket (the folder 0700, the socket 0600: who can
open it may run the deployment, as with the state files) and, when configured, on TCP with TLS
where each call must carry the credential (`authorization: Bearer <token>`): a controller beside
a coordinator on another machine. The servicer reads the runtime (ControllerRuntime) in its own
event loop: no locks, each call sees a whole tick.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from boxer.controller.api import control_pb2 as pb
from boxer.controller.api import control_pb2_grpc as pb_grpc
from boxer.controller.api.convert import from_dict

__all__ = ["Applier", "ControlService", "HostedControl", "Starter", "TcpListener", "serve"]

log = logging.getLogger(__name__)

LOG_POLL = 0.25  # seconds between looks at followed logs (the controller times their lines per tick)
# apply(content, path, max_concurrency, register_timeout) -> (changes, rollouts) or raises
# ApplyRefused: the daemon's, which knows the backend and the record.
Applier = Callable[[bytes, str, int | None, float | None], tuple[list[str], list[str]]]


# The largest request either server takes (gRPC's default, made ours so it is a decision and
# documented): an Up or Apply carries a deployment file, a few KiB; past this gRPC refuses the
# call with RESOURCE_EXHAUSTED before any of ours runs. The client checks the file first and
# says so in one line (client.MAX_FILE).
MAX_REQUEST = 4 * 1024 * 1024
_OPTIONS = (("grpc.max_receive_message_length", MAX_REQUEST),)


class ApplyRefused(Exception):
    def __init__(self, reason: str, fields: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fields = fields or []


@dataclass(frozen=True)
class TcpListener:
    """Serve on TCP too: `address` HOST:PORT, TLS with this certificate chain and key (PEM), and
    calls must present `token` (compared in constant time)."""

    address: str
    certificate: bytes
    private_key: bytes
    token: str


class ControlService(pb_grpc.ControlServicer):
    def __init__(self, runtime: Any, apply: Applier, stop: Callable[[], None], log_file: Path,
                 instance_logs: Path) -> None:
        self.runtime = runtime
        self._apply = apply
        self._stop = stop
        self.log_file = log_file
        self.instance_logs = instance_logs
        self._warned: set[str] = set()
        # Set once the deployment has ended (a controller host's, which serves on afterwards):
        # its streams end then, instead of waiting for a tick that never comes.
        self.ended = asyncio.Event()

    async def next_tick(self) -> bool:
        """True after the runtime's next tick; False once the deployment has ended."""
        if self.ended.is_set():
            return False
        tick = asyncio.ensure_future(self.runtime.next_tick())
        end = asyncio.ensure_future(self.ended.wait())
        done, pending = await asyncio.wait({tick, end}, return_when=asyncio.FIRST_COMPLETED)
        for waiting in pending:
            waiting.cancel()
        return tick in done

    def _status(self) -> pb.DeploymentStatus:
        skipped: list[str] = []
        try:
            status = from_dict(pb.DeploymentStatus(), self.runtime.status(), skipped=skipped)
        except Exception:
            log.exception("the status does not fit the control API's DeploymentStatus")
            raise
        fresh = set(skipped) - self._warned
        if fresh:
            self._warned |= fresh
            log.warning("status fields not in control.proto, left out: %s", ", ".join(sorted(fresh)))
        return status  # type: ignore[return-value]

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.DeploymentStatus:
        return self._status()

    async def Watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[pb.DeploymentStatus]:
        while True:
            yield self._status()
            if not await self.next_tick():
                return

    async def Apply(self, request: pb.ApplyRequest, context: Any) -> AsyncIterator[pb.ApplyProgress]:
        max_concurrency = request.max_concurrency if request.HasField("max_concurrency") else None
        register_timeout = request.register_timeout if request.HasField("register_timeout") else None
        try:
            changes, rollouts = self._apply(request.file, request.path, max_concurrency, register_timeout)
        except ApplyRefused as refused:
            yield pb.ApplyProgress(refused=pb.Refused(reason=refused.reason, fields=refused.fields))
            return
        yield pb.ApplyProgress(applied=pb.Applied(changes=changes, rollouts=rollouts))
        while await self.next_tick():
            yield pb.ApplyProgress(status=self._status())

    async def Down(self, request: pb.DownRequest, context: Any) -> pb.DownReply:
        instances = len(self.runtime.book.records)
        log.info("down asked through the control API: stopping %d instance(s)", instances)
        self._stop()
        return pb.DownReply(instances=instances)

    async def Logs(self, request: pb.LogsRequest, context: Any) -> AsyncIterator[pb.LogLine]:
        if not request.name:
            async for line in self._controller_log(request):
                yield line
            return
        from boxer.controller.instance_logs import LogReader, LogSourceError, UnknownLogTarget, lambda_source

        deployment = getattr(self.runtime, "deployment", None)
        source = lambda_source()
        reader = LogReader(self.instance_logs, deployment.services if deployment is not None else (),
                           cloudwatch=source.entries, vm_hosts=self._vm_host_logs())
        try:
            service, instance = reader.resolve(request.name)
        except UnknownLogTarget as exc:
            await source.close()
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            return
        since = request.since if request.HasField("since") else None
        try:
            entries = await reader.entries(service, instance, since=since, tail=request.tail,
                                           final=not request.follow)
            while True:
                for entry in entries:
                    yield pb.LogLine(source=entry.instance, service=entry.service, text=entry.text,
                                     time=entry.time, event=entry.event)
                if not request.follow:
                    return
                await asyncio.sleep(LOG_POLL)
                entries = await reader.entries(service, instance, final=False)
        except LogSourceError as exc:
            # A source behind the controller failed, not the controller: INTERNAL, since clients
            # take UNAVAILABLE for "no controller answers" (and `boxer logs` then reads the files).
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        finally:
            await source.close()

    def _vm_host_logs(self) -> Callable[[str, str, int], Awaitable[Any]] | None:
        """How the reader asks a vm host for an instance's output: through the backend's vm tier
        (its connections and the host token), when the backend has one."""
        tier = getattr(getattr(self.runtime, "backend", None), "vm_tier", None)
        if tier is None:
            return None

        async def read(daemon: str, ref: str, offset: int) -> Any:
            from boxer.backends.vmhost.tier import VmLogError
            from boxer.controller.instance_logs import LogSourceError

            try:
                return await tier.read_log(daemon, ref, offset)
            except VmLogError as exc:
                raise LogSourceError(str(exc)) from None

        return read

    async def _controller_log(self, request: pb.LogsRequest) -> AsyncIterator[pb.LogLine]:
        with open(self.log_file, errors="replace") as file:
            lines = file.readlines()
            for line in lines[-request.tail:] if request.tail > 0 else lines:
                yield pb.LogLine(source="controller", text=line.rstrip("\n"))
            partial = ""
            while request.follow:
                chunk = file.readline()
                if not chunk:
                    await asyncio.sleep(LOG_POLL)
                    continue
                partial += chunk
                if partial.endswith("\n"):
                    yield pb.LogLine(source="controller", text=partial.rstrip("\n"))
                    partial = ""

    async def Up(self, request: Any, context: Any) -> AsyncIterator[pb.ApplyProgress]:
        yield pb.ApplyProgress(refused=pb.Refused(
            reason="this controller runs one deployment, started by `boxer up` on its machine; Up is "
                   "for a controller host (`python -m boxer.controller.daemon --serve`)"))


# up(request) -> the started deployment's service, or raises ApplyRefused: the daemon's, which
# validates the file, writes the deployment's state and starts its runtime. `notes` it fills are
# sent back as the Applied's changes (what the caller should know: a concurrency lowered...).
Starter = Callable[[Any, list[str]], Awaitable[ControlService]]


class HostedControl(pb_grpc.ControlServicer):
    """The control API of a controller host: it waits for a deployment (Up), runs one at a time,
    and hands every other call to that deployment's ControlService; `current` is None between
    deployments (the daemon clears it when one has stopped)."""

    def __init__(self, up: Starter) -> None:
        self._up = up
        self.current: ControlService | None = None
        self._starting = False

    async def _service(self, context: Any) -> ControlService:
        if self.current is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "no deployment runs on this controller: `boxer up FILE --controller ...` starts one")
        assert self.current is not None
        return self.current

    async def Up(self, request: Any, context: Any) -> AsyncIterator[pb.ApplyProgress]:
        if self.current is not None or self._starting:
            running = self.current.runtime.status().get("name") if self.current is not None else "one"
            yield pb.ApplyProgress(refused=pb.Refused(
                reason=f"this controller already runs deployment {running}: `boxer down` it first"))
            return
        notes: list[str] = []
        self._starting = True
        try:
            service = await self._up(request, notes)
        except ApplyRefused as refused:
            yield pb.ApplyProgress(refused=pb.Refused(reason=refused.reason, fields=refused.fields))
            return
        finally:
            self._starting = False
        self.current = service
        yield pb.ApplyProgress(applied=pb.Applied(changes=notes))
        async for status in service.Watch(pb.WatchRequest(), context):  # until the deployment ends
            yield pb.ApplyProgress(status=status)

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.DeploymentStatus:
        return await (await self._service(context)).Status(request, context)

    async def Watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[pb.DeploymentStatus]:
        async for reply in (await self._service(context)).Watch(request, context):
            yield reply

    async def Apply(self, request: pb.ApplyRequest, context: Any) -> AsyncIterator[pb.ApplyProgress]:
        async for reply in (await self._service(context)).Apply(request, context):
            yield reply

    async def Down(self, request: pb.DownRequest, context: Any) -> pb.DownReply:
        return await (await self._service(context)).Down(request, context)

    async def Logs(self, request: pb.LogsRequest, context: Any) -> AsyncIterator[pb.LogLine]:
        async for reply in (await self._service(context)).Logs(request, context):
            yield reply


class _RequireToken(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(given).encode(), self._expected):
            return await continuation(handler_call_details)
        return _refusal()


def _refusal() -> Any:
    async def refuse(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid control credential is required")

    return grpc.unary_unary_rpc_method_handler(refuse)


async def serve(service: pb_grpc.ControlServicer, socket_path: Path, tcp: TcpListener | None = None) -> list[Any]:
    """Start serving; the servers, to stop() when the controller ends."""
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if socket_path.parent.stat().st_uid != os.geteuid():  # e.g. made by someone else under /tmp
        raise OSError(f"{socket_path.parent} belongs to another user: not serving the control API there")
    os.chmod(socket_path.parent, 0o700)  # mkdir's mode is cut by the umask, and not applied to an existing one
    socket_path.unlink(missing_ok=True)
    local = grpc.aio.server(options=_OPTIONS)
    pb_grpc.add_ControlServicer_to_server(service, local)
    local.add_insecure_port(f"unix:{socket_path}")
    await local.start()
    os.chmod(socket_path, 0o600)
    servers = [local]
    if tcp is not None:
        remote = grpc.aio.server(interceptors=[_RequireToken(tcp.token)], options=_OPTIONS)
        pb_grpc.add_ControlServicer_to_server(service, remote)
        credentials = grpc.ssl_server_credentials([(tcp.private_key, tcp.certificate)])
        port = remote.add_secure_port(tcp.address, credentials)
        if port == 0:
            await local.stop(0)
            raise OSError(f"cannot listen on {tcp.address} for the control API")
        await remote.start()
        servers.append(remote)
        log.info("control API on %s (TLS, credential required)", tcp.address)
    log.info("control API on unix:%s", socket_path)
    return servers
