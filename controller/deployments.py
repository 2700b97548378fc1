"""Which deployments this machine knows, which one a command means, and what they last said.

The state of each lives under its DeployPaths (controller/paths.py): the record bring-up wrote
(controller/record.py), the status the controller rewrites a few times a second, its log.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from boxer.controller.errors import DeploymentError
from boxer.controller.paths import DeployPaths, list_deployments, read_json
from boxer.controller.record import DeploymentRecord

__all__ = ["declared_services", "deployment_in_lab", "last_log_error", "load_status", "paths_for",
           "resolve_name"]

log = logging.getLogger(__name__)


def paths_for(name: str) -> DeployPaths:
    try:
        return DeployPaths(name)
    except ValueError as exc:
        raise DeploymentError(str(exc)) from None


def _running(name: str) -> bool:
    record = DeploymentRecord.load(paths_for(name))
    return record is not None and record.controller_alive


def deployment_in_lab(lab: str) -> str | None:
    """The running deployment whose instances live in lab `lab`, if any."""
    for name in list_deployments():
        record = DeploymentRecord.load(paths_for(name))
        if record is not None and record.lab == lab and record.controller_alive:
            return name
    return None


def resolve_name(name: str | None) -> str:
    """`name`, else the only deployment running, else the only one known; else a
    DeploymentError that says how to pick one."""
    if name:
        return name
    running = [n for n in list_deployments() if _running(n)]
    if len(running) == 1:
        return running[0]
    if not running:
        known = list_deployments()
        if len(known) == 1:
            return known[0]
        raise DeploymentError("no deployment is running: start one with `boxer up FILE`")
    raise DeploymentError(f"several deployments run ({', '.join(running)}): pick one with --name")


def load_status(name: str | None) -> dict[str, Any] | None:
    """The deployment's status: asked of its controller (the control API) while it runs; once
    it is gone, the last one it wrote (status.json, the crash record) with running=False. None
    when there is no deployment or no status yet."""
    try:
        name = resolve_name(name)
    except DeploymentError:
        return None
    paths = paths_for(name)
    if _running(name):
        from boxer.controller.api.client import ControlClient, ControlError

        try:
            with ControlClient.local(paths) as client:
                return client.status(timeout=5.0)
        except ControlError as exc:  # starting, or stuck: what it last wrote
            log.info("%s; showing %s", exc, paths.status)
            return read_json(paths.status)
    status = read_json(paths.status)
    if status is not None:
        status["running"] = False
    return status


def declared_services(paths: DeployPaths) -> list[str]:
    """The services of the file the deployment ran last (some may never have started); none
    when it cannot be read. Read loosely: a file that no longer validates still names them."""
    import yaml

    try:
        data = yaml.safe_load(paths.applied_file.read_text())
    except (OSError, yaml.YAMLError):
        return []
    services = data.get("services") if isinstance(data, dict) else None
    return [str(s) for s in services] if isinstance(services, dict) else []


def last_log_error(path: Path) -> str | None:
    """The message of the last error line in a controller's log (JSON lines)."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
            return str(entry.get("message"))
    return None
