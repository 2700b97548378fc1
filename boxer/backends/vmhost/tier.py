"""The controller's side of the vm tier: instances of `vm` placement on the vm hosts' daemons.

    tier = VmTier(StaticHosts(["198.18.1.1:7100"]), host_token(secret), backend="lambda",
                  event_for=lambda spec: backend.event(spec))
    handle = await tier.launch(spec)    # details: host, pid, tier "vm"; ends on the daemon's `exited`
    await tier.stop(handle)             # SIGTERM on the host, SIGKILL after the grace

The hosts' addresses come from a source (discovery.py: the Auto Scaling group through EC2, or a
fixed list), asked again every `refresh_every` seconds and whenever no known host can take an
instance (a group that scaled out). One connection per host, kept open: each launch is one
frame and one answer, no handshake. A launch goes to the reachable host with the most free slots
(the daemon says how many it has; the tier counts what it started there); with every host full
it waits up to `host_wait` for one to free up, as the lab backend does (a replacement is asked
for in the tick its predecessor is stopped). With no host reachable at all it fails at once,
naming each address and why.

A lost connection fails only what was being started on it: instances on a vm host outlive the
controller's connection (their agents are the coordinator's business). While instances of ours
run there the tier connects again (0.5 s, doubling to 10 s), and the daemon's `welcome` says what
runs and what ended meanwhile; the handles follow.

They outlive the controller too. A resumed controller (controller/resume.py) adopts the vm
instances its predecessor started: `adopt(spec)` makes a handle and connects to every host at
once, and the daemon's `welcome` (what runs there, by ref) binds it: an instance's ref is its
name and agent id (`kv-1.<16 hex>`), which the roster keeps, so the handle holds that slot, a
stop goes to that daemon, and its `exited` ends the handle, as for one launched here. What runs
there under no adopted ref is foreign: its slot counts as taken, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from boxer.backends.aws_lambda.event import INSTANCE_ID_ENV
from boxer.backends.base import InstanceHandle, InstanceSpec
from boxer.backends.errors import CapacityError, LaunchError
from boxer.backends.vmhost.protocol import (
    AuthFailed,
    ClientSession,
    Exited,
    LogChunk,
    LogFailed,
    Pong,
    Started,
    StartFailed,
    Welcome,
)
from boxer.nat_traversal.wire import ProtocolError

__all__ = ["HostSource", "LogRead", "NoVmHost", "StaticHosts", "VmLogError", "VmTier"]

log = logging.getLogger(__name__)

Address = tuple[str, int]


class HostSource(Protocol):
    async def addresses(self) -> list[Address]: ...

    def describe(self) -> str: ...


class StaticHosts:
    """A fixed list of host daemons ("ip:port"): the lab's public hosts, or hosts one keeps."""

    def __init__(self, addresses: list[str] | list[Address]) -> None:
        self._addresses = [_parse(a) if isinstance(a, str) else (a[0], int(a[1])) for a in addresses]

    async def addresses(self) -> list[Address]:
        return list(self._addresses)

    def describe(self) -> str:
        return f"{len(self._addresses)} listed vm host(s)"


def _parse(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"vm host {text!r} is not 'host:port'")
    return host, int(port)


class VmLogError(Exception):
    """An instance's output could not be read from its vm host; the message says why."""


class LogRead:
    """One answer to `logs`: the chunks of output from `start`, and how much there is in all."""

    def __init__(self) -> None:
        self.chunks: list[LogChunk] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def start(self) -> int:
        return self.chunks[0].offset if self.chunks else 0

    @property
    def end(self) -> int:
        return self.chunks[-1].offset + len(self.chunks[-1].data) if self.chunks else 0

    @property
    def size(self) -> int:
        return self.chunks[-1].size if self.chunks else 0

    @property
    def running(self) -> bool:
        return bool(self.chunks) and self.chunks[-1].running


class NoVmHost(LaunchError):
    def __init__(self, instance: str, why: str) -> None:
        super().__init__(instance, why, code="NoVmHost")


