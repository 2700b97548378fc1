"""The Lambda event schema: what the backend sends is what the handler accepts; bad events are
refused with every problem named; the generated events are pinned by golden files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from boxer.backends import EventError, InstanceSpec, Placement
from boxer.backends.aws_lambda.event import LambdaEvent, event_for
from boxer.backends.aws_lambda.facts import LambdaFacts
from boxer.nat_traversal.auth import instance_token

GOLDEN = Path(__file__).parent / "golden" / "lambda"
REGEN = os.environ.get("BOXER_REGEN_GOLDEN") == "1"

FACTS = LambdaFacts(
    function_name="boxer-demo",
    coordinator_address="203.0.113.7:7000",
    secret_parameter_name="/boxer/demo/secret",
    region="eu-west-1",
)

SECRET = bytes(range(32))  # the controller's; the event carries a token derived from it
SPECS = {
    "redis_function": InstanceSpec(
        name="kv-1", service="kv", index=1, command=["redis-server", "--port", "6379"],
        env={"BOXER_INSTANCE_INDEX": "1", "BOXER_INSTANCE_ID": "0123456789abcdef", "MAXMEMORY": "64mb"},
        placement=Placement.FUNCTION, max_lifetime=840.0,
        token=instance_token(SECRET, "0123456789abcdef").hex(),
    ),
    "nginx_no_lifetime": InstanceSpec(
        name="web-0", service="web", index=0, env={"BOXER_INSTANCE_ID": "fedcba9876543210"},
        command=["nginx", "-g", "daemon off;"], placement="function",
        token=instance_token(SECRET, "fedcba9876543210").hex(),
    ),
}


def valid_event(**changes: object) -> dict[str, object]:
    event: dict[str, object] = {
        "version": 2, "name": "kv-1", "service": "kv", "index": 1,
        "command": ["redis-server"], "env": {}, "coordinator": "10.0.0.1:7000",
        "instance": "0123456789abcdef", "token": "ab" * 32,
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not None}


def check_golden(name: str, value: object) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    if REGEN:
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with BOXER_REGEN_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs (BOXER_REGEN_GOLDEN=1 to accept)"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_generated_event_matches_golden(name: str) -> None:
    event = event_for(SPECS[name], coordinator=FACTS.coordinator_address).to_dict()
    check_golden(name, event)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_generated_event_round_trips_through_the_parser(name: str) -> None:
    spec = SPECS[name]
    event = event_for(spec, coordinator="203.0.113.7:7000")
    parsed = LambdaEvent.from_dict(json.loads(json.dumps(event.to_dict())))
    assert parsed == event
    assert parsed.command == spec.command
    assert parsed.lifetime == spec.max_lifetime


def test_the_event_carries_the_instances_token_and_nothing_of_the_secret() -> None:
    event = event_for(SPECS["redis_function"], coordinator="h:1")
    wire = json.dumps(event.to_dict())
    assert event.instance == "0123456789abcdef" and "BOXER_INSTANCE_ID" not in event.env
    assert event.token == instance_token(SECRET, "0123456789abcdef").hex()
    assert SECRET.hex() not in wire and "secret" not in wire
    assert event.token not in repr(event)  # never in a log line


def test_a_spec_without_the_controllers_token_is_not_sent() -> None:
    spec = InstanceSpec(name="kv-1", service="kv", index=1, command=["redis-server"],
                        env={"BOXER_INSTANCE_ID": "0123456789abcdef"})
    with pytest.raises(ValueError, match="kv-1 has no instance id and token: the controller issues them"):
        event_for(spec, coordinator="10.0.0.1:7000")


def test_missing_fields_are_all_listed() -> None:
    with pytest.raises(EventError) as info:
        LambdaEvent.from_dict({"version": 2, "name": "kv-1"})
    assert info.value.problems == [
        "missing field(s): service, index, command, coordinator, instance, token"
    ]


def test_every_bad_field_is_reported_at_once() -> None:
    bad = valid_event(name="KV_1", index=-1, command="redis-server", coordinator="nope",
                      lifetime=0, env={"A": 1})
    with pytest.raises(EventError) as info:
        LambdaEvent.from_dict(bad)
    problems = info.value.problems
    assert "name 'KV_1' is not a DNS label (a-z, 0-9, '-')" in problems
    assert "index -1 is not an integer >= 0" in problems
    assert "command 'redis-server' is not a list of strings" in problems
    assert "coordinator 'nope' is not 'host:port'" in problems
    assert "lifetime 0 must be a number of seconds > 0 and <= 1e+09" in problems
    assert "env must be an object of string to string" in problems
    assert len(problems) == 6


@pytest.mark.parametrize("lifetime", [10**400, float("inf"), float("nan"), 1e9 + 1])
def test_a_lifetime_beyond_any_float_or_reason_is_a_problem_not_a_crash(lifetime: float) -> None:
    """float(10**400) raised OverflowError out of from_dict (scripts/fuzz.py's vmhost target found
    it through a start's event): the handler and the host daemon expect only EventError."""
    with pytest.raises(EventError) as info:
        LambdaEvent.from_dict(valid_event(lifetime=lifetime))
    (problem,) = info.value.problems
    assert problem.startswith("lifetime ") and problem.endswith("must be a number of seconds > 0 and <= 1e+09")
    assert len(problem) < 120


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"token": "ab" * 16}, "token is not 64 lowercase hex digits (the instance token the controller issues)"),
        ({"token": 7}, "token is not 64 lowercase hex digits"),
        ({"instance": "Bad!"}, "instance 'Bad!' is not 8-64 lowercase hex digits"),
    ],
)
def test_bad_credentials(changes: dict[str, object], expected: str) -> None:
    with pytest.raises(EventError, match="bad boxer event") as info:
        LambdaEvent.from_dict(valid_event(**changes))
    assert info.value.problems[0].startswith(expected)


