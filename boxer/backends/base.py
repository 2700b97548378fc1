"""What every backend offers the controller: launch an instance from a spec, stop it.

A backend is chosen by name (`get_backend("lambda", ...)`). The registry holds import paths, not
classes, so `boxer run` (which never needs a backend) and the `local` backend never import boto3.
"""

from __future__ import annotations

import enum
import importlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from boxer.backends.errors import UnknownBackend

__all__ = [
    "Backend",
    "HandleState",
    "InstanceHandle",
    "InstanceSpec",
    "Placement",
    "get_backend",
    "known_backends",
    "register_backend",
]

log = logging.getLogger(__name__)

# Instance and service names become host names on the overlay: keep them DNS labels.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TOKEN = re.compile(r"^[0-9a-f]{64}$")


class Placement(str, enum.Enum):
    """Where an instance runs, named in the deployment file (controller/spec.py) and in the spec
    a backend launches: the one definition."""

    VM = "vm"  # long-running public host: base capacity
    FUNCTION = "function"  # NATed, lifetime-capped host (Lambda): bursts


@dataclass(frozen=True)
class InstanceSpec:
    """One instance to start. Validated when built, so a backend can trust it."""

    name: str
    service: str
    index: int
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    placement: Placement = Placement.FUNCTION
    # Upper bound on the instance's life in seconds (the controller's renewal policy); a
    # Lambda instance is further capped by what is left of its invocation.
    max_lifetime: float | None = None
    # The instance's token (hex, auth.instance_token of the id in env BOXER_INSTANCE_ID), which
    # the controller issues: the agent's only credential. Never in a repr, a log or a status.
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problems = []
        for label, value in (("name", self.name), ("service", self.service)):
            if not isinstance(value, str) or not _NAME.match(value):
                problems.append(f"{label} {value!r} is not a DNS label (a-z, 0-9, '-')")
        if not isinstance(self.index, int) or isinstance(self.index, bool) or self.index < 0:
            problems.append(f"index {self.index!r} is not an integer >= 0")
        # Accept any sequence of strings, store a tuple: the spec is frozen and hashable.
        command = self.command
        if isinstance(command, str) or not all(isinstance(a, str) for a in command):
            problems.append(f"command {command!r} is not a list of strings")
        elif not command:
            problems.append("command is empty")
        else:
            object.__setattr__(self, "command", tuple(command))
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            problems.append("env keys and values must be strings")
        try:
            object.__setattr__(self, "placement", Placement(self.placement))
        except ValueError:
            problems.append(f"placement {self.placement!r} is not one of vm, function")
        if self.max_lifetime is not None and not self.max_lifetime > 0:
            problems.append(f"max_lifetime {self.max_lifetime!r} must be > 0")
        if self.token is not None and not _TOKEN.match(self.token):
            problems.append("token must be 64 lowercase hex digits (an instance token)")
        if problems:
            raise ValueError("bad instance spec: " + "; ".join(problems))
        object.__setattr__(self, "env", dict(self.env))


class HandleState(str, enum.Enum):
    LAUNCHED = "launched"  # the backend accepted it; registration is the controller's business
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(eq=False)
class InstanceHandle:
    """A launched instance as the backend knows it.

    The controller tracks registration with the coordinator; when an instance never registers
    within its deadline, the controller calls `mark_failed(reason)`. Ending a handle (failed or
    stopped) runs the backend's release hooks once, e.g. to give back a concurrency slot.
    """

    spec: InstanceSpec
    backend: str
    launched_at: float = field(default_factory=time.time)  # wall clock, for status tables
    state: HandleState = HandleState.LAUNCHED
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # backend facts, e.g. request id
    _on_end: list[Callable[[InstanceHandle], None]] = field(default_factory=list, repr=False)

    @property
    def ended(self) -> bool:
        return self.state is not HandleState.LAUNCHED

    def on_end(self, hook: Callable[[InstanceHandle], None]) -> None:
        self._on_end.append(hook)

    def mark_failed(self, reason: str) -> None:
        self._end(HandleState.FAILED, reason)

    def mark_stopped(self, reason: str = "stopped") -> None:
        self._end(HandleState.STOPPED, reason)

    def _end(self, state: HandleState, reason: str) -> None:
        if self.ended:  # the first ending wins; a late "stopped" must not hide a failure
            return
        self.state = state
        self.reason = reason
        log.info("instance %s %s: %s", self.spec.name, state.value, reason)
        hooks, self._on_end = self._on_end, []
        for hook in hooks:
            hook(self)


@runtime_checkable
class Backend(Protocol):
    name: str

    async def launch(self, spec: InstanceSpec) -> InstanceHandle: ...

    async def stop(self, handle: InstanceHandle) -> None: ...


# name -> "module:attribute"; imported only when asked for.
_REGISTRY: dict[str, str] = {
    "lambda": "boxer.backends.aws_lambda.backend:LambdaBackend",
    "lambda-local": "boxer.backends.emulators.lambda_local:LocalLambdaBackend",
    "local": "boxer.backends.local:LocalBackend",
}


def register_backend(name: str, target: str) -> None:
    """Make `get_backend(name)` build `target` ("package.module:Factory")."""
    if ":" not in target:
        raise ValueError(f"backend target {target!r} must look like 'package.module:Factory'")
    _REGISTRY[name] = target


def known_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str, **options: Any) -> Backend:
    """Build the backend called `name` with its options (imports its module only now)."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UnknownBackend(name, known_backends()) from None
    module_name, _, attribute = target.partition(":")
    factory = getattr(importlib.import_module(module_name), attribute)
    backend: Backend = factory(**options)
    return backend
