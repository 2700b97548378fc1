"""Apply an edited deployment file to a deployment that is up (`boxer up FILE` again).

What may change live is judged by the pure plan (controller/reapply.py) here first, so a refusal
costs the running controller nothing; the lab must have room for the new maxInstances and, on
Lambda, the concurrency is looked up again. The controller then applies it itself and answers
with what it applied: today through files (deployment.next.yaml, then SIGHUP; it answers in
reapplied.json, matched by the record's generation).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxer.controller.deployments import paths_for
from boxer.controller.errors import DeploymentError
from boxer.controller.paths import read_json
from boxer.controller.record import DeploymentRecord

__all__ = ["ANSWER_TIMEOUT", "Applied", "apply_file"]

ANSWER_TIMEOUT = 10.0  # seconds the controller has to answer an apply


@dataclass(frozen=True)
class Applied:
    """What the controller applied: "path: old -> new" changes, and services rolled out.
    `changes` empty: the deployment already ran this file, nothing was sent."""

    changes: tuple[str, ...]
    rollouts: tuple[str, ...] = ()


def apply_file(file: Path, deployment: Any, name: str, say: Callable[[str], None]) -> Applied:
    """Hand `file` (validated as `deployment`) to the running controller of `name` and wait
    for its answer. DeploymentError when it is refused, here or by the controller."""
    from boxer.controller.reapply import plan_reapply
    from boxer.controller.validate import load_deployment

    paths = paths_for(name)
    record = DeploymentRecord.load(paths)
    if record is None or not record.controller_alive or record.controller_pid is None:
        raise DeploymentError(f"deployment {name!r} is not up: `boxer up {file}` starts it")
    if not paths.applied_file.exists():
        raise DeploymentError(f"deployment {name!r} was started by an older boxer that cannot apply "
                              f"changes while it runs: `boxer down --name {name}` first")
    running = load_deployment(paths.applied_file, backend=record.backend)
    plan = plan_reapply(running, deployment)
    if not plan.ok:
        raise DeploymentError(
            f"deployment {name!r} is up, and these cannot change while it runs: "
            f"{', '.join(plan.refused)}. `boxer down --name {name}`, then `boxer up {file}`")
    if not plan.changes:
        return Applied(())
    if record.lab:
        from boxer.controller.lab_room import check_room

        check_room(deployment, record.lab, name)
    backend_settings: dict[str, Any] = {}
    if record.backend == "lambda":
        from boxer.controller.lambda_target import settings_again

        backend_settings = settings_again(running, deployment, record, say)
    generation = record.generation + 1
    shutil.copyfile(file, paths.next_file)
    record.replace(**backend_settings, generation=generation).save(paths)
    os.kill(record.controller_pid, signal.SIGHUP)
    answer = _answer(paths, generation)
    if answer is None:
        raise DeploymentError(f"the controller of {name!r} did not answer within "
                              f"{ANSWER_TIMEOUT:g} s; see {paths.log}")
    if answer.get("error") or answer.get("refused"):
        raise DeploymentError(f"the controller refused the change: "
                              f"{answer.get('error') or ', '.join(answer['refused'])}")
    now = DeploymentRecord.load(paths) or record
    now.replace(file=str(file.resolve())).save(paths)
    return Applied(tuple(answer.get("changes", [])), tuple(answer.get("rollouts", [])))


def _answer(paths: Any, generation: int) -> dict[str, Any] | None:
    started = time.monotonic()
    while time.monotonic() - started < ANSWER_TIMEOUT:
        answer = read_json(paths.reapplied)
        if answer and answer.get("generation") == generation:
            return dict(answer)
        time.sleep(0.05)
    return None
