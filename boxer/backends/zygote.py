"""The lab's agent zygote: `boxer run` initialised once per deployment, forked for each instance.

On AWS Lambda a function's init phase (the runtime starting, the handler's modules imported) runs
before the invocation it serves. The lab's analog: the `local` backend starts one zygote when it
is created. The zygote imports everything `boxer run` needs once (about 0.3 s of CPU that every
instance paid before, 12 agents on 2 cores were 1.7 s of CPU), then for each launch forks a
child that:

  * starts a session of its own (as the backend's `start_new_session` did);
  * joins the host's network namespace exactly as `ip netns exec` does: setns(CLONE_NEWNET),
    then a mount namespace of its own with that namespace's /sys and the /etc/netns/<name>
    files bound over /etc;
  * takes the instance's environment, working directory and stdio (stdin /dev/null, stdout and
    stderr appended to the instance's log);
  * runs `boxer run` with the instance's arguments and exits with its status.

The application is still exec'd fresh by the agent, under the interposer, exactly as before.
What differs from `ip netns exec python -m boxer run ...`: the agents share the zygote's hash
seed; variables Python or the agent read at start or import (`IMPORT_TIME_ENV`, PYTHON*, LANG,
LC_*) are the zygote's, so an instance whose environment sets them differently is started the
old way instead; and the command line in /proc/PID/cmdline is written over the zygote's
(started with TITLE_ROOM bytes of room for it), so it ends in NUL padding and may be cut.

Protocol, JSON lines. Backend -> zygote (stdin):
    {"op": "spawn", "id": N, "netns": NAME, "argv": [PYTHON, "-m", "boxer", "run", ...],
     "env": {...}, "cwd": DIR|null, "log": PATH|null}
    {"op": "signal", "pid": PID, "sig": N, "group": BOOL}
Zygote -> backend (stdout):
    {"ready": PID}                      imported, forking from now on
    {"id": N, "pid": PID} / {"id": N, "error": TEXT}
    {"exit": PID, "status": RC}         RC as Popen.returncode: -N when killed by signal N
Signals go through the zygote because it is the children's parent: it signals a pid only while
that child is unreaped, so a recycled pid is never signalled. On EOF of its stdin (the
controller stopped or died) the zygote exits; its children run on, as children of `ip netns
exec` did, until they are stopped or `boxer down` removes the lab.

    python -m boxer.cli.zygote

The process itself is started through the CLI's entry (`boxer/cli/zygote.py`), which hands
`main()` the command each child runs: this module never imports the CLI, that depends on us.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from boxer._python import module_argv, split_module_argv

__all__ = ["IMPORT_TIME_ENV", "Zygote", "ZygoteError", "incompatibility", "join_netns", "main",
           "start_for_adoption"]

# Read when the agent's modules are imported (so fixed in the zygote): an instance whose
# environment gives any of them another value than the zygote's is not forked. None today: the
# agent reads its settings (BOXER_NAT_IDLE_TIMEOUT, BOXER_WARM_SPARES) by a function when it
# runs, after the child took its instance's environment; tests/test_zygote.py keeps this true.
IMPORT_TIME_ENV: tuple[str, ...] = ()
PRELOAD = (
    "boxer.agent.runner", "boxer.agent.dns", "boxer.agent.natprobe",
    "boxer.agent.fastpath", "boxer._aio", "psutil", "uvloop", "ctypes", "boxer.nat_traversal.relay",
    "encodings.idna",  # asyncio's getaddrinfo encodes host names with it: 6 ms in every child
)

TITLE_ROOM = 1024  # bytes of command line each child can show (its `boxer run` argv)
NETNS_DIR = "/run/netns"
NETNS_ETC_DIR = "/etc/netns"
_CLONE_NEWNET = 0x40000000
_CLONE_NEWNS = 0x00020000
_MS_RDONLY = 1
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_SLAVE = 1 << 19
_MNT_DETACH = 2


def incompatibility(zygote_env: Mapping[str, str], env: Mapping[str, str]) -> str | None:
    """Why an instance with environment `env` cannot be forked from a zygote started with
    `zygote_env`, or None when it can."""
    # The interpreter reads PYTHON* and the locale (LANG, LC_*: its text encodings) at startup.
    keys = set(IMPORT_TIME_ENV) | {k for k in (*zygote_env, *env) if k.startswith(("PYTHON", "LC_"))
                                   or k == "LANG"}
    differ = sorted(k for k in keys if zygote_env.get(k) != env.get(k))
    return f"{', '.join(differ)} differ from the zygote's" if differ else None


def without_secret(env: Mapping[str, str]) -> dict[str, str]:
    """The zygote's environment: never the deployment secret (nor its file), since a forked
    agent's /proc/PID/environ is the zygote's; each instance gets its token in its own env."""
    from boxer.nat_traversal.auth import SECRET_ENV

    return {k: v for k, v in env.items() if k not in SECRET_ENV}


# --- the backend's side ------------------------------------------------------------------------

class ZygoteError(Exception):
    """The zygote could not be started, or is gone."""


class Zygote:
    """A running zygote, seen from the backend (asyncio): spawn, signal, wait for exits.

        zygote = Zygote(sys.executable, env, log_path)
        await zygote.start()                  # returns once it has imported everything
        pid = await zygote.spawn("bx-web-h1", ["run", "--name", "web-1", "--", "srv"], env, cwd, log)
        zygote.signal(pid, signal.SIGTERM)
        status = await zygote.wait(pid)       # returncode convention (-N: signal N)
    """

    def __init__(self, python: str, env: Mapping[str, str], log: str | None = None,
                 start_timeout: float = 30.0) -> None:
        self.python = python
        self.env = without_secret(env)
        self.log = log
        self.start_timeout = start_timeout
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stdin: asyncio.StreamWriter | None = None  # our requests
        self._stdout: asyncio.StreamReader | None = None  # its answers
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._ids = iter(range(1, 1 << 62))
        self._spawning: dict[int, asyncio.Future[int]] = {}  # request id -> its pid
        self._exits: dict[int, asyncio.Future[int]] = {}  # pid -> its returncode
        self.alive = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        err = open(self.log, "ab") if self.log else asyncio.subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = await asyncio.create_subprocess_exec(
                # The last argument only reserves room for the children's command lines.
                *module_argv("boxer.cli.zygote", "-" * TITLE_ROOM, python=self.python), env=self.env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                start_new_session=True)
        except OSError as exc:
            raise ZygoteError(f"cannot start the zygote: {exc.strerror}") from None
        finally:
            if err is not asyncio.subprocess.DEVNULL:
                err.close()
        self.pid = self._proc.pid
        self._stdin, self._stdout = self._proc.stdin, self._proc.stdout
        await self._until_ready()

    async def adopt(self, pid: int, answers_fd: int, requests_fd: int) -> None:
        """Take over a zygote another process started (`boxer up` starts it before it builds
        the lab, so that it has imported everything by the first launch) from the two ends of
        its pipes we inherited: its stdout to read, its stdin to write."""
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self.pid = pid
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(answers_fd, "rb", buffering=0))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(requests_fd, "wb", buffering=0))
        self._stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        self._stdout = reader
        await self._until_ready()

    async def _until_ready(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.start_timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise ZygoteError(f"the zygote did not get ready in {self.start_timeout:g} s") from None
        self.alive = True

    async def _read(self) -> None:
        assert self._stdout is not None
        try:
            while line := await self._stdout.readline():
                msg = json.loads(line)
                if "ready" in msg:
                    if not self._ready.done():
                        self._ready.set_result(None)
                elif "exit" in msg:
                    future = self._exits.get(msg["exit"])
                    if future is not None and not future.done():
                        future.set_result(int(msg["status"]))
                elif "id" in msg:
                    future = self._spawning.pop(msg["id"], None)
                    if "pid" in msg:
                        # Before any exit of that pid: the zygote answers right after fork.
                        self._exits[msg["pid"]] = asyncio.get_running_loop().create_future()
                    if future is not None and not future.done():
                        if "pid" in msg:
                            future.set_result(int(msg["pid"]))
                        else:
                            future.set_exception(ZygoteError(msg.get("error", "spawn failed")))
        finally:
            self.alive = False
            lost = ZygoteError("the zygote is gone")
            for future in [self._ready, *self._spawning.values(), *self._exits.values()]:
                if future is not None and not future.done():
                    future.set_exception(lost)
                    future.exception()  # retrieved: whoever awaits it gets it too

    def _write(self, request: dict) -> None:
        if not self.alive or self._stdin is None:
            raise ZygoteError("the zygote is gone")
        self._stdin.write((json.dumps(request, separators=(",", ":")) + "\n").encode())

    async def spawn(self, netns: str, argv: list[str], env: Mapping[str, str], cwd: str | None,
                    log: str | None) -> int:
        """Fork `argv` (`PYTHON -m boxer ARGS...`: the zygote runs `boxer ARGS` itself) into the
        network namespace `netns`; returns its pid."""
        module = split_module_argv(argv)
        if module is None or module[0] != "boxer":
            raise ValueError(f"the zygote runs `python -m boxer ...` (boxer._python.module_argv) only, not {argv!r}")
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._spawning[request_id] = future
        try:
            self._write({"op": "spawn", "id": request_id, "netns": netns, "argv": list(argv),
                         "env": dict(env), "cwd": cwd, "log": log})
        except ZygoteError:
            self._spawning.pop(request_id, None)
            raise
        return await future

    def signal(self, pid: int, sig: int, group: bool = False) -> None:
        """Signal a child (its process group with `group`) if it has not been reaped yet."""
        self._write({"op": "signal", "pid": pid, "sig": int(sig), "group": group})

    def wait(self, pid: int) -> asyncio.Future[int]:
        """A future of the child's returncode (ZygoteError if the zygote died first)."""
        return self._exits[pid]

    def forget(self, pid: int) -> None:
        self._exits.pop(pid, None)

    async def close(self, timeout: float = 5.0) -> None:
        """Let the zygote go (its children, if any still run, are not touched): it exits at the
        end of its stdin."""
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.close()
        proc = self._proc
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        elif self.pid is not None and self._reader is not None:
            # Adopted: not our child. Its stdout ends when it exits.
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._reader.cancel()
        self.alive = False


