"""A deployment on a controller host (controller/host.py), driven from here through the control
API only: send its file (Up, or Apply when it already runs there), take it down.

No state of the deployment is kept on this machine: the controller host has it all; the CLI's
context remembers where the host is (boxer/cli/_remote.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxer.controller.errors import DeploymentError

__all__ = ["Sent", "send_file", "status_there", "take_down_there"]

STOP_TIMEOUT = 30.0  # seconds the host has to stop the deployment's instances


@dataclass
class Sent:
    name: str
    started: bool  # True: Up started it; False: Apply changed the running one
    applied: Any  # client.Applied: the host's notes (Up) or the changes applied
    statuses: Iterator[dict[str, Any]]


def status_there(client: Any, timeout: float = 10.0) -> dict[str, Any] | None:
    """The host's deployment's status, or None when it runs none."""
    import grpc

    from boxer.controller.api.client import ControlError

    try:
        status: dict[str, Any] = client.status(timeout=timeout)
    except ControlError as exc:
        if exc.code is grpc.StatusCode.FAILED_PRECONDITION:
            return None
        raise
    return status


def send_file(client: Any, file: Path, name: str, *, backend: str | None = None,
              register_timeout: float | None = None, timeout: float | None = None) -> Sent:
    """Start deployment `name` from `file` on the controller host, or apply the edited file to
    it when it runs there already; DeploymentError when it runs another one, or refuses."""
    running = status_there(client)
    content, shown = file.read_bytes(), str(file.resolve())
    if running is not None:
        if running.get("name") != name:
            raise DeploymentError(
                f"the controller at {client.target} runs deployment {running.get('name')!r}, not {name!r}: "
                f"`boxer down --name {running.get('name')}` first (a controller host runs one at a time)")
        applied, statuses = client.apply(content, shown, timeout=timeout)
        return Sent(name, False, applied, statuses)
    applied, statuses = client.up(content, shown, folder=file.resolve().parent.name, name=name,
                                  backend=backend or "", register_timeout=register_timeout, timeout=timeout)
    return Sent(name, True, applied, statuses)


def take_down_there(client: Any, name: str | None, say: Callable[[str], None] | None = None) -> str:
    """Ask the host to take its deployment down (`name`, if given, must be it) and wait until its
    instances are stopped; one line saying so."""
    running = status_there(client)
    if running is None:
        raise DeploymentError(f"no deployment runs on the controller at {client.target}")
    if name is not None and running.get("name") != name:
        raise DeploymentError(f"the controller at {client.target} runs deployment {running.get('name')!r}, "
                              f"not {name!r}")
    told = client.down()
    deadline = time.monotonic() + STOP_TIMEOUT
    while status_there(client, timeout=5.0) is not None:
        if time.monotonic() > deadline:
            raise DeploymentError(f"the controller at {client.target} has not stopped deployment "
                                  f"{running.get('name')!r} after {STOP_TIMEOUT:.0f} s: see `boxer status`")
        time.sleep(0.2)
    return (f"deployment {running.get('name')} down; the controller at {client.target} stopped "
            f"{told} instance(s) and waits for the next")
