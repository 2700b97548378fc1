"""The lab a deployment on a lab backend (`local`, `lambda-local`) runs in: how big it must be,
building it, and whether an edited deployment still fits the one it has."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from boxer.controller.errors import DeploymentError

__all__ = ["check_room", "lab_name", "lab_size_for", "make_lab"]


def lab_name(name: str) -> str:
    """Lab names are 1-10 of a-z0-9: squeeze the deployment's name into that."""
    squeezed = re.sub(r"[^a-z0-9]", "", name)
    return (squeezed[:8] or "deploy") + "d"  # `d` marks a deployment's lab in `boxer lab ls`


def lab_size_for(deployment: Any) -> tuple[int, int]:
    """(NATed hosts, public hosts) the deployment's services need at their maxInstances."""
    from boxer.backends.local import lab_size

    return lab_size([
        (svc.placement.value, svc.effective_max_instances, svc.base_capacity,
         svc.lifetime_seconds is not None)
        for svc in deployment.services.values()
    ])


def make_lab(deployment: Any, name: str, say: Callable[[str], None]) -> Any:
    from boxer.lab import LabError, lab_up

    hosts, public = lab_size_for(deployment)
    lab = lab_name(name)
    say(f"lab {lab}: {hosts} NATed hosts (function), {public} public hosts (vm)")
    try:
        return lab_up(lab, hosts, public=public)
    except LabError as exc:
        raise DeploymentError(f"cannot create lab {lab}: {exc}") from None


def check_room(deployment: Any, lab_name: str, name: str) -> None:
    """A lab is built for the deployment's maxInstances; an apply must fit in it."""
    from boxer.lab import LabError, load_lab

    try:
        lab = load_lab(lab_name)
    except LabError as exc:
        raise DeploymentError(f"cannot read lab {lab_name} of deployment {name!r}: {exc}") from None
    hosts, public = lab_size_for(deployment)
    if hosts > len(lab.hosts) or public > len(lab.public_hosts):
        raise DeploymentError(
            f"lab {lab_name} was built with {len(lab.hosts)} NATed and {len(lab.public_hosts)} "
            f"public hosts; the edited maxInstances need {hosts} NATed and {public} public hosts. "
            f"`boxer down --name {name}`, then `boxer up` again builds a lab that size")
