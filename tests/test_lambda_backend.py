"""The `lambda` backend against moto's Lambda, IAM and SSM: launch, throttling with backoff,
failures, the concurrency limit, and facts from `terraform output -json`."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from boxer.backends import (
    CapacityError,
    FactsError,
    HandleState,
    InstanceSpec,
    LaunchError,
    UnknownBackend,
    get_backend,
)
from boxer.backends.aws_lambda.backend import LambdaBackend, RetryPolicy
from boxer.backends.aws_lambda.event import LambdaEvent
from boxer.backends.aws_lambda.facts import LambdaFacts
from boxer.nat_traversal.auth import instance_token

REGION = "eu-west-1"
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.002)


SECRET = bytes(range(32))  # the controller's


def spec(index: int = 0, **changes: Any) -> InstanceSpec:
    """As the controller makes it: the instance's id, and its token (never the secret)."""
    instance = f"{index:016x}"
    return InstanceSpec(**{"name": f"kv-{index}", "service": "kv", "index": index,
                           "command": ["redis-server", "--port", "6379"], "max_lifetime": 840,
                           "env": {"BOXER_INSTANCE_ID": instance},
                           "token": instance_token(SECRET, instance).hex(), **changes})


def outputs(function_name: str = "boxer-demo") -> dict[str, Any]:
    # The shape `terraform output -json` prints.
    return {
        "function_name": {"sensitive": False, "type": "string", "value": function_name},
        "coordinator_address": {"sensitive": False, "type": "string",
                                "value": "203.0.113.7:7000"},
        "secret_parameter_name": {"sensitive": False, "type": "string",
                                  "value": "/boxer/demo/secret"},
        "region": {"sensitive": False, "type": "string", "value": REGION},
        "ecr_repository_url": {"sensitive": False, "type": "string", "value": "x"},
    }


