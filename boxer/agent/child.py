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


def ensure_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