def start_for_adoption(python: str, env: Mapping[str, str], log: str | None) -> Any:
    """Start a zygote for another process to adopt (Zygote.adopt): a subprocess.Popen whose
    stdin and stdout are pipes. Pass `proc.stdout.fileno()` and `proc.stdin.fileno()` on to
    the adopter, then close them here: the zygote exits when its adopter closes its stdin."""
    import subprocess

    err = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(module_argv("boxer.cli.zygote", "-" * TITLE_ROOM, python=python),
                                env=without_secret(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, start_new_session=True)
    finally:
        if err is not subprocess.DEVNULL:
            err.close()


# --- the zygote ------------------------------------------------------------------------------

def _send(obj: dict) -> None:
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    while data:
        data = data[os.write(1, data):]


def _say(text: str) -> None:
    os.write(2, f"boxer zygote[{os.getpid()}]: {text}\n".encode(errors="replace"))


def _preload(extra: tuple[str, ...]) -> None:
    import importlib

    for name in (*extra, *PRELOAD):
        importlib.import_module(name)
    from boxer.nat_traversal import messages

    for cls in messages.MESSAGE_TYPES.values():  # resolve every message's type hints once
        messages._schema(cls)


def _close_from(low: int) -> None:
    """Close every descriptor from `low` up (Python objects hold none of ours there)."""
    import resource

    os.closerange(low, max(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))


RunCommand = Callable[[list[str]], int]
"""Runs `boxer ARGS...` in the calling process and returns its exit status."""


def main(run: RunCommand, preload: tuple[str, ...] = ()) -> int:
    """The zygote's loop: import `preload` and the agent once, then fork a child per spawn
    request, in which `run` runs the request's `boxer` arguments."""
    # Only stdin, stdout and stderr: whatever else our starter leaked (uvloop's spawn leaves the
    # other ends of our pipes open here) must not keep them open, nor pass on to the children.
    _close_from(3)
    # A Ctrl-C at `boxer up` is the controller's to handle; the backend starts us in a session
    # of our own anyway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    retitle(module_argv("boxer.cli.zygote"))
    _preload(preload)
    import gc

    gc.collect()
    gc.freeze()  # what the children inherit is never scanned by their collector (fewer copies)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd hears it
    children: set[int] = set()
    poller = select.poll()
    poller.register(0, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    pending = b""
    _send({"ready": os.getpid()})
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        for fd, _ in events:
            if fd == wake_r:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                _reap(children)
                continue
            data = os.read(0, 65536)
            if not data:
                _reap(children)
                return 0
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    _serve(json.loads(line), children, run)
        _reap(children)


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _send({"exit": pid, "status": os.waitstatus_to_exitcode(status)})


def _serve(request: dict, children: set[int], run: RunCommand) -> None:
    op = request.get("op")
    if op == "signal":
        pid = int(request["pid"])
        if pid in children:  # unreaped: the pid (and its group's id) cannot have been recycled
            try:
                if request.get("group"):
                    os.killpg(pid, int(request["sig"]))
                else:
                    os.kill(pid, int(request["sig"]))
            except ProcessLookupError:
                pass
        return
    if op != "spawn":
        _say(f"unknown request {op!r}")
        return
    try:
        pid = os.fork()
    except OSError as exc:
        _send({"id": request["id"], "error": f"fork: {exc.strerror}"})
        return
    if pid == 0:
        os._exit(_child(request, run))
    children.add(pid)
    _send({"id": request["id"], "pid": pid})


# --- a child: becomes one instance's `boxer run` -----------------------------------------------

def _child(request: dict, run: RunCommand) -> int:
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any Python program
        _stdio(request.get("log"))
        _close_from(3)  # the zygote's wakeup pipe and anything else of its own
        join_netns(request["netns"])
        cwd = request.get("cwd")
        if cwd:
            os.chdir(cwd)
        os.environ.clear()
        os.environ.update(request["env"])
    except BaseException:
        traceback.print_exc()
        _flush()
        return 1
    argv = list(request["argv"])
    retitle(argv)
    module = split_module_argv(argv)
    assert module is not None  # Zygote.spawn sends no other
    code = run(module[1])
    _flush()
    return code & 0xFF


def retitle(argv: list[str]) -> None:
    """Write `argv` over our command line's memory (what /proc/PID/cmdline and ps show), NUL
    padded; Python keeps its own copy of its arguments, so nothing else reads that memory."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (proc(5) 48, 49)
        room = end - start
        data = b"\0".join(os.fsencode(a) for a in argv)[:room - 1]
        ctypes.memmove(start, data + b"\0" * (room - len(data)), room)
    except (OSError, ValueError, IndexError):
        pass  # an odd /proc: the zygote's own command line shows, as before


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _stdio(log: str | None) -> None:
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644) if log \
        else os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


_libc = None


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def join_netns(name: str) -> None:
    """What `ip netns exec NAME` does before it execs, for the calling (single-threaded)
    process: the network namespace, and a mount namespace with that namespace's /sys."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    libc = _libc
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"bad network namespace name {name!r}")
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        # Never the machine's own namespace (that of pid 1, where we may look): lab processes
        # stay in the lab.
        try:
            machine = os.stat("/proc/1/ns/net")
        except OSError:  # a sandbox that hides pid 1's namespaces
            machine = None
        target = os.fstat(fd)
        if machine is not None and (target.st_dev, target.st_ino) == (machine.st_dev, machine.st_ino):
            raise RuntimeError(f"{NETNS_DIR}/{name} is the machine's own network namespace; refusing")
        _check(libc.setns(fd, _CLONE_NEWNET), f"setns {name}")
    finally:
        os.close(fd)
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Nothing we mount propagates back to the machine's mount namespace.
    _check(libc.mount(b"", b"/", b"none", ctypes.c_ulong(_MS_SLAVE | _MS_REC), None), "mount --make-rslave /")
    flags = 0
    if libc.umount2(b"/sys", _MNT_DETACH) != 0:
        try:
            if os.statvfs("/sys").f_flag & os.ST_RDONLY:
                flags = _MS_RDONLY
        except OSError:
            pass
    _check(libc.mount(name.encode(), b"/sys", b"sysfs", ctypes.c_ulong(flags), None), "mount /sys")
    etc = os.path.join(NETNS_ETC_DIR, name)
    try:
        entries = os.listdir(etc)
    except OSError:
        return
    for entry in entries:
        source, target_path = os.path.join(etc, entry), os.path.join("/etc", entry)
        if libc.mount(source.encode(), target_path.encode(), b"none", ctypes.c_ulong(_MS_BIND), None) != 0:
            err = ctypes.get_errno()
            print(f"Bind {source} -> {target_path} failed: {os.strerror(err)}", file=sys.stderr)

