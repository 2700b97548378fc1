"""`boxer up --backend lambda` refuses to start, in one line that says what is wrong and how to
fix it, when the outputs file, the credentials, the SSM parameter, the function or the
coordinator is not right; nothing is started. The real CLI, boto3 and botocore's error parsing,
against moto's server on 127.0.0.1 (AWS_ENDPOINT_URL_SSM / _LAMBDA), IAM enforced where it
matters. No root needed."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from boxer.backends.aws_lambda.preflight import OUTPUTS_ENV, SetupError, outputs_path

pytest.importorskip("flask", reason="moto's server needs flask (pip install '.[test]')")

REGION = "eu-west-1"
SECRET = "ab" * 32
BOXER = [sys.executable, "-m", "boxer"]
DEPLOY = """
name: lset
services:
  kv:
    command: [redis-server]
    placement: {placement}
"""


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class World:
    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BOXER_"))}
        self.env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                        AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/dev/null",
                        AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_ENDPOINT_URL_SSM=url,
                        AWS_ENDPOINT_URL_LAMBDA=url, BOXER_DEPLOY_STATE_ROOT=str(root / "state"))
        self.deploy = root / "deploy.yaml"
        self.deploy.write_text(DEPLOY.format(placement="function"))
        self.clients: list[Any] = []

    def client(self, service: str) -> Any:
        self.clients.append(boto3.client(service, region_name=REGION, endpoint_url=self.url,
                                         aws_access_key_id="testing",
                                         aws_secret_access_key="testing"))
        return self.clients[-1]

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def outputs(self, **over: Any) -> Path:
        values = {"function_name": "boxer-t", "coordinator_address": "127.0.0.1:1",
                  "secret_parameter_name": "/boxer/t/secret", "region": REGION, **over}
        path = self.root / "outputs.json"
        path.write_text(json.dumps({k: {"sensitive": False, "type": "string", "value": v}
                                    for k, v in values.items() if v is not None}))
        return path

    def up(self, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BOXER, "up", "--detach", *args, str(self.deploy)],
                              env=env or self.env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def world(moto_url: str, tmp_path: Path) -> Iterator[World]:
    with urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset",
                                                       method="POST"), timeout=10) as reply:
        reply.read()
    world = World(moto_url, tmp_path)
    role = world.client("iam").create_role(RoleName="boxer-t", AssumeRolePolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                 "Principal": {"Service": "lambda.amazonaws.com"}}]}
    ))["Role"]["Arn"]
    world.client("lambda").create_function(
        FunctionName="boxer-t", Role=role, PackageType="Image",
        Code={"ImageUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/boxer:1"}, Timeout=900)
    world.client("ssm").put_parameter(Name="/boxer/t/secret", Value=SECRET, Type="SecureString")
    yield world
    world.close()


def one_line(result: subprocess.CompletedProcess[str], world: World, *parts: str) -> str:
    """The run failed with exactly one line naming every part, and started nothing."""
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("boxer: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    assert SECRET not in result.stderr + result.stdout
    assert not (world.root / "state" / "lset").exists()  # no deployment, no controller
    return lines[0]


def test_outputs_come_from_the_option_the_environment_or_the_file(tmp_path: Path) -> None:
    assert outputs_path("a.json", {OUTPUTS_ENV: "b.json"}, "c.json", tmp_path) == Path("a.json")
    assert outputs_path(None, {OUTPUTS_ENV: "b.json"}, "c.json", tmp_path) == Path("b.json")
    assert outputs_path(None, {}, "c.json", tmp_path) == tmp_path / "c.json"
    assert outputs_path(None, {}, "/x/c.json", tmp_path) == Path("/x/c.json")
    with pytest.raises(SetupError, match=r"pass --outputs outputs.json \(or set "
                                         r"BOXER_TF_OUTPUTS, or `lambda: \{outputs:"):
        outputs_path(None, {}, None, tmp_path)


def test_no_outputs_file(world: World) -> None:
    one_line(world.up("--backend", "lambda"), world, "needs the deployment's terraform outputs",
             "--outputs outputs.json")
    line = one_line(world.up("--backend", "lambda", "--outputs", str(world.root / "gone.json")),
                    world, "gone.json: cannot read: No such file or directory")
    assert line.endswith("write it with `terraform -chdir=terraform output -json > gone.json` "
                         "after `terraform apply`")


def test_invalid_outputs_file(world: World) -> None:
    path = world.outputs(region=None, coordinator_address="nowhere")
    one_line(world.up("--backend", "lambda", "--outputs", str(path)), world,
             "missing output(s): region", "coordinator_address 'nowhere' is not 'ip:port'")
    path.write_text("{not json")
    one_line(world.up("--backend", "lambda", "--outputs", str(path)), world, "not JSON")


def test_no_credentials(world: World) -> None:
    env = {k: v for k, v in world.env.items() if not k.startswith("AWS_ACCESS")
           and not k.startswith("AWS_SECRET")}
    one_line(world.up("--backend", "lambda", "--outputs", str(world.outputs()), env=env), world,
             "cannot read SSM parameter /boxer/t/secret in eu-west-1: no AWS credentials found",
             "aws configure")


def test_parameter_not_found_or_not_a_secret(world: World) -> None:
    path = world.outputs(secret_parameter_name="/boxer/t/absent")
    one_line(world.up("--backend", "lambda", "--outputs", str(path)), world,
             "SSM parameter /boxer/t/absent does not exist in eu-west-1",
             f"is {path} from this deployment")
    world.client("ssm").put_parameter(Name="/boxer/t/short", Value="abcd", Type="SecureString")
    one_line(world.up("--backend", "lambda", "--outputs",
                      str(world.outputs(secret_parameter_name="/boxer/t/short"))), world,
             "SSM parameter /boxer/t/short does not hold a usable secret")


def test_access_denied_to_the_parameter(world: World) -> None:
    from moto.core.authorization import enable_iam_authentication

    iam = world.client("iam")
    iam.create_user(UserName="intern")
    key = iam.create_access_key(UserName="intern")["AccessKey"]
    env = {**world.env, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
           "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    with enable_iam_authentication():  # the server in this process now checks IAM policies
        result = world.up("--backend", "lambda", "--outputs", str(world.outputs()), env=env)
    # moto answers this JSON API in XML, which botocore cannot parse: the code is the status.
    one_line(result, world, "not allowed to read SSM parameter /boxer/t/secret in eu-west-1 "
             "(HTTP 403): attach the controller_policy_arn output")


def test_access_denied_as_aws_words_it() -> None:
    """AWS's own answer (JSON, AccessDeniedException), through botocore's Stubber."""
    from botocore.stub import Stubber

    from boxer.backends.aws_lambda.facts import LambdaFacts
    from boxer.backends.aws_lambda.preflight import read_deployment_secret

    ssm = boto3.client("ssm", region_name=REGION, aws_access_key_id="x",
                       aws_secret_access_key="y")
    with Stubber(ssm) as stub, contextlib.closing(ssm):
        stub.add_client_error("get_parameter", "AccessDeniedException", "User: arn:aws:iam::1:"
                              "user/intern is not authorized to perform: ssm:GetParameter\non it",
                              400)
        with pytest.raises(SetupError) as caught:
            read_deployment_secret(LambdaFacts("f", "1.2.3.4:7000", "/p", REGION),
                                   lambda service, region: ssm)
    assert str(caught.value) == (
        "not allowed to read SSM parameter /p in eu-west-1 (AccessDeniedException): attach the "
        "controller_policy_arn output to the user or role running boxer (examples/aws/README.md, "
        "step 2)")


def test_function_not_found(world: World) -> None:
    one_line(world.up("--backend", "lambda", "--outputs",
                      str(world.outputs(function_name="boxer-gone"))), world,
             "Lambda function boxer-gone does not exist in eu-west-1")


def test_unreachable_coordinator(world: World) -> None:
    env = {**world.env, OUTPUTS_ENV: str(world.outputs())}  # outputs from the environment
    one_line(world.up("--backend", "lambda", env=env), world,
             "cannot reach the coordinator at 127.0.0.1:1",
             "is the coordinator instance running", "coordinator_allowed_cidrs")


def test_vm_placement_needs_the_deployments_vm_hosts(world: World) -> None:
    """`vm` is no longer refused by the file's checks (the vm tier runs it); a deployment whose
    terraform outputs name no vm hosts is refused by `boxer up` in one line, before any AWS call."""
    world.deploy.write_text(DEPLOY.format(placement="vm"))
    outputs = world.outputs()
    result = world.up("--backend", "lambda", "--outputs", str(outputs))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"boxer: {outputs}: services.kv run on vm hosts, and this deployment has none (no vm_host_group"
        " output): set the terraform variable vm_host_count (e.g. 2), `terraform apply`, then"
        f" `terraform output -json > {outputs.name}` (docs/aws.md, the vm tier)"]
    assert not (world.root / "state" / "lset").exists()
    world.deploy.write_text("backend: lambda\n" + DEPLOY.format(placement="vm"))
    check = subprocess.run([*BOXER, "check", str(world.deploy)], capture_output=True, text=True,
                           env=world.env, timeout=60)
    assert check.returncode == 0, check.stderr + check.stdout


def test_concurrency_comes_from_the_functions_reservation(world: World) -> None:
    from boxer.backends.aws_lambda.facts import LambdaFacts
    from boxer.backends.aws_lambda.preflight import concurrency_limit

    facts = LambdaFacts("boxer-t", "127.0.0.1:1", "/boxer/t/secret", REGION)
    factory = lambda service, region: world.client(service)  # noqa: E731
    limit, source = concurrency_limit(facts, factory)
    # No reservation: the account's pool, which moto cannot tell (real AWS: GetAccountSettings).
    assert limit is None and source.startswith("could not read the account's concurrency")
    world.client("lambda").put_function_concurrency(FunctionName="boxer-t", ReservedConcurrentExecutions=3)
    assert concurrency_limit(facts, factory) == (3, "the function's reserved concurrency")


def test_concurrency_of_the_account_pool() -> None:
    from boxer.backends.aws_lambda.facts import LambdaFacts
    from boxer.backends.aws_lambda.preflight import concurrency_limit

    class Account:  # what GetFunctionConcurrency and GetAccountSettings answer without a reservation
        def get_function_concurrency(self, FunctionName: str) -> dict:
            return {}

        def get_account_settings(self) -> dict:
            return {"AccountLimit": {"ConcurrentExecutions": 1000, "UnreservedConcurrentExecutions": 900}}

    facts = LambdaFacts("boxer-t", "127.0.0.1:1", "/boxer/t/secret", REGION)
    assert concurrency_limit(facts, lambda *_: Account()) == (900, "the account's unreserved concurrency")


def test_max_concurrency_is_lowered_to_what_aws_allows() -> None:
    from boxer.backends.aws_lambda.preflight import effective_concurrency

    assert effective_concurrency(100, None, "unknown", "f") == (100, None)
    assert effective_concurrency(10, 50, "the function's reserved concurrency", "f") == (10, None)
    slots, note = effective_concurrency(100, 3, "the function's reserved concurrency", "f")
    assert slots == 3
    assert note == ("lambda.maxConcurrency 100 lowered to 3: the function's reserved concurrency "
                    "(more invocations would only be throttled)")
    with pytest.raises(SetupError, match=r"may run no invocation at all \(the function's reserved concurrency is 0\)"):
        effective_concurrency(100, 0, "the function's reserved concurrency", "f")