def test_unknown_fields_and_versions_are_refused() -> None:
    """A version 1 event (it named where the function should read the deployment secret) is
    refused by name, with the field it carried."""
    v1 = {**valid_event(version=1, instance=None, token=None), "secret": {"ssm_parameter": "/boxer/x"}}
    with pytest.raises(EventError) as info:
        LambdaEvent.from_dict(v1)
    assert info.value.problems[0] == "missing field(s): instance, token"
    assert info.value.problems[1].startswith("unknown field(s): secret (allowed: version,")
    assert info.value.problems[2] == "version 1 is not supported (this handler speaks 2)"


def test_non_object_event() -> None:
    with pytest.raises(EventError, match="must be a JSON object, not list"):
        LambdaEvent.from_dict([1, 2])


def test_empty_command_and_port_range() -> None:
    with pytest.raises(EventError) as info:
        LambdaEvent.from_dict(valid_event(command=[], coordinator="h:70000"))
    assert info.value.problems == ["command is empty", "coordinator 'h:70000' is not 'host:port'"]


def test_instance_spec_validation() -> None:
    with pytest.raises(ValueError) as info:
        InstanceSpec(name="a b", service="kv", index=True, command=[], placement="cloud")
    message = str(info.value)
    assert "name 'a b' is not a DNS label" in message
    assert "index True is not an integer >= 0" in message
    assert "command is empty" in message
    assert "placement 'cloud' is not one of vm, function" in message


def test_env_keys_that_would_reach_the_agent_are_refused() -> None:
    """Before: an event's env reached the agent with any key: LD_PRELOAD or PYTHONPATH ran code in
    it, BOXER_SECRET_FILE changed what it authenticates with."""
    event = valid_event(env={"LD_PRELOAD": "/tmp/x.so", "PYTHONPATH": "/tmp", "BOXER_SECRET_FILE": "/tmp/s",
                             "MAXMEMORY": "64mb"})
    with pytest.raises(EventError) as caught:
        LambdaEvent.from_dict(event)
    assert ("env may not set BOXER_SECRET_FILE, LD_PRELOAD, PYTHONPATH: LD_*, PYTHON* and BOXER_* would reach "
            "the agent itself") in str(caught.value)


def test_a_spec_whose_env_the_event_would_refuse_is_not_sent() -> None:
    spec = InstanceSpec(name="kv-1", service="kv", index=1, command=["redis-server"],
                        env={"LD_PRELOAD": "x.so", "BOXER_INSTANCE_ID": "0123456789abcdef"}, token="ab" * 32)
    with pytest.raises(ValueError, match="instance kv-1: env may not set LD_PRELOAD"):
        event_for(spec, coordinator="10.0.0.1:7000")
