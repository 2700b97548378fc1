"""A lab's state directory: /run/boxer/lab/<name>/ with the secret, lab.json and the logs.

/run is a tmpfs, so a reboot (which also drops every namespace) forgets all labs at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE_VERSION = 1


def state_root() -> Path:
    """/run/boxer/lab, or BOXER_LAB_STATE_ROOT: read on each use (a test or a caller may set it
    after import)."""
    return Path(os.environ.get("BOXER_LAB_STATE_ROOT", "/run/boxer/lab"))


def state_dir(name: str) -> Path:
    return state_root() / name


def secret_path(name: str) -> Path:
    return state_dir(name) / "secret"


def state_file(name: str) -> Path:
    return state_dir(name) / "lab.json"


def coordinator_log(name: str) -> Path:
    return state_dir(name) / "coordinator.log"


def coordinator_ready_file(name: str) -> Path:
    return state_dir(name) / "coordinator.ready"


def claim(name: str) -> bool:
    """Create the state dir; False if it exists already (someone else owns that lab name)."""
    state_root().mkdir(parents=True, exist_ok=True, mode=0o755)
    try:
        state_dir(name).mkdir(mode=0o700)
    except FileExistsError:
        return False
    return True


def write_secret(name: str) -> Path:
    """32 random bytes, hex, readable by root only: proves membership of this lab's deployment."""
    path = secret_path(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


def read(name: str) -> dict[str, Any] | None:
    """The lab's recorded state, or None if there is none (never created, or crashed early)."""
    try:
        with open(state_file(name), encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        return None
    return data


def write(name: str, data: dict[str, Any]) -> None:
    """Replace lab.json atomically: a reader never sees half a file."""
    path = state_file(name)
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Serialise read-modify-write of lab.json across processes (e.g. parallel port_forward)."""
    with open(state_dir(name) / "lab.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def remove(name: str) -> bool:
    path = state_dir(name)
    if not path.exists():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def list_names() -> list[str]:
    try:
        return sorted(p.name for p in state_root().iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