class _HostLink:
    """One host daemon, as the tier sees it."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.name = f"{address[0]}:{address[1]}"
        self.session: ClientSession | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.slots = 0
        self.host_name: str | None = None  # what the daemon calls its host (`--name`, else its hostname)
        self.others: dict[str, int] = {}  # ref -> pid: running there, not ours (an earlier controller's)
        self.pending: dict[str, asyncio.Future[int]] = {}
        self.handles: dict[str, InstanceHandle] = {}  # ref -> what runs there of ours
        self.error: str | None = None
        self.connecting: asyncio.Task[bool] | None = None
        self.log_reads: dict[int, LogRead] = {}

    @property
    def up(self) -> bool:
        return self.session is not None and self.session.ready and self.writer is not None

    @property
    def foreign(self) -> int:
        return len(self.others)

    @property
    def free(self) -> int:
        return self.slots - self.foreign - len(self.handles) - len(self.pending)

    def send(self) -> None:
        assert self.session is not None and self.writer is not None
        self.writer.write(self.session.data_to_send())


class VmTier:
    def __init__(self, source: HostSource, token: bytes, *, backend: str,
                 event_for: Callable[[InstanceSpec], dict[str, Any]], connect_timeout: float = 3.0,
                 start_timeout: float = 15.0, host_wait: float = 10.0, stop_grace: float = 3.0,
                 refresh_every: float = 30.0, reconnect_delay: float = 0.5) -> None:
        self.source = source
        self._token = token
        self.backend = backend
        self._event_for = event_for
        self.connect_timeout = connect_timeout
        self.start_timeout = start_timeout
        self.host_wait = host_wait
        self.stop_grace = stop_grace
        self.refresh_every = refresh_every
        self.reconnect_delay = reconnect_delay
        self.links: dict[Address, _HostLink] = {}
        self._refreshed_at: float | None = None
        self._refs = itertools.count(1)
        self._freed = asyncio.Event()
        self._lock = asyncio.Lock()  # one placement decision at a time: no double booking
        self._closed = False
        self.launched_total = 0
        self._log_ids = itertools.count(1)
        self._adopted: dict[str, InstanceHandle] = {}  # ref -> an adopted handle not yet bound
        self._attaching: asyncio.Task[None] | None = None

    # -- hosts ---------------------------------------------------------------------------------

    async def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self._refreshed_at is not None and now - self._refreshed_at < self.refresh_every:
            return
        self._refreshed_at = now
        addresses = await self.source.addresses()
        for address in addresses:
            if address not in self.links:
                self.links[address] = _HostLink(address)
        for address, link in list(self.links.items()):
            # A host gone from the group keeps its link while instances of ours run there.
            if address not in addresses and not link.handles and not link.pending:
                self._drop(link)
                del self.links[address]

    async def _connect_all(self) -> None:
        tasks = []
        for link in self.links.values():
            if not link.up:
                if link.connecting is None or link.connecting.done():
                    link.connecting = asyncio.get_running_loop().create_task(self._connect(link))
                tasks.append(link.connecting)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _connect(self, link: _HostLink) -> bool:
        session = ClientSession(self._token)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*link.address),
                                                    self.connect_timeout)
        except asyncio.TimeoutError:
            link.error = f"no answer within {self.connect_timeout:g} s"
            return False
        except OSError as exc:
            link.error = exc.strerror or str(exc)
            return False
        try:
            welcome, after = await asyncio.wait_for(self._handshake(session, reader, writer),
                                                    self.connect_timeout)
        except (AuthFailed, ProtocolError, OSError, asyncio.TimeoutError, EOFError) as exc:
            link.error = str(exc) or type(exc).__name__
            writer.close()
            return False
        link.session, link.writer, link.error = session, writer, None
        link.slots = welcome.slots
        link.host_name = welcome.host
        self._reconcile(link, welcome)
        for event in after:
            self._dispatch(link, event)
        link.reader_task = asyncio.get_running_loop().create_task(self._read(link, reader))
        log.info("vm host %s (%s) up: %d slots, %d running", link.name, welcome.host, welcome.slots,
                 len(welcome.running))
        return True

    @staticmethod
    async def _handshake(session: ClientSession, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> tuple[Welcome, list[Any]]:
        while True:
            data = await reader.read(65536)
            if not data:
                raise EOFError("the host daemon closed the connection")
            events = session.receive(data)
            writer.write(session.data_to_send())
            for at, event in enumerate(events):
                if isinstance(event, Welcome):
                    return event, events[at + 1:]  # what came in the same read follows it

    def _reconcile(self, link: _HostLink, welcome: Welcome) -> None:
        link.others = {ref: pid for ref, pid in welcome.running.items() if ref not in link.handles}
        for ref in list(link.others):
            if ref in self._adopted:  # a predecessor's, adopted: ours now
                self._bind(link, ref, self._adopted.pop(ref))
        for exit in welcome.exits:
            self._exited(link, exit)
        for ref, handle in list(link.handles.items()):
            if ref not in welcome.running:  # neither running nor told ended: the daemon restarted
                link.handles.pop(ref)
                handle.details["exit_status"] = None
                handle.mark_failed(f"lost on vm host {link.name} (its daemon restarted)")

    @staticmethod
    def _bind(link: _HostLink, ref: str, handle: InstanceHandle) -> None:
        pid = link.others.pop(ref)
        handle.details.update({"host": link.host_name or link.name, "daemon": link.name, "pid": pid})
        link.handles[ref] = handle
        log.info("adopted %s on vm host %s (pid %d)", handle.spec.name, link.name, pid)

    async def _read(self, link: _HostLink, reader: asyncio.StreamReader) -> None:
        assert link.session is not None
        why = "the host daemon closed the connection"
        try:
            while data := await reader.read(65536):
                for event in link.session.receive(data):
                    self._dispatch(link, event)
        except (ProtocolError, OSError) as exc:
            why = str(exc)
        except asyncio.CancelledError:
            return
        self._lost(link, why)

    def _dispatch(self, link: _HostLink, event: Any) -> None:
        if isinstance(event, Started):
            future = link.pending.get(event.ref)
            if future is not None and not future.done():
                future.set_result(event.pid)
        elif isinstance(event, StartFailed):
            future = link.pending.get(event.ref)
            if future is not None and not future.done():
                future.set_exception(LaunchError(event.ref, f"vm host {link.name}: {event.reason}",
                                                 code="StartFailed"))
        elif isinstance(event, Exited):
            self._exited(link, event)
        elif isinstance(event, LogChunk):
            read = link.log_reads.get(event.id)
            if read is not None and not read.done.done():
                read.chunks.append(event)
                if event.end:
                    read.done.set_result(None)
        elif isinstance(event, LogFailed):
            read = link.log_reads.get(event.id)
            if read is not None and not read.done.done():
                read.done.set_exception(VmLogError(f"vm host {link.name}: {event.reason}"))
        elif isinstance(event, Pong):
            pass

    def _lost(self, link: _HostLink, why: str) -> None:
        log.warning("lost vm host %s: %s", link.name, why)
        link.error = why
        for future in link.pending.values():
            if not future.done():
                future.set_exception(NoVmHost(link.name, f"lost vm host {link.name} while starting: {why}"))
        for read in link.log_reads.values():
            if not read.done.done():
                read.done.set_exception(VmLogError(f"lost vm host {link.name} while reading a log: {why}"))
        self._drop(link)
        self._freed.set()
        if link.handles and not self._closed:
            # Instances of ours run there: get the connection back, so their exits (kept by the
            # daemon meanwhile) end their handles and their slots count free again.
            link.connecting = asyncio.get_running_loop().create_task(self._reconnect(link))

    async def _reconnect(self, link: _HostLink) -> bool:
        delay = self.reconnect_delay
        while not self._closed and link.handles:
            await asyncio.sleep(delay)
            if await self._connect(link):
                return True
            delay = min(delay * 2, 10.0)
        return False

    @staticmethod
    def _drop(link: _HostLink) -> None:
        if link.writer is not None:
            link.writer.close()
        link.session = link.writer = None

    def _exited(self, link: _HostLink, exit: Exited) -> None:
        handle = link.handles.pop(exit.ref, None)
        self._freed.set()
        if handle is None:
            link.others.pop(exit.ref, None)
            return
        handle.details["exit_status"] = exit.status
        if exit.status == 0:
            handle.mark_stopped(exit.reason)
        else:
            handle.mark_failed(exit.reason)

    # -- launch, stop --------------------------------------------------------------------------

    async def _pick(self, spec: InstanceSpec) -> _HostLink:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.host_wait
        forced = False
        while True:
            await self._refresh(force=forced)
            await self._connect_all()
            up = [link for link in self.links.values() if link.up]
            free = [link for link in up if link.free > 0]
            if free:
                return max(free, key=lambda link: link.free)  # spread: the emptiest host first
            if not forced:  # maybe the group grew: ask the source now, not at the next refresh
                forced = True
                continue
            if not up:
                raise NoVmHost(spec.name, self._unreachable())
            left = deadline - loop.time()
            if left <= 0:
                raise CapacityError(spec.name, sum(link.slots for link in up), self.host_wait)
            self._freed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._freed.wait(), min(left, 1.0))

    def _unreachable(self) -> str:
        if not self.links:
            error = getattr(self.source, "error", None)  # a look-up that failed says why
            if error:
                return f"no vm host to start it on: {error}"
            return f"no vm host to start it on: {self.source.describe()} has none running"
        tried = "; ".join(f"{link.name}: {link.error or 'not connected'}" for link in self.links.values())
        return (f"no vm host reachable ({tried}): are the vm hosts running `boxer host serve`, and may the"
                " controller reach their port (security group)?")

    @staticmethod
    def _ref(spec: InstanceSpec, serial: int) -> str:
        """The daemon's name for an instance: its name and agent id, which the roster keeps, so
        a resumed controller finds it again (and no new ref repeats one of a predecessor's)."""
        agent_id = spec.env.get(INSTANCE_ID_ENV)
        return f"{spec.name}.{agent_id}" if agent_id else f"{spec.name}.{serial}"

    def adopt(self, spec: InstanceSpec, handle: InstanceHandle | None = None) -> InstanceHandle:
        """An instance a crashed controller started on some vm host (its agent registered):
        a handle bound once a host's `welcome` lists its ref, holding its slot from then on.
        Every host is connected to at once (in the background), not at the next launch."""
        ref = self._ref(spec, 0)
        handle = handle or InstanceHandle(spec=spec, backend=self.backend, details={})
        handle.details.update({"tier": "vm", "ref": ref, "adopted": True})
        for link in self.links.values():
            if link.up and ref in link.others:  # connected already: the welcome listed it
                self._bind(link, ref, handle)
                return handle
        self._adopted[ref] = handle
        handle.on_end(lambda _h: self._adopted.pop(ref, None))
        if self._attaching is None or self._attaching.done():
            self._attaching = asyncio.get_running_loop().create_task(self._attach())
        return handle

    async def reachable(self) -> set[str]:
        """The hosts ("ip:port") whose daemons answer with our token now (connected, kept)."""
        await self._refresh(force=True)
        await self._connect_all()
        return {link.name for link in self.links.values() if link.up}

    async def _attach(self) -> None:
        await self._refresh(force=True)
        await self._connect_all()
        if self._adopted:
            log.info("vm tier: %d adopted instance(s) found on no vm host (ended meanwhile?)", len(self._adopted))

    async def launch(self, spec: InstanceSpec) -> InstanceHandle:
        event = self._event_for(spec)
        ref = self._ref(spec, next(self._refs))
        async with self._lock:
            link = await self._pick(spec)
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            link.pending[ref] = future
            assert link.session is not None
            link.session.start(ref, event)
            link.send()
        started = time.monotonic()
        try:
            pid = await asyncio.wait_for(asyncio.shield(future), self.start_timeout)
        except asyncio.TimeoutError:
            raise LaunchError(spec.name, f"vm host {link.name} did not answer within {self.start_timeout:g} s",
                              code="StartTimeout") from None
        except LaunchError as exc:
            raise LaunchError(spec.name, str(exc).split(": ", 1)[-1], code=exc.code) from None
        finally:
            link.pending.pop(ref, None)
        handle = InstanceHandle(spec=spec, backend=self.backend, details={
            "tier": "vm", "host": link.host_name or link.name, "daemon": link.name, "pid": pid, "ref": ref,
            "start_seconds": round(time.monotonic() - started, 3)})
        link.handles[ref] = handle
        self.launched_total += 1
        log.info("launched %s on vm host %s (pid %d)", spec.name, link.name, pid)
        return handle

    async def stop(self, handle: InstanceHandle) -> None:
        if handle.ended:
            return
        ref = handle.details.get("ref")
        if ref in self._adopted and self._attaching is not None and not self._attaching.done():
            with contextlib.suppress(asyncio.TimeoutError):  # adopted, not bound yet: it may be in a moment
                await asyncio.wait_for(asyncio.shield(self._attaching), 2 * self.connect_timeout)
        link = next((link for link in self.links.values() if ref in link.handles), None)
        if link is not None and not link.up:  # a stop is worth one try on a fresh connection
            if link.connecting is not None and not link.connecting.done():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(link.connecting), 2 * self.connect_timeout)
            else:
                await self._connect(link)
        if link is None or not link.up:
            handle.mark_stopped("stopped (its vm host is unreachable; the coordinator stopped its agent)")
            return
        assert link.session is not None
        link.session.stop(str(ref), self.stop_grace)
        link.send()
        ended = asyncio.get_running_loop().create_future()
        handle.on_end(lambda _h: ended.done() or ended.set_result(None))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ended, self.stop_grace + 2.0)
        handle.mark_stopped("stopped")

    async def read_log(self, daemon: str, ref: str, offset: int, timeout: float = 10.0) -> LogRead:
        """The output of instance `ref` on the host daemon `daemon` (its handle's details) from
        byte `offset` (negative: its last -offset bytes); at most protocol.LOG_REQUEST bytes per
        call, so a follower asks again from `end`. VmLogError when the host cannot be asked."""
        try:
            address = _parse(daemon)
        except ValueError as exc:
            raise VmLogError(str(exc)) from None
        link = self.links.get(address)
        if link is None:
            link = self.links[address] = _HostLink(address)
        if not link.up and not await self._connect(link):
            raise VmLogError(f"cannot reach vm host {link.name} for the output of {ref}: {link.error}")
        assert link.session is not None
        id = next(self._log_ids)
        read = link.log_reads[id] = LogRead()
        link.session.logs(id, ref, offset)
        link.send()
        try:
            await asyncio.wait_for(asyncio.shield(read.done), timeout)
        except asyncio.TimeoutError:
            raise VmLogError(f"vm host {link.name} did not send the output of {ref} within {timeout:g} s") from None
        finally:
            link.log_reads.pop(id, None)
        return read

    def status(self) -> dict[str, Any]:
        up = [link for link in self.links.values() if link.up]
        return {
            "hosts": len(self.links), "reachable": len(up),
            "slots": sum(link.slots for link in up),
            "in_use": sum(len(link.handles) + link.foreign for link in up),
            "launched_total": self.launched_total,
        }

    async def close(self) -> None:
        self._closed = True
        if self._attaching is not None:
            self._attaching.cancel()
        for link in self.links.values():
            if link.reader_task is not None:
                link.reader_task.cancel()
            if link.connecting is not None:
                link.connecting.cancel()
            self._drop(link)
        close_source = getattr(self.source, "close", None)
        if close_source is not None:
            await close_source()
