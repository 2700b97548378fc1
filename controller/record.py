"""The deployment record: what `boxer up` made for one deployment, kept in deployment.json.

Written by bring-up (`controller/bringup.py`) before the controller starts and again once it
runs, amended by an apply (the file it runs, the lambda settings worked out again) and by
take-down; read by the controller process (`controller/daemon.py`) and by every command that
needs to know whether a deployment is up. One frozen value, one JSON object with the same keys
as before it was typed (tests and older tools read them), unknown keys ignored so that a record
written by a newer boxer still reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxer.controller.paths import DeployPaths, write_json_atomic

__all__ = ["DAEMON_MODULE", "DeploymentRecord", "RecordError", "pid_is_controller", "reap"]

DAEMON_MODULE = "boxer.controller.daemon"  # on the controller's command line: how we know our pid


class RecordError(ValueError):
    """deployment.json exists but is not a deployment record (edited by hand, or truncated)."""


@dataclass(frozen=True)
class DeploymentRecord:
    name: str
    file: str  # the deployment file, as given to the last `boxer up` that applied
    dir: str  # its folder: the instances' working directory
    backend: str = "local"  # local | lambda-local | lambda
    lab: str | None = None  # the lab built for it (lab backends)
    created_at: float = 0.0
    metrics_port: int | None = None
    controller_pid: int | None = None
    register_timeout: float | None = None  # seconds an instance has to register (None: default)
    generation: int = 0  # counts applies of an edited file while it runs
    down_at: float | None = None
    # lambda: what the preflight found in terraform's outputs
    outputs: str | None = None
    function: str | None = None
    region: str | None = None
    coordinator: str | None = None
    max_concurrency: int | None = None  # invocations in flight, after the function's limits
    # lambda-local --image: {"image", "container"}, the working container bring-up mounted
    image: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise RecordError(f"deployment record without a name: {self.name!r}")
        if self.backend not in ("local", "lambda-local", "lambda"):
            raise RecordError(f"deployment record of {self.name!r}: unknown backend {self.backend!r}")

    def replace(self, **changes: Any) -> DeploymentRecord:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> DeploymentRecord:
        if not isinstance(data, dict):
            raise RecordError(f"a deployment record is a JSON object, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"name", "file", "dir"} - set(data)
        if missing:
            raise RecordError(f"deployment record lacks {', '.join(sorted(missing))}")
        try:
            return cls(**{key: value for key, value in data.items() if key in known})
        except TypeError as exc:
            raise RecordError(f"not a deployment record: {exc}") from None

    @classmethod
    def load(cls, paths: DeployPaths) -> DeploymentRecord | None:
        """The record in paths.deployment; None when there is none, or it is half written or
        not a record (a crash mid-write leaves the old one: writes are atomic)."""
        try:
            data = json.loads(paths.deployment.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        try:
            return cls.from_json(data)
        except RecordError:
            return None

    def save(self, paths: DeployPaths) -> None:
        write_json_atomic(paths.deployment, self.to_json())

    @property
    def controller_alive(self) -> bool:
        """Its controller process runs (and the pid is not one recycled by another program)."""
        return pid_is_controller(self.controller_pid)


def pid_is_controller(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return DAEMON_MODULE.encode() in cmdline


def reap(pid: int) -> None:
    """Collect `pid` if it is our child (down run from `boxer up` itself): no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
