"""Starting the application under the interposer, and proving the interposer is active in it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

PRELOAD = Path(__file__).resolve().parent.parent / "libboxer_preload.so"


class InterposerMissing(Exception):
    pass


def interposer_path() -> str:
    if not PRELOAD.exists():
        raise InterposerMissing(
            f"the interposer library is missing ({PRELOAD}): it is compiled when boxer is installed; "
            "reinstall with `pip install .` (or `-e .`) on a machine with a C compiler")
    return str(PRELOAD)


# What the agent reads and the app must never see: the deployment secret (or its file), an
# instance's credential, and the AWS credentials of the function the agent runs in. An exploit of
# the app then gets none of them from its environment (docs/security.md). An app that needs AWS
# is given credentials of its own, in the event's `env`.
AGENT_ONLY_ENV = frozenset({
    "BOXER_SECRET", "BOXER_SECRET_FILE", "BOXER_INSTANCE_TOKEN", "BOXER_INSTANCE_TOKEN_FILE",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_LAMBDA_RUNTIME_API",
})


def child_environment(base: dict[str, str], *, agent_sock: str, name: str, addr: str, prefix: str,
                      wake_addr: str) -> dict[str, str]:
    env = {key: value for key, value in base.items() if key not in AGENT_ONLY_ENV}
    preload = interposer_path()
    existing = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{preload}:{existing}" if existing else preload
    env.update({
        "BOXER_AGENT_SOCK": agent_sock,
        "BOXER_NAME": name,
        "BOXER_ADDR": addr,
        "BOXER_PREFIX": prefix,
        "BOXER_WAKE_ADDR": wake_addr,
    })
    return env


def exit_status(returncode: int) -> int:
    """A shell's view of how the child ended: its code, or 128 + the signal that killed it."""
    return 128 - returncode if returncode < 0 else returncode


class AppProcess:
    """The application's process: what the runner uses of asyncio.subprocess.Process.

    Started with subprocess.Popen (close_fds) rather than the event loop's subprocess support:
    uvloop's spawn leaves inheritable copies of our stdin, stdout and stderr open in the child
    (as fds 24-26), which the app should not find (a daemon closing "all" fds, a server counting
    them, a pipe kept open by a grandchild). Its exit is noticed through a pidfd on the loop."""

    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._pidfd = pidfd
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._loop.add_reader(pidfd, self._on_exit)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def _on_exit(self) -> None:
        if self._popen.poll() is None:
            return  # not yet (a pidfd is readable only once the process has exited)
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if not self._exited.done():
            self._exited.set_result(self._popen.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self._popen.returncode is not None:
            raise ProcessLookupError(self.pid)
        self._popen.send_signal(sig)  # only while unreaped: a recycled pid is never signalled

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


async def stop_child(proc: Any, grace: float = 5.0) -> None:
    if proc.returncode is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), grace)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
    except ProcessLookupError:
        pass


async def start_child(argv: list[str], env: dict[str, str]) -> Any:
    """The app, started with our stdio and the descriptors we were given to pass on (inheritable
    ones: socket activation, `3<file`), nothing of our own: an AppProcess, or without pidfds
    (Python < 3.9), the event loop's own subprocess."""
    from boxer.agent.features import current

    if not hasattr(os, "pidfd_open"):
        return await asyncio.create_subprocess_exec(*argv, env=env)
    popen = subprocess.Popen(argv, env=env, close_fds=True, pass_fds=inherited_fds())
    if not current().pidfd:
        return _ThreadWaited(popen)
    try:
        pidfd = os.pidfd_open(popen.pid)
    except OSError:  # ENOSYS: an old kernel; it runs, and is waited for in a thread
        return _ThreadWaited(popen)
    return AppProcess(popen, pidfd)


def inherited_fds() -> tuple[int, ...]:
    """Our open descriptors above stderr that are inheritable: what we were started with (every
    descriptor Python or the agent opens is non-inheritable, PEP 446)."""
    found = []
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        try:
            if fd > 2 and os.get_inheritable(fd):
                found.append(fd)
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return tuple(sorted(found))


class _ThreadWaited(AppProcess):
    """An AppProcess without a pidfd: its exit is waited for in a thread."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._loop = asyncio.get_running_loop()
        self._exited = self._loop.create_future()
        waiter = self._loop.run_in_executor(None, popen.wait)
        waiter.add_done_callback(lambda f: self._exited.done() or self._exited.set_result(f.result()))



# --- programs that daemonize -----------------------------------------------------------------
# A daemon forks, its parent (our direct child) exits, and the daemon carries on. As the child
# subreaper, the agent becomes the daemon's parent, so it can keep serving it, report on it and
# stop it, instead of leaving it running outside any agent.

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(except_pid: int | None = None) -> list[int]:
    """Our living descendants (adopted daemons included); exited ones are reaped on the way."""
    import psutil

    alive = []
    for proc in psutil.Process().children(recursive=True):
        if proc.pid == except_pid:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(proc.pid, os.WNOHANG)
                continue
        except (psutil.Error, ChildProcessError):
            continue
        alive.append(proc.pid)
    return alive


async def wait_descendants(until: asyncio.Future | asyncio.Event | None = None, poll: float = 0.25) -> None:
    while descendants():
        if until is not None and (until.done() if isinstance(until, asyncio.Future) else until.is_set()):
            return
        await asyncio.sleep(poll)


async def stop_descendants(grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in descendants():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = asyncio.get_running_loop().time() + grace
        while descendants() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        if not descendants():
            return
