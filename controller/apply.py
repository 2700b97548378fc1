"""Apply an edited deployment file to a deployment that is up (`boxer up FILE` again).

What may change live is judged by the pure plan (controller/reapply.py) here first, so a refusal
costs the running controller nothing; the lab must have room for the new maxInstances and, on
Lambda, the concurrency is looked up again (with the caller's AWS credentials). The controller
then applies it itself, judging again, through the control API (controller/api): it answers with
what it applied, then streams the status after every tick, the rollout's progress.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from boxer.controller.deployments import paths_for
from boxer.controller.errors import DeploymentError
from boxer.controller.record import DeploymentRecord

__all__ = ["apply_file"]


def apply_file(file: Path, deployment: Any, name: str, say: Callable[[str], None], *,
               timeout: float | None = None) -> tuple[Any, Iterator[dict[str, Any]]]:
    """Hand `file` (validated as `deployment`) to the running controller of `name`: what it
    applied (changes empty: it already ran this file, nothing was sent) and its statuses after
    every tick until `timeout`. DeploymentError when it is refused, here or by the controller."""
    from boxer.controller.api.client import Applied, ControlClient
    from boxer.controller.reapply import plan_reapply
    from boxer.controller.validate import load_deployment

    paths = paths_for(name)
    record = DeploymentRecord.load(paths)
    if record is None or not record.controller_alive:
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
        return Applied((), ()), iter(())
    if record.lab:
        from boxer.controller.lab_room import check_room

        check_room(deployment, record.lab, name)
    backend_settings: dict[str, Any] = {}
    if record.backend == "lambda":
        from boxer.controller.lambda_target import settings_again

        backend_settings = settings_again(running, deployment, record, say)
    client = ControlClient.local(paths)
    try:
        applied, statuses = client.apply(file.read_bytes(), str(file.resolve()), timeout=timeout,
                                         max_concurrency=backend_settings.get("max_concurrency"),
                                         register_timeout=backend_settings.get("register_timeout"))
    except BaseException:
        client.close()
        raise

    def closing() -> Iterator[dict[str, Any]]:
        try:
            yield from statuses
        finally:
            client.close()

    return applied, closing()
