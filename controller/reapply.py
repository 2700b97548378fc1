"""`boxer up FILE` on a deployment that is already up: which changes apply to it live (pure).

What the controller decides from (instance counts, autoscaling, restart policy, the partition
guard) changes at its next tick, and so do the Lambda backend's concurrency and registration
timeout. A new command, environment or lifetime of a service applies to the instances started
from then on, and its running instances are rolled out: each is renewed (its replacement
started, then it is drained), a quarter of the service at a time. Where instances run and what
they are called (placement, baseCapacity, hostnames), services removed (their instances would
have to be drained by hand), the name, the backend and its `lambda.outputs`: refused with the
fields they touch, and the deployment runs on unchanged. A service added starts as it would at
`boxer up`.

    plan = plan_reapply(running, edited)
    plan.refused   # ["services.api.placement"]: `boxer down` and `boxer up` to change these
    plan.changes   # ["services.api.minInstances: 1 -> 13", "services.web.env.LEVEL: 1 -> 2"]
    plan.rollouts  # ["web"]: services whose running instances are replaced
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from boxer.controller.spec import Deployment, LambdaSettings

__all__ = ["LIVE_DEPLOYMENT_FIELDS", "LIVE_SERVICE_FIELDS", "ROLLED_SERVICE_FIELDS", "Reapply",
           "plan_reapply"]

# Read by the controller's decisions only, at every tick.
LIVE_SERVICE_FIELDS = frozenset({"minInstances", "maxInstances", "restartPolicy", "autoscale",
                                 "renewalMarginSeconds"})
# What instances are started with: new instances get the new values, running ones are rolled out.
ROLLED_SERVICE_FIELDS = frozenset({"command", "env", "maxLifetimeSeconds"})
LIVE_DEPLOYMENT_FIELDS = frozenset({"partition", "services"})
# `lambda:` fields the controller applies to its backend: how many invocations may be in flight
# (`boxer up` looks up the function's concurrency again) and how long one has to register.
# Its `outputs` name another deployment made by terraform: refused.
LIVE_LAMBDA_FIELDS = frozenset({"maxConcurrency", "registerTimeoutSeconds"})


@dataclass(frozen=True)
class Reapply:
    changes: tuple[str, ...]  # "path: old -> new", what will apply
    refused: tuple[str, ...]  # paths of changes that cannot apply to a running deployment
    rollouts: tuple[str, ...] = ()  # services whose running instances are to be replaced

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
        if key == "lambda":
            # Unset is the defaults: writing them out is no change.
            before, after = _lambda_settings(old), _lambda_settings(new)
            for field in sorted(set(before) | set(after)):
                if before.get(field) != after.get(field):
                    live = field in LIVE_LAMBDA_FIELDS
                    (changes if live else refused).extend(_differences(
                        f"lambda.{field}", before.get(field), after.get(field), as_change=live))
            continue
        if old.get(key) != new.get(key):
            target = changes if key in LIVE_DEPLOYMENT_FIELDS else refused
            target.extend(_differences(key, old.get(key), new.get(key), as_change=target is changes))
    old_services, new_services = old["services"], new["services"]
    for service in sorted(set(new_services) - set(old_services)):
        changes.append(f"services.{service}: added")
    for service in sorted(set(old_services) - set(new_services)):
        refused.append(f"services.{service} (removed)")
    rollouts: list[str] = []
    for service in sorted(set(old_services) & set(new_services)):
        before, after = old_services[service], new_services[service]
        for field in sorted(set(before) | set(after)):
            if before.get(field) == after.get(field):
                continue
            path = f"services.{service}.{field}"
            applies = field in LIVE_SERVICE_FIELDS or field in ROLLED_SERVICE_FIELDS
            (changes if applies else refused).extend(
                _differences(path, before.get(field), after.get(field), as_change=applies))
            if field in ROLLED_SERVICE_FIELDS and service not in rollouts:
                rollouts.append(service)
    return Reapply(tuple(changes), tuple(refused), tuple(rollouts))


def _dump(deployment: Deployment) -> dict[str, Any]:
    return deployment.model_dump(mode="json", by_alias=True)


def _lambda_settings(dumped: dict[str, Any]) -> dict[str, Any]:
    return dumped.get("lambda") or LambdaSettings().model_dump(mode="json", by_alias=True)


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
