"""Where the vm hosts are on AWS: the instances of the vm Auto Scaling group, through aiobotocore.

    source = AutoScalingHosts("boxer-demo-vm", region="eu-west-1", port=7100)
    await source.addresses()     # [("10.0.1.23", 7100), ...]: InService instances, private IPs

DescribeAutoScalingGroups names the group's instances and their lifecycle state; only those
`InService` are asked (a `Pending` one is still booting and installing boxer, a `Terminating`
one is going away); DescribeInstances gives their addresses. The private address by default:
the controller runs beside the coordinator, in the hosts' VPC (terraform/vm_hosts.tf lets the
coordinator's security group reach the daemon port); `address="public"` for a controller outside.
Both calls are coroutines on the controller's loop (aiobotocore, like Invoke), on a client made
once, with the standard credential chain and AWS_ENDPOINT_URL_AUTO_SCALING / _EC2 (moto's server in
the tests). A failed look-up keeps the addresses of the last good one: the hosts did not go away
because EC2 did not answer once.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["AutoScalingHosts"]

log = logging.getLogger(__name__)

Address = tuple[str, int]


class AutoScalingHosts:
    def __init__(self, group: str, *, region: str, port: int, address: str = "private",
                 clients: tuple[Any, Any] | None = None) -> None:
        if address not in ("private", "public"):
            raise ValueError(f"address must be 'private' or 'public', got {address!r}")
        self.group = group
        self.region = region
        self.port = port
        self.address = address
        self._clients = clients  # (autoscaling, ec2) aiobotocore clients; made on first use
        self._exits: list[Any] = []
        self._last: list[Address] = []
        self.error: str | None = None

    def describe(self) -> str:
        return f"the Auto Scaling group {self.group} in {self.region}"

    async def _ensure_clients(self) -> tuple[Any, Any]:
        if self._clients is None:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            config = AioConfig(connect_timeout=5, read_timeout=10, retries={"total_max_attempts": 2})
            session = get_session()
            made = []
            for service in ("autoscaling", "ec2"):
                context = session.create_client(service, region_name=self.region, config=config)
                made.append(await context.__aenter__())
                self._exits.append(context.__aexit__)
            self._clients = (made[0], made[1])
        return self._clients

    async def addresses(self) -> list[Address]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            found = await self._look_up()
        except (BotoCoreError, ClientError) as exc:
            self.error = f"cannot list {self.describe()}: {exc}"
            log.warning("%s; keeping the %d host(s) of the last look-up", self.error, len(self._last))
            return list(self._last)
        self.error = None
        if found != self._last:
            log.info("vm hosts of %s: %s", self.group, ", ".join(f"{h}:{p}" for h, p in found) or "none")
        self._last = found
        return list(found)

    async def _look_up(self) -> list[Address]:
        autoscaling, ec2 = await self._ensure_clients()
        reply = await autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])
        ids = [instance["InstanceId"]
               for group in reply.get("AutoScalingGroups", [])
               for instance in group.get("Instances", [])
               if instance.get("LifecycleState") == "InService"]
        if not ids:
            return []
        key = "PrivateIpAddress" if self.address == "private" else "PublicIpAddress"
        found: list[Address] = []
        paginator = ec2.get_paginator("describe_instances")
        async for page in paginator.paginate(InstanceIds=ids):
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    if instance.get("State", {}).get("Name") == "running" and instance.get(key):
                        found.append((instance[key], self.port))
        return sorted(found)

    async def close(self) -> None:
        exits, self._exits, self._clients = self._exits, [], None
        for exit_client in exits:
            await exit_client(None, None, None)
