"""Processes inside lab namespaces: argv and environment for them, detached daemons, and
killing only what is provably ours."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def netns_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """`ip netns exec` rather than a bare setns(): it also gives the command a /sys of that
    namespace and /etc/netns/<name> overrides, and it execs (the pid is the command's)."""
    if not argv:
        raise ValueError("empty command")
    return ["ip", "netns", "exec", netns, *argv]


def lab_env(
    base: Mapping[str, str] | None, *, lab: str, host: str, coordinator: str, secret_file: str
) -> dict[str, str]:
    """`base` (default: our environment) plus what a program in a lab host needs to find
    its deployment. PATH is kept from our environment when `base` lacks one."""
    env = dict(os.environ if base is None else base)
    env.setdefault("PATH", os.environ.get("PATH", os.defpath))
    env.update(
        BOXER_COORDINATOR=coordinator,
        BOXER_SECRET_FILE=secret_file,
        BOXER_LAB=lab,
        BOXER_LAB_HOST=host,
    )
    return env


# The shell backgrounds the daemon and exits, so the daemon is reparented away from us: no
# zombie in a long-running caller (pytest), no "still running" ResourceWarning from Popen.
_DETACH_SCRIPT = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'


def spawn_detached(
    netns: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str]
) -> int:
    """Start `argv` in `netns` in a session of its own, output appended to `log_path`;
    return its pid."""
    out = subprocess.run(
        ["sh", "-c", _DETACH_SCRIPT, "sh", str(log_path), *netns_argv(netns, argv)],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        check=True,
        text=True,
        start_new_session=True,
    ).stdout
    return int(out.strip())


def cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, None if it is gone or a zombie (empty cmdline)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if not raw:
        return None
    return [part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0")]


def is_ours(pid: int, netns: str, argv: Sequence[str]) -> bool:
    """Does `pid` still run the command we started (not a recycled pid)? Right after the
    start it may still be `ip netns exec` about to exec the command."""
    current = cmdline(pid)
    return current is not None and current in (list(argv), netns_argv(netns, argv))


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie). Not judged by cmdline: it reads empty for an instant
    while a process execs (`ip netns exec` execs the command), which made a starting
    coordinator look dead now and then."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(b")", 1)[-1].split()[:1] not in ([b"Z"], [b"X"], [])


def terminate(pids: Iterable[int], grace: float = 2.0) -> list[int]:
    """SIGTERM each pid, SIGKILL what is left after `grace` seconds; return the pids signalled."""
    signalled = []
    for pid in set(pids):
        try:
            os.kill(pid, signal.SIGTERM)
            # A process frozen by Lab.freeze (SIGSTOP) would only act on SIGTERM once resumed.
            os.kill(pid, signal.SIGCONT)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    remaining = [pid for pid in signalled if alive(pid)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.02)
        remaining = [pid for pid in remaining if alive(pid)]
    for pid in remaining:
        log.warning("pid %d ignored SIGTERM for %.1f s; killing it", pid, grace)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return signalled


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_processes(procs: Sequence[subprocess.Popen[Any]], grace: float = 10.0) -> None:
    """Stop processes started in the lab (`Lab.popen`): SIGTERM to those still running, SIGKILL
    after `grace`, and close the pipes nobody read (a failed test or benchmark leaves them)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
