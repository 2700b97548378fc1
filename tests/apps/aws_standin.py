"""AWS Systems Manager for tests: moto's server on HOST:PORT holding one SecureString parameter.

    python tests/apps/aws_standin.py --listen 198.18.0.1:0 --region eu-west-1 \
        --parameter /boxer/t/secret --value-file /run/boxer/lab/t/secret

With `--vm-group NAME --vm-host IP ...`, also EC2 and Auto Scaling as terraform/vm_hosts.tf leaves
them: a launch template and the group NAME, whose InService instances have those private
addresses (the lab's public hosts, standing in for the vm hosts).

Prints `ready http://HOST:PORT` once the parameter is stored; serves until SIGTERM. Run it in a
lab namespace (the coordinator's) so agents in NATed hosts and a controller in another host
reach it, the way they all reach AWS. Credentials: whatever AWS_ACCESS_KEY_ID says (moto
accepts any).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--parameter", required=True)
    parser.add_argument("--value-file", required=True)
    parser.add_argument("--vm-group", help="an Auto Scaling group of the --vm-host addresses")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=FILE",
                        help="another SecureString parameter (the vm hosts' token)")
    parser.add_argument("--vm-host", action="append", default=[], metavar="IP")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = ThreadedMotoServer(ip_address=host, port=int(port), verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    url = f"http://{host}:{bound}"
    ssm = boto3.client("ssm", region_name=args.region, endpoint_url=url)
    ssm.put_parameter(Name=args.parameter, Value=Path(args.value_file).read_text().strip(),
                      Type="SecureString")
    for also in args.also:
        name, _, file = also.partition("=")
        ssm.put_parameter(Name=name, Value=Path(file).read_text().strip(), Type="SecureString")
    if args.vm_group:
        vm_group(url, args.region, args.vm_group, args.vm_host)
    print(f"ready {url}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop()
    return 0


def vm_group(url: str, region: str, name: str, addresses: list[str]) -> None:
    ec2 = boto3.client("ec2", region_name=region, endpoint_url=url)
    autoscaling = boto3.client("autoscaling", region_name=region, endpoint_url=url)
    first = addresses[0].split(".")
    vpc = ec2.create_vpc(CidrBlock=f"{first[0]}.{first[1]}.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"{'.'.join(first[:3])}.0/24",
                               AvailabilityZone=f"{region}a")["Subnet"]["SubnetId"]
    image = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.create_launch_template(LaunchTemplateName=f"{name}-lt",
                               LaunchTemplateData={"ImageId": image, "InstanceType": "t3.small"})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": f"{name}-lt", "Version": "$Latest"},
        MinSize=0, MaxSize=len(addresses), DesiredCapacity=0, VPCZoneIdentifier=subnet)
    for address in addresses:  # instances with the lab's addresses, attached: InService
        instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet,
                                     PrivateIpAddress=address)["Instances"][0]["InstanceId"]
        autoscaling.attach_instances(InstanceIds=[instance], AutoScalingGroupName=name)


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())