class Recording:
    """A real boto3 client that remembers invoke payloads and can throttle the first calls."""

    def __init__(self, client: Any, throttle_first: int = 0, code: str =
                 "TooManyRequestsException") -> None:
        self.client = client
        self.throttle_left = throttle_first
        self.code = code
        self.payloads: list[dict[str, Any]] = []
        self.calls = 0

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.throttle_left > 0:
            self.throttle_left -= 1
            raise ClientError({"Error": {"Code": self.code, "Message": "Rate exceeded"},
                               "ResponseMetadata": {"HTTPStatusCode": 429}}, "Invoke")
        assert kwargs["InvocationType"] == "Event"
        self.payloads.append(json.loads(kwargs["Payload"]))
        return self.client.invoke(**kwargs)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """moto with an IAM role, an Image function and the SSM secret, like terraform makes."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws(config={"lambda": {"use_docker": False}}):
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(
            RoleName="boxer-demo",
            AssumeRolePolicyDocument=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                               "Principal": {"Service": "lambda.amazonaws.com"}}],
            }),
        )["Role"]["Arn"]
        client = boto3.client("lambda", region_name=REGION)
        client.create_function(
            FunctionName="boxer-demo", Role=role, PackageType="Image",
            Code={"ImageUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/boxer:latest"},
            Timeout=900, MemorySize=1769,
        )
        boto3.client("ssm", region_name=REGION).put_parameter(
            Name="/boxer/demo/secret", Value="ab" * 32, Type="SecureString")
        path = tmp_path / "outputs.json"
        path.write_text(json.dumps(outputs()))
        yield path


def make(aws_outputs: Path, **options: Any) -> tuple[LambdaBackend, Recording]:
    recording = Recording(boto3.client("lambda", region_name=REGION),
                          options.pop("throttle_first", 0))
    backend = LambdaBackend(outputs=aws_outputs, client=recording, retry=options.pop(
        "retry", FAST_RETRY), rng=random.Random(1), **options)
    return backend, recording


def test_launch_invokes_asynchronously_with_a_valid_event(aws: Path) -> None:
    backend, recording = make(aws)

    async def go() -> Any:
        return await backend.launch(spec(3))

    handle = asyncio.run(go())
    assert handle.state is HandleState.LAUNCHED
    assert handle.backend == "lambda"
    assert handle.details["attempts"] == 1
    assert handle.details["function"] == "boxer-demo"
    assert handle.launched_at > 0
    (payload,) = recording.payloads
    parsed = LambdaEvent.from_dict(payload)  # what the handler will accept
    assert parsed.name == "kv-3"
    assert parsed.coordinator == "203.0.113.7:7000"
    assert (parsed.instance, parsed.token) == (f"{3:016x}", instance_token(SECRET, f"{3:016x}").hex())
    assert "secret" not in payload and "ab" * 32 not in json.dumps(payload)  # nor the SSM one
    assert backend.status()["concurrency"] == {"limit": 100, "in_use": 1, "waiting": 0}


def test_get_backend_builds_it_from_the_terraform_outputs(aws: Path) -> None:
    # A boto3 client (run in the backend's thread pool): moto's in-process mock does not patch
    # aiohttp, so the default aiobotocore client is tested against the local Invoke API
    # (tests/test_invoke_api.py), as botocore's real HTTP stack.
    backend = get_backend("lambda", outputs=aws, client=boto3.client("lambda", region_name=REGION))
    assert isinstance(backend, LambdaBackend)
    assert backend.facts == LambdaFacts("boxer-demo", "203.0.113.7:7000",
                                        "/boxer/demo/secret", REGION)

    async def go() -> Any:
        return await backend.launch(spec())

    assert asyncio.run(go()).details["attempts"] == 1  # a real boto3 client, no wrapper


def test_throttling_is_retried_with_backoff(aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        pauses.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("boxer.backends.aws_lambda.backend.asyncio.sleep", fake_sleep)
    backend, recording = make(aws, throttle_first=3,
                              retry=RetryPolicy(attempts=5, base_delay=0.1, max_delay=0.3))
    handle = asyncio.run(backend.launch(spec()))
    assert handle.details["attempts"] == 4
    assert recording.calls == 4 and len(recording.payloads) == 1
    assert backend.throttled_total == 3
    # full jitter: uniform(0, min(cap, base * 2**n)) for n = 0, 1, 2
    assert len(pauses) == 3
    for n, pause in enumerate(pauses):
        assert 0 <= pause <= min(0.3, 0.1 * 2**n)
    expected = random.Random(1)
    assert pauses == [expected.uniform(0, c) for c in (0.1, 0.2, 0.3)]


def test_throttling_that_never_ends_fails_and_frees_the_slot(aws: Path) -> None:
    backend, recording = make(aws, throttle_first=99)
    with pytest.raises(LaunchError) as info:
        asyncio.run(backend.launch(spec()))
    assert info.value.code == "TooManyRequestsException"
    assert info.value.attempts == 4
    assert str(info.value) == ("launching 'kv-0' failed after 4 attempts "
                               "(TooManyRequestsException): still TooManyRequestsException "
                               "(Rate exceeded)")
    assert recording.calls == 4
    assert backend.status()["concurrency"]["in_use"] == 0


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("ResourceNotFoundException",
         "Function not found: arn:aws:lambda:eu-west-1:123456789012:function:boxer-demo"),
        ("AccessDeniedException", "not authorized to perform: lambda:InvokeFunction"),
    ],
)
def test_permanent_errors_are_not_retried(aws: Path, code: str, message: str) -> None:
    client = boto3.client("lambda", region_name=REGION)
    stubber = Stubber(client)
    stubber.add_client_error("invoke", service_error_code=code, service_message=message,
                             http_status_code=404)
    backend = LambdaBackend(outputs=aws, client=client, retry=FAST_RETRY)
    with stubber, pytest.raises(LaunchError) as info:
        asyncio.run(backend.launch(spec()))
    stubber.assert_no_pending_responses()
    assert info.value.code == code
    assert info.value.attempts == 1
    assert message in str(info.value)
    assert backend.status()["concurrency"]["in_use"] == 0


def test_unexpected_status_is_a_failure(aws: Path) -> None:
    client = boto3.client("lambda", region_name=REGION)
    stubber = Stubber(client)
    stubber.add_response("invoke", {"StatusCode": 200, "FunctionError": "Unhandled"})
    backend = LambdaBackend(outputs=aws, client=client, retry=FAST_RETRY)
    with stubber, pytest.raises(LaunchError, match="status 200, expected 202"):
        asyncio.run(backend.launch(spec()))


def test_oversized_event_is_refused_before_any_call(aws: Path) -> None:
    backend, recording = make(aws)
    big = spec(0, env={"BOXER_INSTANCE_ID": f"{0:016x}", "BLOB": "x" * 300_000})
    with pytest.raises(LaunchError, match="over Lambda's 262144 for asynchronous"):
        asyncio.run(backend.launch(big))
    assert recording.calls == 0


def test_concurrency_limit_waits_then_fails_and_slots_come_back(aws: Path) -> None:
    backend, recording = make(aws, max_concurrency=2, slot_timeout=0.2)

    async def go() -> None:
        first = await backend.launch(spec(0))
        await backend.launch(spec(1))
        assert backend.status()["concurrency"] == {"limit": 2, "in_use": 2, "waiting": 0}
        with pytest.raises(CapacityError) as info:
            await backend.launch(spec(2))
        assert info.value.limit == 2
        assert "all 2 concurrency slots stayed busy for 0.2 s" in str(info.value)
        # A waiter is counted while it waits, and gets the slot a failed instance gives back.
        waiter = asyncio.create_task(backend.launch(spec(3)))
        await asyncio.sleep(0.05)
        assert backend.status()["concurrency"]["waiting"] == 1
        first.mark_failed("never registered within 10 s")
        third = await waiter
        assert first.state is HandleState.FAILED
        assert first.reason == "never registered within 10 s"
        assert third.spec.name == "kv-3"
        await backend.stop(third)
        assert third.state is HandleState.STOPPED
        assert backend.status()["concurrency"] == {"limit": 2, "in_use": 1, "waiting": 0}
        first.mark_stopped()  # a late stop neither hides the failure nor frees twice
        assert first.state is HandleState.FAILED
        assert backend.status()["concurrency"]["in_use"] == 1

    asyncio.run(go())
    assert [p["name"] for p in recording.payloads] == ["kv-0", "kv-1", "kv-3"]


def test_a_new_concurrency_limit_applies_to_waiters_and_later_launches(aws: Path) -> None:
    """`boxer up` again with another lambda.maxConcurrency (boxer.controller.reapply)."""
    backend, recording = make(aws, max_concurrency=1, slot_timeout=5)

    async def go() -> None:
        first = await backend.launch(spec(0))
        waiter = asyncio.create_task(backend.launch(spec(1)))
        await asyncio.sleep(0.05)
        assert backend.status()["concurrency"] == {"limit": 1, "in_use": 1, "waiting": 1}
        backend.set_max_concurrency(3)  # raised: the waiter starts now, not at a release
        second = await asyncio.wait_for(waiter, 1)
        await backend.launch(spec(2))
        assert backend.status()["concurrency"] == {"limit": 3, "in_use": 3, "waiting": 0}
        # Lowered under what is in use: nothing running is taken back, and a launch waits
        # until enough slots are given back to be under the new limit.
        backend.set_max_concurrency(2)
        waiter = asyncio.create_task(backend.launch(spec(3)))
        first.mark_stopped()
        await asyncio.sleep(0.05)
        assert not waiter.done()
        assert backend.status()["concurrency"] == {"limit": 2, "in_use": 2, "waiting": 1}
        second.mark_stopped()
        assert (await asyncio.wait_for(waiter, 1)).spec.name == "kv-3"
        with pytest.raises(ValueError, match="max_concurrency must be >= 1"):
            backend.set_max_concurrency(0)

    asyncio.run(go())
    assert [p["name"] for p in recording.payloads] == ["kv-0", "kv-1", "kv-2", "kv-3"]


def test_facts_errors_name_every_problem(tmp_path: Path) -> None:
    bad = outputs()
    del bad["function_name"]
    bad["coordinator_address"]["value"] = "203.0.113.7"
    bad["region"]["value"] = "Ireland"
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(FactsError) as info:
        LambdaFacts.load(path)
    assert info.value.problems == [
        "missing output(s): function_name (was `terraform apply` run with this module?)",
        "coordinator_address '203.0.113.7' is not 'ip:port'",
        "region 'Ireland' does not look like an AWS region (eu-west-1)",
    ]


def test_facts_file_unreadable_or_not_json(tmp_path: Path) -> None:
    with pytest.raises(FactsError, match="cannot read: No such file"):
        LambdaFacts.load(tmp_path / "absent.json")
    (tmp_path / "o.json").write_text("Outputs: none")
    with pytest.raises(FactsError, match="not JSON"):
        LambdaFacts.load(tmp_path / "o.json")


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(UnknownBackend, match="unknown backend 'ec3'; known backends: .*lambda"):
        get_backend("ec3")


def test_backend_package_does_not_import_boto3() -> None:
    import subprocess

    code = ("import sys, boxer.backends, boxer.backends.emulators.lambda_local; "
            "print('boto3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
