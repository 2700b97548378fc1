"""Where a running deployment keeps its files: /run/boxer/deploy/<name>/.

    deployment.json  what `boxer up` made (file, lab, backend, controller pid)
    deployment.yaml  the deployment file as the controller runs it
    control/sock     the controller's control API (gRPC; the folder 0700, the socket 0600)
    status.json      rewritten by the controller every tick: the crash record `boxer status`
                     shows once the controller is gone (while it runs, it asks the controller)
    timeline.jsonl   one JSON line per tick, read by `boxer report`
    controller.log   the controller's log (JSON lines)
    instances/       one log per instance (agent and app output)

/run is a tmpfs like the lab's state: a reboot, which also drops the lab, forgets both. Users
other than root (the lambda backend needs no root) keep them under $XDG_RUNTIME_DIR/boxer/deploy
or ~/.local/state/boxer/deploy; BOXER_DEPLOY_STATE_ROOT overrides both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DeployPaths", "default_state_root", "list_deployments", "read_json",
           "write_atomic", "write_json_atomic"]

def default_state_root() -> Path:
    """/run/boxer/deploy for root (the lab backends need root anyway); for anyone else, who can
    only use the lambda backend, $XDG_RUNTIME_DIR/boxer/deploy or ~/.local/state/boxer/deploy."""
    if os.environ.get("BOXER_DEPLOY_STATE_ROOT"):
        return Path(os.environ["BOXER_DEPLOY_STATE_ROOT"])
    if os.geteuid() == 0:
        return Path("/run/boxer/deploy")
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "boxer" / "deploy"
    return Path.home() / ".local" / "state" / "boxer" / "deploy"


_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class DeployPaths:
    name: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"deployment name {self.name!r} is not a DNS label (a-z, 0-9, '-')")

    @property
    def root(self) -> Path:
        return default_state_root() / self.name

    @property
    def deployment(self) -> Path:
        return self.root / "deployment.json"

    @property
    def applied_file(self) -> Path:
        return self.root / "deployment.yaml"

    @property
    def control_socket(self) -> Path:
        """The control API's Unix socket. A socket's path has room for 107 bytes: a state root
        deep enough to overflow it (a test's temporary folder) puts the socket in a folder of
        this user's under /tmp instead, named by a hash of the deployment's folder."""
        path = self.root / "control" / "sock"
        if len(os.fsencode(path)) <= 100:
            return path
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:24]
        return Path(tempfile.gettempdir()) / f"boxer-control-{os.geteuid()}" / digest / "sock"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def timeline(self) -> Path:
        return self.root / "timeline.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "controller.log"

    @property
    def roster(self) -> Path:
        """The controller's instances as of its last tick, for a controller host that resumes
        the deployment after a crash (controller/resume.py)."""
        return self.root / "roster.json"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    def make(self) -> None:
        self.instances.mkdir(parents=True, exist_ok=True)


def list_deployments() -> list[str]:
    root = default_state_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "deployment.json").exists())


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or half written."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_atomic(path: Path, data: bytes) -> None:
    """Write then rename, so a reader (or a controller resuming after a crash) never sees half
    a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1, default=str).encode())
