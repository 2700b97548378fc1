"""A stand-in controller for lab tests: declares services, optionally drains one instance, and
prints every message the coordinator sends it for a while, as JSON lines."""

import argparse
import asyncio
import json
import os
import time

from boxer.agent.control import open_controller_session, parse_endpoint
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.auth import load_secret


async def main(args) -> None:
    framed, snapshot = await open_controller_session(parse_endpoint(os.environ["BOXER_COORDINATOR"]),
                                                     load_secret(os.environ["BOXER_SECRET_FILE"]))
    print(json.dumps({"at": time.time(), **snapshot.to_wire()}), flush=True)
    services = dict(item.split("=") for item in args.declare)
    if services:
        await framed.send(m.Declare(services={k: int(v) for k, v in services.items()}))
    drained = False
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        try:
            message = await asyncio.wait_for(framed.receive(), end - time.monotonic())
        except asyncio.TimeoutError:
            break
        print(json.dumps({"at": time.time(), **message.to_wire()}), flush=True)
        if (args.drain and not drained and isinstance(message, m.InstanceReport)
                and message.name == args.drain and message.report["active"] > 0):
            await framed.send(m.Drain(instance=message.instance, grace=args.grace))
            drained = True


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--declare", nargs="*", default=[], metavar="SERVICE=HOLD")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--drain", help="drain this instance once it reports an open connection")
    parser.add_argument("--grace", type=float, default=30)
    asyncio.run(main(parser.parse_args()))
