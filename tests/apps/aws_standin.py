"""AWS Systems Manager for tests: moto's server on HOST:PORT holding one SecureString parameter.

    python tests/apps/aws_standin.py --listen 198.18.0.1:0 --region eu-west-1 \
        --parameter /boxer/t/secret --value-file /run/boxer/lab/t/secret

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
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = ThreadedMotoServer(ip_address=host, port=int(port), verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    url = f"http://{host}:{bound}"
    ssm = boto3.client("ssm", region_name=args.region, endpoint_url=url)
    ssm.put_parameter(Name=args.parameter, Value=Path(args.value_file).read_text().strip(),
                      Type="SecureString")
    print(f"ready {url}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())
