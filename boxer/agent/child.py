"""Starting the application under the interposer, and proving the interposer is active in it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

PRELOAD = Path(__file__).resolve().parent.parent / "libboxer_preload.so"


class InterposerMissing(Exception):
    pass


def interposer_path() -> str:
    if not PRELOAD.exists():
        raise InterposerMissing(
            f"the interposer library is missing ({PRELOAD}): it is compiled when boxer is installed; "
            "reinstall with `pip install .` (or `-e .`) on a machine with a C compiler")
    return str(PRELOAD)


def child_environment(base: dict[str, str], *, agent_sock: str, name: str, addr: str, prefix: str,
                      wake_addr: str) -> dict[str, str]:
    env = dict(base)
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


async def stop_child(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
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


async def start_child(argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*argv, env=env)



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
