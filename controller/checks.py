"""Stage two of validation: rules that relate several fields of an already well-typed file.

Each rule yields (field path, value, message); messages show the values involved so the user
sees at once why the combination is refused.
"""

from __future__ import annotations

import difflib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from boxer.controller.spec import Backend, Deployment, Metric, PartitionPolicy, Placement, Service

__all__ = ["command_warnings", "cross_field_issues", "lambda_backend_issues"]

Finding = tuple[tuple[str | int, ...], object, str]

_RESERVED_ENV = ("BOXER_INSTANCE_INDEX", "BOXER_INSTANCE_NAME")


def cross_field_issues(deployment: Deployment) -> list[Finding]:
    findings: list[Finding] = []
    for name, service in deployment.services.items():
        findings.extend(_service_issues(name, service))
    findings.extend(_name_clashes(deployment))
    findings.extend(_partition_issues(deployment.partition))
    if deployment.backend is Backend.LAMBDA:
        findings.extend(lambda_backend_issues(deployment))
    return findings


def lambda_backend_issues(deployment: Deployment) -> list[Finding]:
    """What the `lambda` backend cannot pass on. `vm` placement and `baseCapacity` it can: those
    instances go to the vm hosts' daemons (docs/aws.md, the vm tier; whether the deployment has
    vm hosts is for `boxer up` to check, against the terraform outputs)."""
    findings: list[Finding] = []
    for name, svc in deployment.services.items():
        for key in sorted(svc.env):
            # The event's env reaches the agent's own process (docs/security.md).
            if key.startswith(("LD_", "PYTHON", "BOXER_")) and key not in _RESERVED_ENV:
                findings.append((
                    ("services", name, "env", key), svc.env[key],
                    f"{key}: LD_*, PYTHON* and BOXER_* variables would reach the agent on Lambda, not just"
                    " the app: set it in the command instead (e.g. `env PYTHONPATH=/app python3 app.py`)",
                ))
    return findings


def _service_issues(name: str, svc: Service) -> Iterator[Finding]:
    base = ("services", name)
    backoff = svc.restart_backoff
    if backoff.max_delay_seconds < backoff.initial_delay_seconds:
        yield (
            (*base, "restartBackoff", "maxDelaySeconds"),
            backoff.max_delay_seconds,
            f"maxDelaySeconds ({backoff.max_delay_seconds:g}) must be >= initialDelaySeconds"
            f" ({backoff.initial_delay_seconds:g}): the delay doubles from the first up to the cap",
        )
    max_instances = svc.effective_max_instances
    if svc.min_instances > max_instances:
        yield (
            (*base, "minInstances"),
            svc.min_instances,
            f"minInstances ({svc.min_instances}) must be <= maxInstances ({max_instances})",
        )
    if svc.autoscale is None and svc.max_instances is not None and max_instances > svc.min_instances:
        yield (
            (*base, "maxInstances"),
            max_instances,
            f"maxInstances ({max_instances}) is above minInstances ({svc.min_instances}) but the"
            " service has no autoscale block, so nothing would ever scale it; add `autoscale:` or"
            f" set maxInstances to {max(svc.min_instances, 1)}",
        )
    if svc.autoscale is None and svc.min_instances == 0:
        yield (
            (*base, "minInstances"),
            0,
            "minInstances 0 needs an autoscale block (scaling from and to zero is part of the"
            " autoscale policy); add `autoscale:` or use minInstances >= 1",
        )
    yield from _placement_issues(base, svc, max_instances)
    yield from _hostname_issues(base, svc, max_instances)
    fields = _service_fields()
    for key in svc.env:
        if key in fields:
            yield (
                (*base, "env", key),
                svc.env[key],
                f"{key!r} is a field of the service, not an environment variable: it is indented"
                " under `env:`; dedent it to line up with `env:`",
            )
    for key in _RESERVED_ENV:
        if key in svc.env:
            yield (
                (*base, "env", key),
                svc.env[key],
                f"{key} is set by boxer for every instance; use another name",
            )
    if svc.autoscale is not None:
        yield from _autoscale_issues((*base, "autoscale"), svc)


def _service_fields() -> set[str]:
    return {info.alias or name for name, info in Service.model_fields.items()}


def command_warnings(deployment: Deployment, base_dir: Path, path: str | None) -> list[Finding]:
    """Programs the lab would not find: each service's command[0] looked up as its instances
    will (on `path`, the PATH the lab hosts get, or the service's own env PATH; a relative path
    from `base_dir`, the file's folder, where instances start). Warnings, not errors: the file
    may be meant for another machine, and on the lambda backend the command runs in the image."""
    if deployment.backend is Backend.LAMBDA:
        return []
    findings: list[Finding] = []
    for name, svc in deployment.services.items():
        program = svc.command[0]
        if "{" in program:
            continue  # a placeholder: known only per instance
        if "/" in program:
            target = Path(os.path.normpath(base_dir / program))
            found = target.is_file() and os.access(target, os.X_OK)
            where = f"no executable file {target}"
        else:
            search = svc.env.get("PATH", path)
            found = shutil.which(program, path=search) is not None
            where = ("not found on its env PATH" if "PATH" in svc.env
                     else "not found on the PATH instances get (that of `boxer up`)")
        if not found:
            close = difflib.get_close_matches(program, _programs_on(path), n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]!r}?" if close and "/" not in program else ""
            findings.append((("services", name, "command", 0), program,
                             f"command {program!r}: {where}{hint} (instances would exit with"
                             " status 127)"))
    return findings


