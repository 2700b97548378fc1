"""`boxer host serve`: the daemon on a vm host that starts and stops instances for the controller.

On EC2 it runs on every host of the vm Auto Scaling group as a systemd unit (terraform/vm_hosts.tf);
in the lab it runs in the public hosts (p1..pK), the stand-ins for those hosts. The controller
connects (protocol.py: a mutual proof of the host token), sends each instance's Lambda event, and
hears every exit. An instance is what a function invocation runs, minus Lambda: the same event
parsed by the same code (LambdaEvent), its instance token handed over the same way (a 0600 file
that goes when the instance does: TokenFile; the host never needs the deployment secret for an
instance), the same environment (the handler's agent_env)
and the same `boxer run` command line (the handler's agent_argv) without `--lifetime`, since a vm
instance has none unless the event gives one.

    boxer host serve --listen 0.0.0.0:7100 --token-file /etc/boxer/host-token --slots 1

`--slots`: instances at once. One by default: an app binds its ports on the host's address, so
two instances of one service could not share a host (as in the lab, one instance per host).

What runs here imports nothing of the controller, the lab or the emulators (pyproject's import
contracts): a vm host has `pip install boxer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import shutil
import signal
import socket
import tempfile
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from boxer.backends.aws_lambda.event import LambdaEvent
from boxer.backends.aws_lambda.handler import AgentLaunch, agent_argv, agent_env
from boxer.backends.aws_lambda.secrets import TokenFile
from boxer.backends.errors import EventError
from boxer.backends.vmhost.limits import AUTH_DEADLINE, UNAUTHENTICATED, UNAUTHENTICATED_PER_SOURCE
from boxer.backends.vmhost.output import DEFAULT_CAP, InstanceOutput
from boxer.backends.vmhost.protocol import (
    AuthFailed,
    Exited,
    LogChunk,
    LogsRequested,
    ServerSession,
    StartRequested,
    StopRequested,
)
from boxer.nat_traversal.limits import Refusals
from boxer.nat_traversal.wire import ProtocolError

__all__ = ["HostDaemon", "instance_argv"]

log = logging.getLogger(__name__)

_KEPT_EXITS = 1000  # exits no controller heard yet (it was away), told to the next one
_KEPT_OUTPUTS = 100  # ended instances whose output `logs` still reads (their files stay regardless)
_DRAIN = 2.0  # seconds an ended instance's pipe may stay open (a descendant holding it) before it is cut

# The caps on connections that have not authenticated: limits.py (boxer host serve's flags).
_BACKLOG = 1024
ACCEPT_PAUSE = 0.1  # out of descriptors: accepting again at once would spin
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_READ_LIMIT = 2 ** 16
# Descriptors kept for what the daemon must do under a flood: the controller's connection, and
# each instance's start (its token file, /dev/null, the child's pipes and pidfd).
_SPARE_DESCRIPTORS = 24


def _descriptor_cap(wanted: int) -> int:
    """The cap on unauthenticated connections within the process's descriptor limit: a flood that
    held every descriptor would leave none to start an instance with (EMFILE), even for the
    authenticated controller."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, (soft - _SPARE_DESCRIPTORS) // 2))


def instance_argv(launch: AgentLaunch) -> list[str]:
    """The handler's `boxer run` command line, without `--lifetime` when the event has none (a vm
    instance lives until it is stopped)."""
    argv = agent_argv(launch)
    if launch.event.lifetime is None and "--lifetime" in argv:
        at = argv.index("--lifetime")
        del argv[at:at + 2]
    return argv


@dataclass(eq=False)
class _Instance:
    ref: str
    name: str
    process: asyncio.subprocess.Process
    token_file: TokenFile
    output: InstanceOutput
    pump: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False


