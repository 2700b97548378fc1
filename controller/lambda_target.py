"""The AWS Lambda function a `lambda` deployment runs on, checked before anything starts.

`boxer up --backend lambda` needs terraform's outputs file, the secret in SSM (standard
credential chain), the function and the coordinator; `preflight` checks them all and says the
first problem in one line. The concurrency the controller may use is `lambda.maxConcurrency`
lowered to what AWS lets the function run at once; an apply of an edited `lambda:` block works
it out again (`settings_again`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxer.controller.errors import DeploymentError
from boxer.controller.record import DeploymentRecord

__all__ = ["LambdaTarget", "concurrency_slots", "preflight", "settings_again"]

Say = Callable[[str], None]  # one line for the user


@dataclass(frozen=True)
class LambdaTarget:
    outputs: str
    function: str
    region: str
    coordinator: str
    max_concurrency: int
    register_timeout: float | None


def preflight(file: Path, deployment: Any, outputs: Path | None, say: Say) -> LambdaTarget:
    """Everything `--backend lambda` needs, checked before anything starts. The secret is only
    used to open a test session; the controller reads it again itself."""
    from boxer.backends.aws_lambda.preflight import SetupError, load_facts, outputs_path
    from boxer.backends.aws_lambda.preflight import preflight as check
    from boxer.controller.spec import LambdaSettings

    settings = deployment.lambda_ or LambdaSettings()
    try:
        path = outputs_path(outputs, os.environ, settings.outputs, file.resolve().parent)
        facts = load_facts(path)
    except SetupError as exc:
        raise DeploymentError(str(exc)) from None
    # Before any AWS call: a file the outputs cannot run is fixed first.
    if not facts.vm_host_group:
        vm = vm_services(deployment)
        if vm:
            raise DeploymentError(
                f"{path}: {', '.join(vm)} run on vm hosts, and this deployment has none (no vm_host_group"
                " output): set the terraform variable vm_host_count (e.g. 2), `terraform apply`, then"
                f" `terraform output -json > {path.name}` (docs/aws.md, the vm tier)")
    try:
        check(facts, path)
    except SetupError as exc:
        raise DeploymentError(str(exc)) from None

    return LambdaTarget(outputs=str(path.resolve()), function=facts.function_name, region=facts.region,
                        coordinator=facts.coordinator_address,
                        max_concurrency=concurrency_slots(settings, facts, say),
                        register_timeout=settings.register_timeout_seconds)


def vm_services(deployment: Any) -> list[str]:
    """`services.NAME` of each service that puts instances on vm hosts (placement vm, or a
    baseCapacity)."""
    from boxer.controller.spec import Placement

    return [f"services.{name}" for name, svc in deployment.services.items()
            if svc.placement is Placement.VM or svc.base_capacity]


def concurrency_slots(settings: Any, facts: Any, say: Say) -> int:
    """`lambda.maxConcurrency`, lowered to what AWS lets the function run at once (its
    reserved concurrency, else the account's unreserved share); says so when it was."""
    from boxer.backends.aws_lambda.preflight import SetupError, concurrency_limit, effective_concurrency

    try:
        limit, source = concurrency_limit(facts)
        slots, note = effective_concurrency(settings.max_concurrency, limit, source, facts.function_name)
    except SetupError as exc:
        raise DeploymentError(str(exc)) from None
    if note:
        say(note)
    return slots


def settings_again(running: Any, edited: Any, record: DeploymentRecord, say: Say) -> dict[str, Any]:
    """The edits to a running deployment's `lambda:` block, for its controller, as record fields:
    the concurrency it may use, looked up again as at `boxer up` (the function's reserved
    concurrency or the account's unreserved share may have changed since), and the
    registration timeout."""
    from boxer.backends.aws_lambda.preflight import SetupError, load_facts
    from boxer.controller.spec import LambdaSettings

    before, after = running.lambda_ or LambdaSettings(), edited.lambda_ or LambdaSettings()
    found: dict[str, Any] = {}
    if after.register_timeout_seconds != before.register_timeout_seconds:
        found["register_timeout"] = after.register_timeout_seconds
    if after.max_concurrency != before.max_concurrency:
        try:
            facts = load_facts(record.outputs)
        except SetupError as exc:
            raise DeploymentError(str(exc)) from None
        found["max_concurrency"] = concurrency_slots(after, facts, say)
    return found