def _programs_on(path: str | None) -> list[str]:
    names: set[str] = set()
    for folder in (path or os.defpath).split(os.pathsep):
        try:
            names.update(os.listdir(folder))
        except OSError:
            continue
    return sorted(names)


def _placement_issues(base: tuple[str, ...], svc: Service, max_instances: int) -> Iterator[Finding]:
    explicit = svc.model_fields_set
    if svc.placement is Placement.VM:
        for attr, alias in (
            ("max_lifetime_seconds", "maxLifetimeSeconds"),
            ("renewal_margin_seconds", "renewalMarginSeconds"),
        ):
            if attr in explicit:
                yield (
                    (*base, alias),
                    getattr(svc, attr),
                    f"{alias} applies to `function` placement only; this service has placement"
                    " `vm`, whose instances have no lifetime limit",
                )
        if svc.base_capacity:
            yield (
                (*base, "baseCapacity"),
                svc.base_capacity,
                "baseCapacity puts the first instances of a `function` service on vm; with"
                " placement `vm` every instance is already on vm, so remove it",
            )
    else:
        lifetime = svc.lifetime_seconds
        assert lifetime is not None  # function placement always has a lifetime
        if svc.renewal_margin_seconds >= lifetime:
            yield (
                (*base, "renewalMarginSeconds"),
                svc.renewal_margin_seconds,
                f"renewalMarginSeconds ({svc.renewal_margin_seconds:g}) must be below the"
                f" instance lifetime maxLifetimeSeconds ({lifetime:g}), or every instance would"
                " be renewed as soon as it starts",
            )
        if svc.base_capacity > max_instances:
            yield (
                (*base, "baseCapacity"),
                svc.base_capacity,
                f"baseCapacity ({svc.base_capacity}) must be <= maxInstances ({max_instances})",
            )


def _hostname_issues(base: tuple[str, ...], svc: Service, max_instances: int) -> Iterator[Finding]:
    if svc.hostnames is None:
        return
    if len(svc.hostnames) < max_instances:
        yield (
            (*base, "hostnames"),
            list(svc.hostnames),
            f"{len(svc.hostnames)} hostnames for maxInstances {max_instances}: give one name per"
            " instance, or lower maxInstances",
        )
    seen: set[str] = set()
    for position, host in enumerate(svc.hostnames):
        if host in seen:
            yield (
                (*base, "hostnames", position),
                host,
                f"hostname {host!r} appears twice; every instance needs its own name",
            )
        seen.add(host)


def _autoscale_issues(base: tuple[str, ...], svc: Service) -> Iterator[Finding]:
    policy = svc.autoscale
    assert policy is not None
    if policy.panic_window_seconds >= policy.stable_window_seconds:
        yield (
            (*base, "panicWindowSeconds"),
            policy.panic_window_seconds,
            f"panicWindowSeconds ({policy.panic_window_seconds:g}) must be shorter than"
            f" stableWindowSeconds ({policy.stable_window_seconds:g})",
        )
    if policy.metric is Metric.CPU and policy.target > 100:
        yield (
            (*base, "target"),
            policy.target,
            f"target {policy.target:g} for metric cpu is a utilisation in percent of one"
            " instance's CPU; allowed: above 0 and at most 100",
        )
    lifetime = svc.lifetime_seconds
    if lifetime is not None and policy.scale_from_zero_timeout_seconds >= lifetime:
        yield (
            (*base, "scaleFromZeroTimeoutSeconds"),
            policy.scale_from_zero_timeout_seconds,
            f"scaleFromZeroTimeoutSeconds ({policy.scale_from_zero_timeout_seconds:g}) must be"
            f" below the instance lifetime ({lifetime:g})",
        )


def _partition_issues(policy: PartitionPolicy) -> Iterator[Finding]:
    if policy.halt_threshold_percentage < policy.quiet_threshold_percentage:
        yield (
            ("partition", "haltThresholdPercentage"),
            policy.halt_threshold_percentage,
            f"haltThresholdPercentage ({policy.halt_threshold_percentage:g}) must be >="
            f" quietThresholdPercentage ({policy.quiet_threshold_percentage:g}): replacing none"
            " is the step after replacing at a limited rate",
        )


def _name_clashes(deployment: Deployment) -> Iterator[Finding]:
    """Service names and instance names share one namespace: the overlay's host names."""
    owner: dict[str, tuple[str, ...]] = {}
    for name, svc in deployment.services.items():
        candidates: list[tuple[str, tuple[str | int, ...]]] = [(name, ("services", name))]
        for index in range(1, svc.effective_max_instances + 1):
            where: tuple[str | int, ...] = ("services", name)
            if svc.hostnames is not None and index <= len(svc.hostnames):
                where = ("services", name, "hostnames", index - 1)
            candidates.append((svc.instance_name(name, index), where))
        for host, where in candidates:
            if host in owner and owner[host] != ("services", name):
                yield (
                    where,
                    host,
                    f"host name {host!r} is used twice: by service {owner[host][1]!r} and by"
                    f" service {name!r}; service and instance names must be unique",
                )
            owner.setdefault(host, ("services", name))
