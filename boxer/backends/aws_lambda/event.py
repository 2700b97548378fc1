"""The Lambda event that turns one invocation into one instance: schema, build, parse.

The controller side builds it from an InstanceSpec; the handler inside the function parses it.
Both live here so the two cannot drift apart. The event never carries the deployment secret,
and the function cannot read it: it carries the instance's id and its token, which the
controller derived from the secret and which authenticates that instance and nothing else.

    {
      "version": 2,
      "name": "kv-1", "service": "kv", "index": 1,
      "command": ["redis-server", "--port", "6379"],
      "env": {"MAXMEMORY": "64mb"},
      "coordinator": "203.0.113.7:7000",
      "instance": "9f0c2e4a1b3d5e7f",        # the id the controller chose
      "token": "<64 hex digits>",            # HMAC(secret, "instance:" + instance)
      "lifetime": 840.0                      # optional, seconds
    }

Version 1 named where the function should read the deployment secret ("secret"): version 2
replaced it with "instance" and "token" (docs/security.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from boxer.backends.base import InstanceSpec
from boxer.backends.errors import EventError

__all__ = ["EVENT_VERSION", "LambdaEvent", "event_for"]

EVENT_VERSION = 2

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})$")
_INSTANCE = re.compile(r"^[0-9a-f]{8,64}$")  # as the protocol's instance ids (messages.check_token)
_TOKEN = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = ("version", "name", "service", "index", "command", "coordinator", "instance", "token")
_OPTIONAL = ("env", "lifetime")
_MAX_LIFETIME = 1e9  # seconds (31 years): more is a mistake, not a lifetime


@dataclass(frozen=True)
class LambdaEvent:
    name: str
    service: str
    index: int
    command: tuple[str, ...]
    coordinator: str
    instance: str
    token: str = field(repr=False)  # the instance's credential: never in a repr or a log line
    env: Mapping[str, str] = field(default_factory=dict)
    lifetime: float | None = None

    def to_dict(self) -> dict[str, Any]:
        event: dict[str, Any] = {
            "version": EVENT_VERSION,
            "name": self.name,
            "service": self.service,
            "index": self.index,
            "command": list(self.command),
            "env": dict(sorted(self.env.items())),
            "coordinator": self.coordinator,
            "instance": self.instance,
            "token": self.token,
        }
        if self.lifetime is not None:
            event["lifetime"] = self.lifetime
        return event

    @classmethod
    def from_dict(cls, event: Any) -> LambdaEvent:
        """Parse and check an event; EventError lists every problem at once."""
        if not isinstance(event, Mapping):
            raise EventError([f"the event must be a JSON object, not {type(event).__name__}"])
        problems: list[str] = []
        missing = [key for key in _REQUIRED if key not in event]
        if missing:
            problems.append("missing field(s): " + ", ".join(missing))
        unknown = sorted(set(event) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            allowed = ", ".join(_REQUIRED + _OPTIONAL)
            problems.append(f"unknown field(s): {', '.join(unknown)} (allowed: {allowed})")

        version = event.get("version", EVENT_VERSION)
        if version != EVENT_VERSION:
            problems.append(f"version {version!r} is not supported (this handler speaks "
                            f"{EVENT_VERSION})")
        for key in ("name", "service"):
            value = event.get(key, "x")
            if not isinstance(value, str) or not _NAME.match(value):
                problems.append(f"{key} {value!r} is not a DNS label (a-z, 0-9, '-')")
        index = event.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            problems.append(f"index {index!r} is not an integer >= 0")
        command = event.get("command", ["x"])
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            problems.append(f"command {command!r} is not a list of strings")
        elif not command:
            problems.append("command is empty")
        env = event.get("env", {})
        if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            problems.append("env must be an object of string to string")
        else:
            problems.extend(env_problems(env))
        coordinator = event.get("coordinator", "x:1")
        if not isinstance(coordinator, str) or not _valid_host_port(coordinator):
            problems.append(f"coordinator {coordinator!r} is not 'host:port'")
        instance = event.get("instance", "00000000")
        if not isinstance(instance, str) or not _INSTANCE.match(instance):
            problems.append(f"instance {instance!r} is not 8-64 lowercase hex digits")
        token = event.get("token", "0" * 64)
        if not isinstance(token, str) or not _TOKEN.match(token):
            problems.append("token is not 64 lowercase hex digits (the instance token the controller issues)")
        lifetime = event.get("lifetime")
        # Bounded above: an integer of 400 digits is a JSON number too, and float() of it would
        # raise OverflowError (fuzzing found it); infinity and NaN are no lifetime either.
        if lifetime is not None and (
            isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not 0 < lifetime <= _MAX_LIFETIME
        ):
            problems.append(f"lifetime {lifetime!r:.40} must be a number of seconds > 0 and <= {_MAX_LIFETIME:g}")

        if problems:
            raise EventError(problems)
        return cls(
            name=event["name"],
            service=event["service"],
            index=index,
            command=tuple(command),
            coordinator=coordinator,
            instance=instance,
            token=token,
            env=dict(env),
            lifetime=float(lifetime) if lifetime is not None else None,
        )


# The event's `env` reaches the agent's own process (Python, then the app under the interposer):
# these would run code in it or change what boxer does (LD_PRELOAD, PYTHONPATH, BOXER_INSTANCE_ID).
REFUSED_ENV_PREFIXES = ("LD_", "PYTHON", "BOXER_")
# ... except what the handler sets itself from the event's own fields (not sent).
_DERIVED_ENV = ("BOXER_INSTANCE_INDEX", "BOXER_INSTANCE_NAME")
# The controller's choice of the instance's id, in the spec's env for every backend: here it
# travels as the event's `instance`, beside the token bound to it.
INSTANCE_ID_ENV = "BOXER_INSTANCE_ID"


def env_problems(env: Mapping[str, str]) -> list[str]:
    refused = sorted(key for key in env if key.startswith(REFUSED_ENV_PREFIXES))
    if not refused:
        return []
    return [f"env may not set {', '.join(refused)}: LD_*, PYTHON* and BOXER_* would reach the agent itself; "
            "an app that needs one sets it in its command (e.g. `env PYTHONPATH=/app python3 app.py`)"]


def event_for(spec: InstanceSpec, *, coordinator: str) -> LambdaEvent:
    """The event that starts `spec` inside a function: its id and token (the controller's, in
    the spec) and never the deployment secret. ValueError if the spec has no token or id, or
    its env holds a key the event refuses (the deployment file's checks say so first)."""
    if not _valid_host_port(coordinator):
        raise ValueError(f"coordinator {coordinator!r} is not 'host:port'")
    instance = spec.env.get(INSTANCE_ID_ENV)
    if spec.token is None or instance is None:
        raise ValueError(f"instance {spec.name} has no instance id and token: the controller issues them "
                         "(an instance on Lambda never gets the deployment secret)")
    env = {key: value for key, value in spec.env.items() if key not in (*_DERIVED_ENV, INSTANCE_ID_ENV)}
    if problems := env_problems(env):
        raise ValueError(f"instance {spec.name}: {problems[0]}")
    return LambdaEvent(
        name=spec.name,
        service=spec.service,
        index=spec.index,
        command=tuple(spec.command),
        coordinator=coordinator,
        instance=instance,
        token=spec.token,
        env=env,
        lifetime=spec.max_lifetime,
    )


def _valid_host_port(value: str) -> bool:
    match = _HOST_PORT.match(value)
    return bool(match) and 0 < int(match["port"]) < 65536  # type: ignore[index]
