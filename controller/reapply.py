"""`boxer up FILE` on a deployment that is already up: which changes apply to it live (pure).

What the controller decides from (instance counts, autoscaling, restart policy, the partition
guard) changes at its next tick. What instances are started with (command, environment,
placement, names, lifetime) would mean replacing running instances, which is not done in place
yet: such a change is refused with the fields it touches, and the deployment runs on unchanged.

    plan = plan_reapply(running, edited)
    plan.refused   # ["services.api.command"]: `boxer down` and `boxer up` to change these
    plan.changes   # ["services.api.minInstances: 1 -> 13"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.spec import Deployment

__all__ = ["LIVE_SERVICE_FIELDS", "LIVE_DEPLOYMENT_FIELDS", "Reapply", "plan_reapply"]

# Read by the controller's decisions only, at every tick.
LIVE_SERVICE_FIELDS = frozenset({"minInstances", "maxInstances", "restartPolicy", "autoscale"})
LIVE_DEPLOYMENT_FIELDS = frozenset({"partition", "services"})


@dataclass(frozen=True)
class Reapply:
    changes: tuple[str, ...]  # "path: old -> new", what will apply
    refused: tuple[str, ...]  # paths of changes that cannot apply to a running deployment

    @property
    def ok(self) -> bool:
        return not self.refused


def plan_reapply(running: Deployment, edited: Deployment) -> Reapply:
    old, new = _dump(running), _dump(edited)
    changes: list[str] = []
    refused: list[str] = []
    for key in sorted(set(old) | set(new)):
        if key == "services":
            continue
        if old.get(key) != new.get(key):
            target = changes if key in LIVE_DEPLOYMENT_FIELDS else refused
            target.extend(_differences(key, old.get(key), new.get(key), as_change=target is changes))
    old_services, new_services = old["services"], new["services"]
    for service in sorted(set(old_services) ^ set(new_services)):
        what = "added" if service in new_services else "removed"
        refused.append(f"services.{service} ({what})")
    for service in sorted(set(old_services) & set(new_services)):
        before, after = old_services[service], new_services[service]
        for field in sorted(set(before) | set(after)):
            if before.get(field) == after.get(field):
                continue
            path = f"services.{service}.{field}"
            live = field in LIVE_SERVICE_FIELDS
            (changes if live else refused).extend(
                _differences(path, before.get(field), after.get(field), as_change=live))
    return Reapply(tuple(changes), tuple(refused))


def _dump(deployment: Deployment) -> dict[str, Any]:
    return deployment.model_dump(mode="json", by_alias=True)


def _differences(path: str, old: Any, new: Any, *, as_change: bool) -> list[str]:
    """The leaves that differ under `path`, as "path: old -> new" (or just the path)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                found += _differences(f"{path}.{key}", old.get(key), new.get(key), as_change=as_change)
        return found
    return [f"{path}: {_show(old)} -> {_show(new)}" if as_change else path]


def _show(value: Any) -> str:
    return "(unset)" if value is None else str(value)