class HostDaemon:
    def __init__(self, token: bytes, *, host: str | None = None, slots: int = 1,
                 log_dir: Path | None = None, base_env: Mapping[str, str] | None = None,
                 token_dir: str | None = None,
                 argv_for: Callable[[AgentLaunch], list[str]] | None = None,
                 run_as: tuple[int, int] | None = None,
                 auth_deadline: float = AUTH_DEADLINE, unauthenticated: int | None = None,
                 unauthenticated_per_source: int = UNAUTHENTICATED_PER_SOURCE,
                 log_cap: int = DEFAULT_CAP) -> None:
        """`argv_for`: tests put a plain command in place of `boxer run` (as make_handler's);
        the event, token file, environment, process group and exits stay the real path.
        `run_as`: (uid, gid) the instances run as, not the daemon's user, so that an app cannot
        read the daemon's token (root-only) nor signal the daemon; each instance's token file
        is then given to that user. `log_dir`: where each instance's output is kept (NAME.HOST.log,
        at most `log_cap` bytes before it is rotated to .1: output.py); without one, a folder of
        the daemon's own, removed when it stops."""
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.token = token
        self.host = host or socket.gethostname()
        self.slots = slots
        self.log_dir = log_dir
        self.log_cap = log_cap
        self._own_log_dir: str | None = None
        # ref -> its output: the running instances' and the last _KEPT_OUTPUTS ended ones'.
        self.outputs: OrderedDict[str, InstanceOutput] = OrderedDict()
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.token_dir = token_dir
        self.argv_for = argv_for or instance_argv
        self.run_as = run_as
        self.instances: dict[str, _Instance] = {}
        self._sessions: set[tuple[ServerSession, asyncio.StreamWriter]] = set()
        self._unheard: deque[Exited] = deque(maxlen=_KEPT_EXITS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self.auth_deadline = auth_deadline
        # `unauthenticated`: the cap; by default UNAUTHENTICATED within the descriptor limit.
        self.unauthenticated_cap = unauthenticated or _descriptor_cap(UNAUTHENTICATED)
        if self.unauthenticated_cap < UNAUTHENTICATED and unauthenticated is None:
            log.warning("at most %d unauthenticated connections (not %d): the descriptor limit is low",
                        self.unauthenticated_cap, UNAUTHENTICATED)
        self.unauthenticated_per_source = unauthenticated_per_source
        # Connections accepted and not authenticated yet, oldest first, and how many per address.
        self._unauthenticated: dict[asyncio.StreamWriter, str] = {}
        self._per_source: dict[str, int] = {}
        # Every refusal by kind (auth, protocol, deadline, unauthenticated, unauthenticated-per-source),
        # logged at most once per 10 s per kind with the number since.
        self.refusals = Refusals()

    async def serve(self, host: str, port: int) -> tuple[str, int]:
        """Listen and accept in the background; the address bound."""
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            # A long accept queue: under a flood the controller's SYN waits its turn there
            # (first in, first accepted) instead of being dropped by a queue full of the flood's.
            listener.listen(_BACKLOG)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._accepting = asyncio.get_running_loop().create_task(self._accept_forever(listener))
        bound = listener.getsockname()
        return str(bound[0]), int(bound[1])

    async def _accept_forever(self, listener: socket.socket) -> None:
        """Our own accept loop, not asyncio.start_server's: on EMFILE that one logs a traceback
        for each of its `backlog` tries per tick and schedules as many retries (CPython 3.11:
        28,366 tracebacks in 6 s of a flood under a 64-descriptor limit). Here an accept that
        runs out of descriptors is one counted refusal, logged at most every 10 s, and a pause;
        the caps below free descriptors by closing connections."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self.refusals.refuse("accept", self._now(),
                                         f"cannot accept: {exc.strerror}; pausing {ACCEPT_PAUSE:g} s")
                    await asyncio.sleep(ACCEPT_PAUSE)
                continue  # anything else (ECONNABORTED: it left the queue) costs that connection
            try:
                reader, writer = await asyncio.open_connection(sock=sock, limit=_READ_LIMIT)
            except OSError:
                sock.close()
                continue
            self._spawn(self._connection(reader, writer))

    # -- one controller connection -----------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _admit(self, writer: asyncio.StreamWriter, source: str) -> bool:
        """Count a new connection as unauthenticated, within the caps; False: it is closed."""
        if self._per_source.get(source, 0) >= self.unauthenticated_per_source:
            self.refusals.refuse("unauthenticated-per-source", self._now(),
                                 f"{source} already holds {self.unauthenticated_per_source} unauthenticated "
                                 "connections; closing its new one")
            return False
        if len(self._unauthenticated) >= self.unauthenticated_cap:
            oldest, oldest_source = next(iter(self._unauthenticated.items()))
            self.refusals.refuse("unauthenticated", self._now(),
                                 f"{self.unauthenticated_cap} connections have not authenticated; "
                                 f"closing the oldest, from {oldest_source}")
            self._authenticated(oldest)
            oldest.transport.abort()  # its read ends; its task cleans up
        self._unauthenticated[writer] = source
        self._per_source[source] = self._per_source.get(source, 0) + 1
        return True

    def _authenticated(self, writer: asyncio.StreamWriter) -> None:
        """No longer counted as unauthenticated (it authenticated, or is gone)."""
        source = self._unauthenticated.pop(writer, None)
        if source is not None:
            self._per_source[source] -= 1
            if not self._per_source[source]:
                del self._per_source[source]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if not self._admit(writer, source):
            writer.transport.abort()
            return
        session = ServerSession(self.token, self.host, self.slots)
        writer.write(session.data_to_send())
        try:
            await self._converse(session, reader, writer)
        except AuthFailed as exc:
            self.refusals.refuse("auth", self._now(), f"{peer}: {exc}")
            writer.write(session.data_to_send())
        except ProtocolError as exc:
            if session.authenticated:
                log.warning("closing the controller's connection %s: %s", peer, exc)
            else:
                self.refusals.refuse("protocol", self._now(), f"{peer}: {exc}")
        except asyncio.TimeoutError:
            self.refusals.refuse("deadline", self._now(),
                                 f"{peer} did not authenticate within {self.auth_deadline:g} s")
        except OSError:
            pass
        finally:
            self._authenticated(writer)
            self._sessions.discard((session, writer))
            with contextlib.suppress(OSError):
                writer.close()

    async def _converse(self, session: ServerSession, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        # One deadline for the whole handshake, not one per read: a peer trickling a byte every
        # few seconds must not hold its connection forever.
        deadline = self._now() + self.auth_deadline
        while True:
            timeout = None if session.authenticated else max(0.0, deadline - self._now())
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                return
            for event in session.receive(data):
                if event == "authenticated":
                    self._authenticated(writer)
                    exits = list(self._unheard)
                    self._unheard.clear()
                    session.welcome({ref: i.process.pid for ref, i in self.instances.items()}, exits)
                    self._sessions.add((session, writer))
                    log.info("controller %s connected", writer.get_extra_info("peername"))
                elif event == "ping":
                    session.pong(len(self.instances))
                elif isinstance(event, StartRequested):
                    await self._start(session, event)
                elif isinstance(event, StopRequested):
                    self._spawn(self._stop(event.ref, event.grace))
                elif isinstance(event, LogsRequested):
                    self._answer_logs(session, event)
                    # Each answer may be a MiB: sent before the next request of this read is read.
                    writer.write(session.data_to_send())
                    await writer.drain()
            writer.write(session.data_to_send())
            await writer.drain()

    def _answer_logs(self, session: ServerSession, request: LogsRequested) -> None:
        output = self.outputs.get(request.ref)
        if output is None:
            session.log_failed(request.id, f"no output of {request.ref} on vm host {self.host} (never ran here,"
                               f" or ended before the last {_KEPT_OUTPUTS} that ended)")
            return
        start, pieces = output.read(request.offset)
        if not pieces:
            pieces = [(start, b"", output.marks[-1][1] if output.marks else output.started_at)]
        for at, (offset, data, when) in enumerate(pieces):
            session.log(LogChunk(request.id, offset, data, when, output.size, output.running,
                                 at == len(pieces) - 1))

    def _output_folder(self) -> Path:
        if self.log_dir is not None:
            return self.log_dir
        if self._own_log_dir is None:
            self._own_log_dir = tempfile.mkdtemp(prefix="boxer-host-output-")
        return Path(self._own_log_dir)

    # -- instances -----------------------------------------------------------------------------

    async def _start(self, session: ServerSession, request: StartRequested) -> None:
        ref = request.ref
        if ref in self.instances:
            session.start_failed(ref, f"{ref} already runs here")
            return
        if len(self.instances) >= self.slots:
            session.start_failed(ref, f"all {self.slots} slots of vm host {self.host} are busy")
            return
        try:
            event = LambdaEvent.from_dict(request.event)
        except EventError as exc:
            session.start_failed(ref, str(exc))
            return
        output: InstanceOutput | None = None
        user: dict[str, object] = {}
        try:
            # Out of descriptors (a flood) or disk: the controller hears why, and its
            # connection stays (an OSError here once closed it without a word).
            token_file = TokenFile(event.token, parent=self.token_dir)
            try:
                if self.run_as is not None:
                    uid, gid = self.run_as
                    for path in (token_file.path.parent, token_file.path):
                        os.chown(path, uid, gid)
                    user = {"user": uid, "group": gid, "extra_groups": []}
                output = InstanceOutput(self._output_folder() / f"{event.name}.{self.host}.log", self.log_cap)
            except OSError:
                token_file.remove()
                raise
        except OSError as exc:
            session.start_failed(ref, f"cannot start boxer run on {self.host}: {exc.strerror}")
            return
        launch = AgentLaunch(event, token_file.path, event.lifetime or 0.0)
        try:
            # Its output through a pipe of ours, not straight to the file: the daemon caps the
            # file (and the app cannot rewrite what it logged), and knows when each line came.
            process = await asyncio.create_subprocess_exec(
                *self.argv_for(launch), env=agent_env(launch, self.base_env),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, limit=65536, **user)  # type: ignore[arg-type]  # its group: stopped as one
        except OSError as exc:
            token_file.remove()
            output.close()
            session.start_failed(ref, f"cannot start boxer run on {self.host}: {exc.strerror}")
            return
        instance = _Instance(ref, event.name, process, token_file, output)
        self._keep_output(ref, output)
        assert process.stdout is not None
        instance.pump = asyncio.get_running_loop().create_task(self._pump(output, process.stdout))
        self.instances[ref] = instance
        session.started(ref, process.pid)
        log.info("started %s (%s) as pid %d", event.name, ref, process.pid)
        self._spawn(self._wait(instance))

    def _keep_output(self, ref: str, output: InstanceOutput) -> None:
        self.outputs.pop(ref, None)
        self.outputs[ref] = output
        ended = [r for r, o in self.outputs.items() if not o.running and r != ref]
        for old in ended[:max(0, len(ended) - _KEPT_OUTPUTS)]:
            del self.outputs[old]

    async def _pump(self, output: InstanceOutput, stream: asyncio.StreamReader) -> None:
        while data := await stream.read(65536):
            rotations = output.rotations
            try:
                output.write(data)
            except OSError as exc:  # a full disk: the output is dropped, the instance runs on
                log.warning("cannot keep the output of %s: %s", output.path, exc.strerror)
                continue
            if output.rotations != rotations:  # the instances before it in that file lose theirs
                for other in self.outputs.values():
                    if other is not output and other.path == output.path and not other.running:
                        other.lost_file()

    async def _wait(self, instance: _Instance) -> None:
        code = await instance.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(instance.process.pid, signal.SIGKILL)  # what the app left in its group
        if instance.pump is not None:  # its last lines before its exit is told
            try:
                await asyncio.wait_for(asyncio.shield(instance.pump), _DRAIN)
            except asyncio.TimeoutError:  # a descendant in another session holds the pipe
                instance.pump.cancel()
        instance.output.close()
        if instance.process.stdout is not None:
            instance.process.stdout.feed_eof()
        instance.token_file.remove()
        self.instances.pop(instance.ref, None)
        instance.ended.set()
        status = code if code >= 0 else 128 - code  # shell convention for a signal
        how = "stopped" if instance.stopping else "exited"
        exit = Exited(instance.ref, status, f"{how} with status {status} on vm host {self.host}")
        log.info("%s (%s) %s", instance.name, instance.ref, exit.reason)
        self._tell(exit)

    def _tell(self, exit: Exited) -> None:
        if not self._sessions:
            self._unheard.append(exit)
            return
        for session, writer in list(self._sessions):
            session.exited(exit)
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(session.data_to_send())

    async def _stop(self, ref: str, grace: float) -> None:
        instance = self.instances.get(ref)
        if instance is None:
            return  # ended already: its exit was (or will be) told
        instance.stopping = True
        pid = instance.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # the agent stops its app, deregisters, exits
            os.killpg(pid, signal.SIGCONT)  # a frozen (SIGSTOP'd) one acts on it only once resumed
        try:
            await asyncio.wait_for(instance.ended.wait(), grace)
        except asyncio.TimeoutError:
            log.warning("%s ignored SIGTERM for %.1f s; killing it", instance.name, grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, grace: float = 3.0) -> None:
        """Stop every instance (systemd stops the unit: the host is going away)."""
        if self._accepting is not None:
            self._accepting.cancel()  # before the close: its sock_accept watches the descriptor
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._listener is not None:
            self._listener.close()
        await asyncio.gather(*(self._stop(ref, grace) for ref in list(self.instances)),
                             return_exceptions=True)
        waits = [i.ended.wait() for i in self.instances.values()]
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits), grace + 2)
        for task in list(self._tasks):
            task.cancel()
        for output in self.outputs.values():
            output.close()
        if self._own_log_dir is not None:
            shutil.rmtree(self._own_log_dir, ignore_errors=True)


async def run_daemon(token: bytes, listen: tuple[str, int], *, slots: int, log_dir: Path | None,
                     host: str | None = None, run_as: tuple[int, int] | None = None,
                     auth_deadline: float = AUTH_DEADLINE, unauthenticated: int | None = None,
                     unauthenticated_per_source: int = UNAUTHENTICATED_PER_SOURCE, log_cap: int = DEFAULT_CAP) -> int:
    daemon = HostDaemon(token, host=host, slots=slots, log_dir=log_dir, run_as=run_as, log_cap=log_cap,
                        auth_deadline=auth_deadline, unauthenticated=unauthenticated,
                        unauthenticated_per_source=unauthenticated_per_source)
    try:
        bound = await daemon.serve(*listen)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", *listen, exc.strerror)
        return 2
    # One line when it serves: the lab and tests wait for it, systemd's journal keeps it.
    print(f"boxer host daemon {daemon.host} serving on {bound[0]}:{bound[1]} ({slots} slots)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await daemon.close()
    return 0
