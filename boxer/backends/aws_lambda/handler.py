"""The function handler: one Lambda invocation becomes one boxer instance.

awslambdaric calls `handler(event, context)` (image CMD: `boxer.backends.aws_lambda.handler.handler`). It

1. parses the event (boxer.backends.aws_lambda.event) - a bad event raises EventError listing every
   problem, before anything is started;
2. writes the instance's token (from the event: the controller issues it; the function never
   holds the deployment secret, nor may its role read it) to a 0600 file under /tmp - the only
   writable place - whose path goes to the agent in BOXER_INSTANCE_TOKEN_FILE, with the
   instance's id in BOXER_INSTANCE_ID: the token is never on a command line nor in a log line;
3. starts `python -m boxer run --lifetime L ... -- CMD` in its own process group, with
   RLIMIT_NOFILE at most 1024 (Lambda's limit: we want the lab to fail the way Lambda would);
4. waits, and returns {"instance", "exit_status", "reason", "duration", "lifetime"}.

Ending before the deadline, and why no extension: Lambda delivers SIGTERM to the runtime only
when an extension is registered, and then leaves a few hundred ms. Rather than ship an
extension, we stop ourselves: the agent gets `--lifetime` = remaining time minus a margin, so
it drains (stops taking connections, lets the controller start a replacement, deregisters) and
exits well before Lambda would freeze or kill the sandbox. Should the agent overrun, the
handler sends SIGTERM and then SIGKILL to its process group, still inside the margin, so the
invocation always returns and reports why it ended.

Errors: a bad event raises (the invocation is reported as a function
error, visible in Lambda's Errors metric; terraform sets async retries to 0, since relaunching
is the controller's decision). A failure to start the agent is reported as reason "error".
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from boxer._python import module_argv
from boxer.backends.aws_lambda.event import LambdaEvent
from boxer.backends.aws_lambda.secrets import TokenFile

__all__ = [
    "NOFILE_LIMIT",
    "PROBE_KEY",
    "AgentLaunch",
    "HandlerTimeouts",
    "agent_argv",
    "handler",
    "make_handler",
]

log = logging.getLogger(__name__)

NOFILE_LIMIT = 1024  # Lambda's file descriptor limit


class Context(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True)
class HandlerTimeouts:
    """How the remaining invocation time is split (seconds).

    agent lifetime = remaining - margin; then up to `exit_grace` for the agent to finish on its
    own, `term_grace` after SIGTERM, and SIGKILL. margin must cover both graces plus the time
    to return the result.
    """

    margin: float = 10.0
    exit_grace: float = 4.0
    term_grace: float = 3.0
    min_lifetime: float = 1.0  # below this, starting an instance is pointless

    def __post_init__(self) -> None:
        if self.margin < self.exit_grace + self.term_grace:
            raise ValueError(
                f"margin {self.margin} s must cover exit_grace {self.exit_grace} s + "
                f"term_grace {self.term_grace} s"
            )


@dataclass(frozen=True)
class AgentLaunch:
    """Everything the handler decided before starting the agent."""

    event: LambdaEvent
    token_file: Path
    lifetime: float  # seconds the agent may run, draining included


def agent_argv(launch: AgentLaunch) -> list[str]:
    """The real command: `boxer run` for this instance (the token travels as a file path)."""
    event = launch.event
    return [
        *module_argv("boxer", "run"),
        "--name", event.name,
        "--service", event.service,
        "--coordinator", event.coordinator,
        "--lifetime", f"{launch.lifetime:.3f}",
        "--", *event.command,
    ]


ArgvBuilder = Callable[[AgentLaunch], list[str]]


def agent_env(launch: AgentLaunch, base: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment: `base` (the sandbox's, or a vm host daemon's) without any
    deployment secret it may hold, the event's env, and what names this instance and its token."""
    event = launch.event
    env = {key: value for key, value in base.items() if key not in _NOT_FOR_THE_AGENT}
    env.update(event.env)
    env.update(
        BOXER_COORDINATOR=event.coordinator,
        BOXER_INSTANCE_ID=event.instance,
        BOXER_INSTANCE_TOKEN_FILE=str(launch.token_file),
        BOXER_INSTANCE_NAME=event.name,
        BOXER_INSTANCE_INDEX=str(event.index),
        BOXER_SERVICE=event.service,
    )
    return env


# An instance's agent holds its token only (docs/security.md): never what would lead it to the
# deployment secret, nor another token than its own.
_NOT_FOR_THE_AGENT = frozenset({"BOXER_SECRET", "BOXER_SECRET_FILE", "BOXER_INSTANCE_TOKEN",
                                "BOXER_INSTANCE_TOKEN_FILE"})


