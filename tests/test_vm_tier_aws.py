"""The vm tier's AWS side against moto's server (EC2, Auto Scaling, SSM), through aiobotocore: the
hosts are the group's InService instances; the lambda backend sends `vm` instances to their
daemons with the same event a function instance gets (the instance's own token); the controller's
SSM read is aiobotocore too."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from boxer.backends.aws_lambda.backend import LambdaBackend
from boxer.backends.aws_lambda.facts import LambdaFacts
from boxer.backends.base import InstanceSpec, Placement
from boxer.backends.errors import FactsError, LaunchError
from boxer.backends.vmhost.daemon import HostDaemon
from boxer.backends.vmhost.discovery import AutoScalingHosts
from boxer.backends.vmhost.protocol import host_token
from boxer.backends.vmhost.tier import StaticHosts
from boxer.nat_traversal.auth import instance_token

REGION = "eu-west-1"
SECRET = "ab" * 32


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION, AWS_EC2_METADATA_DISABLED="true")
    try:
        yield f"http://{host}:{port}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def _group(url: str, name: str, hosts: int) -> list[str]:
    """What terraform/vm_hosts.tf makes, in moto: a launch template and an Auto Scaling group."""
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=url)
    autoscaling = boto3.client("autoscaling", region_name=REGION, endpoint_url=url)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    image = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.create_launch_template(LaunchTemplateName=f"{name}-lt", LaunchTemplateData={
        "ImageId": image, "InstanceType": "t3.small"})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": f"{name}-lt", "Version": "$Latest"},
        MinSize=hosts, MaxSize=hosts, DesiredCapacity=hosts, VPCZoneIdentifier=subnet)
    ids = [i["InstanceId"] for i in autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[name])["AutoScalingGroups"][0]["Instances"]]
    reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return sorted(i["PrivateIpAddress"] for r in reservations for i in r["Instances"])


def test_the_hosts_are_the_groups_instances_in_service(moto_url: str) -> None:
    addresses = _group(moto_url, "boxer-t-vm", 3)
    assert len(addresses) == 3 and all(a.startswith("10.0.1.") for a in addresses)

    async def main() -> None:
        source = AutoScalingHosts("boxer-t-vm", region=REGION, port=7100)
        try:
            assert await source.addresses() == [(a, 7100) for a in addresses]
            # One goes into standby (leaving service): it is no longer a host to start on.
            autoscaling = boto3.client("autoscaling", region_name=REGION, endpoint_url=moto_url)
            group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["boxer-t-vm"])
            first = group["AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
            autoscaling.enter_standby(AutoScalingGroupName="boxer-t-vm", InstanceIds=[first],
                                      ShouldDecrementDesiredCapacity=True)
            assert len(await source.addresses()) == 2
            missing = AutoScalingHosts("boxer-none", region=REGION, port=7100)
            assert await missing.addresses() == []
            await missing.close()
        finally:
            await source.close()

    asyncio.run(main())


def test_lambda_backend_sends_vm_instances_to_the_daemons_with_their_tokens(moto_url: str,
                                                                            tmp_path: Path) -> None:
    """The controller reads the secret from SSM and issues each vm instance its token, as a
    function one: the instance gets the token (in a file), never the secret."""
    from boxer.backends.aws_lambda.preflight import read_deployment_secret_async

    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=moto_url)
    ssm.put_parameter(Name="/boxer/t/secret", Value=SECRET, Type="SecureString", Overwrite=True)
    facts = LambdaFacts("boxer-t", "198.18.0.1:7000", "/boxer/t/secret", REGION, vm_host_group="boxer-t-vm")

    async def main() -> None:
        secret = await read_deployment_secret_async(facts)  # the controller's own read, aiobotocore
        assert secret == bytes.fromhex(SECRET)
        token = host_token(secret)
        daemon = HostDaemon(token, host="vm-a", base_env={**os.environ, "OUT": str(tmp_path)},
                            argv_for=lambda launch: ["/bin/sh", "-c", 'cat "$BOXER_INSTANCE_TOKEN_FILE" > "$OUT/got"; '
                                                     'echo "$BOXER_COORDINATOR $BOXER_INSTANCE_NAME" >> "$OUT/got";'
                                                     " exec sleep 30"])
        _, port = await daemon.serve("127.0.0.1", 0)
        backend = LambdaBackend(facts, vm_token=token, vm_hosts=StaticHosts([f"127.0.0.1:{port}"]))
        try:
            handle = await backend.launch(InstanceSpec(
                name="web-1", service="web", index=1, command=["nginx"], placement=Placement.VM,
                env={"BOXER_INSTANCE_ID": "0123456789abcdef"}, token=instance_token(secret, "0123456789abcdef").hex()))
            assert handle.details["tier"] == "vm" and handle.details["host"] == "vm-a"
            for _ in range(100):
                if (tmp_path / "got").exists() and len((tmp_path / "got").read_text().split()) == 3:
                    break
                await asyncio.sleep(0.05)
            assert (tmp_path / "got").read_text().split() == [instance_token(secret, "0123456789abcdef").hex(),
                                                              "198.18.0.1:7000", "web-1"]
            await backend.stop(handle)
            assert handle.ended and handle.details["exit_status"] == 143
        finally:
            await backend.close()
            await daemon.close(1.0)
        # Without vm hosts in the outputs, a vm launch says what to do.
        bare = LambdaBackend(LambdaFacts("boxer-t", "198.18.0.1:7000", "/boxer/t/secret", REGION), vm_token=token)
        with pytest.raises(LaunchError, match="no vm hosts .* vm_host_count"):
            await bare.launch(InstanceSpec(name="web-1", service="web", index=1, command=["nginx"],
                                           placement=Placement.VM))
        await bare.close()

    asyncio.run(main())


def test_vm_outputs_are_read_from_terraform_outputs() -> None:
    base = {"function_name": "f", "coordinator_address": "1.2.3.4:7000", "secret_parameter_name": "/p",
            "region": REGION}
    assert LambdaFacts.from_outputs(base).vm_host_group is None
    facts = LambdaFacts.from_outputs({**base, "vm_host_group": {"value": "g"}, "vm_host_port": {"value": 7200}})
    assert (facts.vm_host_group, facts.vm_host_port, facts.vm_host_token_parameter_name) == ("g", 7200, None)
    with_token = LambdaFacts.from_outputs({**base, "vm_host_token_parameter_name": {"value": "/d/vm-host-token"}})
    assert with_token.vm_host_token_parameter_name == "/d/vm-host-token"
    assert LambdaFacts.from_outputs({**base, "vm_host_group": {"value": ""}}).vm_host_group is None


def test_wrong_vm_outputs_are_each_named() -> None:
    base = {"function_name": "f", "coordinator_address": "1.2.3.4:7000", "secret_parameter_name": "/p",
            "region": REGION}
    with pytest.raises(FactsError) as caught:
        LambdaFacts.from_outputs({**base, "vm_host_group": {"value": 3}, "vm_host_token_parameter_name": [1],
                                  "vm_host_port": {"value": "http"}})
    text = str(caught.value)
    assert "output vm_host_group must be a string, got 3" in text
    assert "output vm_host_token_parameter_name must be a string, got [1]" in text
    assert "output vm_host_port must be a port number, got 'http'" in text
