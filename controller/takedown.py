"""Take a deployment down: stop its controller (which stops its instances first), remove its
lab, and mark the record and the last status as down. The timeline stays for `boxer report`.

The controller is asked through the control API (Down); one that does not answer there gets
SIGTERM, and SIGKILL if it is still running STOP_TIMEOUT seconds later."""

from __future__ import annotations

import logging
import os
import signal
import time

from boxer.controller.deployments import paths_for
from boxer.controller.errors import DeploymentError
from boxer.controller.paths import DeployPaths, read_json, write_json_atomic
from boxer.controller.record import DeploymentRecord, reap

__all__ = ["STOP_TIMEOUT", "mark_down", "take_down"]

log = logging.getLogger(__name__)

STOP_TIMEOUT = 20.0  # seconds the controller has to stop its instances before SIGKILL


def take_down(name: str) -> str:
    """Take deployment `name` down; one line that says what was stopped and removed."""
    from boxer.lab import lab_down

    paths = paths_for(name)
    record = DeploymentRecord.load(paths)
    if record is None:
        raise DeploymentError(f"no deployment called {name!r}")
    pid = record.controller_pid
    stopped = False
    if pid and record.controller_alive:
        _ask_to_stop(paths, pid)  # it stops its instances first
        deadline = time.monotonic() + STOP_TIMEOUT
        while record.controller_alive and time.monotonic() < deadline:
            time.sleep(0.05)
            reap(pid)
        if record.controller_alive:
            os.kill(pid, signal.SIGKILL)
        reap(pid)
        stopped = True
    report = lab_down(record.lab) if record.lab else None
    if record.image:
        from boxer.backends.emulators.image import close_image

        close_image(record.image)
    mark_down(paths)
    parts = [f"deployment {name} down"]
    if stopped:
        parts.append("controller stopped")
    if report is not None:
        parts.append(f"lab {report.name}: {len(report.namespaces)} namespaces removed")
    return "; ".join(parts)


def mark_down(paths: DeployPaths) -> None:
    """The record and the last status say the deployment stopped (read again here: the
    controller may have rewritten the record while it stopped). A controller host marks its
    deployment down with this too, when it ends there (controller/host.py)."""
    record = DeploymentRecord.load(paths)
    if record is not None:
        record.replace(controller_pid=None, down_at=time.time()).save(paths)
    status = read_json(paths.status)
    if status:
        status["running"] = False
        status["instances"] = []
        write_json_atomic(paths.status, status)


def _ask_to_stop(paths: DeployPaths, pid: int) -> None:
    from boxer.controller.api.client import ControlClient, ControlError

    try:
        with ControlClient.local(paths) as client:
            told = client.down()
        log.info("controller of %s stops %d instance(s)", paths.name, told)
    except ControlError as exc:
        log.warning("%s: stopping it with SIGTERM", exc)
        os.kill(pid, signal.SIGTERM)