def cap_open_files(limit: int = NOFILE_LIMIT) -> None:
    """Lower RLIMIT_NOFILE (soft and hard) to at most `limit`. Runs in the child before exec."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    def cap(current):
        return limit if current == resource.RLIM_INFINITY else min(current, limit)
    resource.setrlimit(resource.RLIMIT_NOFILE, (cap(soft), cap(hard)))


def make_handler(
    argv_for: ArgvBuilder = agent_argv,
    *,
    timeouts: HandlerTimeouts = HandlerTimeouts(),
    token_dir: str | None = None,
) -> Callable[[Any, Context], dict[str, Any]]:
    """Build a handler. Tests inject `argv_for` (e.g. `sh -c 'exit 3'`) in place of boxer run;
    everything else - token file, limits, process group, deadline - stays the real path."""

    def handle(event: Any, context: Context) -> dict[str, Any]:
        if isinstance(event, dict) and PROBE_KEY in event:
            return probe(event[PROBE_KEY] or {})
        started = time.monotonic()
        parsed = LambdaEvent.from_dict(event)  # raises EventError: nothing started yet
        remaining = context.get_remaining_time_in_millis() / 1000.0
        lifetime = remaining - timeouts.margin
        if parsed.lifetime is not None:
            lifetime = min(lifetime, parsed.lifetime)
        if lifetime < timeouts.min_lifetime:
            raise ValueError(
                f"only {remaining:.1f} s left in this invocation; with a {timeouts.margin:g} s "
                f"margin the instance would live {lifetime:.1f} s (< {timeouts.min_lifetime:g}"
                " s): raise the function timeout"
            )
        log.info("starting instance %s (service %s) for %.1f s", parsed.name, parsed.service,
                 lifetime)
        with TokenFile(parsed.token, parent=token_dir or _tmp_dir()) as token_file:
            launch = AgentLaunch(parsed, token_file.path, lifetime)
            exit_status, reason = _run_agent(argv_for(launch), agent_env(launch, os.environ),
                                             lifetime, timeouts)
        result = {
            "instance": parsed.name,
            "exit_status": exit_status,
            "reason": reason,
            "duration": round(time.monotonic() - started, 3),
            "lifetime": round(lifetime, 3),
        }
        log.info("instance ended: %s", json.dumps(result))
        return result

    return handle


PROBE_KEY = "boxer_probe"  # {"boxer_probe": {"coordinator": "host:port"}}: `boxer probe-lambda`


def probe(request: Mapping[str, Any]) -> dict[str, Any]:
    """`boxer probe-lambda`: what this sandbox allows (boxer.agent.features) and, given a
    coordinator, the NAT it sits behind (boxer.agent.natprobe, as `boxer probe-nat`)."""
    from boxer.agent.features import probe_lambda_report

    nat = None
    coordinator = request.get("coordinator")
    if coordinator:
        nat = _probe_nat(str(coordinator))
    return probe_lambda_report(nat)


def _probe_nat(coordinator: str) -> dict[str, Any]:
    import asyncio

    from boxer.agent.control import parse_endpoint
    from boxer.agent.natprobe import probe_filtering, probe_mapping
    from boxer.nat_traversal.defaults import relay_port_of

    host, port = parse_endpoint(coordinator)

    async def measure() -> dict[str, Any]:
        mapping = await probe_mapping((host, port), relay_port_of(port))
        return {**mapping.as_dict(), "filtering": await probe_filtering((host, relay_port_of(port)))}

    try:
        return asyncio.run(measure())
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _tmp_dir() -> str:
    # Lambda: /tmp is the only writable directory. Elsewhere honour TMPDIR.
    return "/tmp" if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") else os.environ.get("TMPDIR", "/tmp")


# How close to its lifetime an agent must exit for the ending to count as "lifetime": the agent
# stops itself at its lifetime, give or take its drain; never more than 5 % of a short lifetime.
_LIFETIME_SLACK = 2.0


def _run_agent(
    argv: list[str], env: dict[str, str], lifetime: float, timeouts: HandlerTimeouts
) -> tuple[int | None, str]:
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
            # The handler thread is the only one running here, so preexec_fn is safe.
            preexec_fn=cap_open_files,
        )
    except OSError as exc:
        log.error("cannot start the agent %r: %s", argv[0], exc)
        return None, "error"
    try:
        status = process.wait(timeout=lifetime + timeouts.exit_grace)
    except subprocess.TimeoutExpired:
        log.warning("agent overran its %.1f s lifetime; sending SIGTERM", lifetime)
        _signal_group(process, signal.SIGTERM)
        try:
            status = process.wait(timeout=timeouts.term_grace)
        except subprocess.TimeoutExpired:
            log.error("agent ignored SIGTERM; sending SIGKILL")
            _signal_group(process, signal.SIGKILL)
            status = process.wait()
        return status, "lifetime"
    finally:
        # Orphans the app may have left in the group must not outlive the invocation.
        _signal_group(process, signal.SIGKILL)
    elapsed = time.monotonic() - started
    slack = min(_LIFETIME_SLACK, 0.05 * lifetime)
    return status, "lifetime" if elapsed >= lifetime - slack else "exited"


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# What the image's CMD names.
handler = make_handler()
