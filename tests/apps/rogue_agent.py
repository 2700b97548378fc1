"""A broken agent for the lab tests: authenticates to the coordinator (BOXER_COORDINATOR,
BOXER_SECRET_FILE), registers, and sends one hostile Report per session, raw bytes as a buggy
or hostile agent would. Prints one JSON object: per case, whether the coordinator closed the
session (it must: the peer broke the protocol) and how long that took.

    python3 rogue_agent.py NAME
"""

import asyncio
import json
import os
import struct
import sys
import time

from boxer.agent.control import open_session, parse_endpoint
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.auth import Credential, load_secret

GOOD = {"t": "report", "active": 0, "accepted": 0, "connected": 0, "cpu": 0.0, "rss": 1, "listening": [],
        "idle": 0.0, "direct": 0, "relayed": 0}


def body(**change) -> bytes:
    return json.dumps({**GOOD, **change}).encode()


CASES = {
    "cpu 1e999": body().replace(b'"cpu": 0.0', b'"cpu": 1e999'),
    "active 10**400": body(active=10**400),
    "rss NaN": body().replace(b'"rss": 1', b'"rss": NaN'),
    "idle -1": body(idle=-1.0),
    "listening 5000 ports": body(listening=list(range(1, 5001))),
    "exited 1e6": body(exited=10**6),
    "deep nesting": b"[" * 10_000 + b"]" * 10_000,
    "huge integer": b'{"t":"report","active":' + b"9" * 5000 + b"}",
}


async def main(name: str) -> None:
    coordinator = parse_endpoint(os.environ["BOXER_COORDINATOR"])
    secret = load_secret(os.environ["BOXER_SECRET_FILE"], None)
    results = {}
    for i, (case, data) in enumerate(CASES.items()):
        register = m.Register(name=f"{name}-{i}", service=name, instance=f"{0xbad00000 + i:08x}")
        session = await open_session(coordinator, Credential.derived(secret, register.instance), register)
        started = time.monotonic()
        await session.send_frame(struct.pack(">I", len(data)) + data)
        loop = asyncio.get_running_loop()
        try:
            while True:  # the Members and whatever else, until the coordinator closes
                chunk = await asyncio.wait_for(loop.sock_recv(session.framed.sock, 65536), 5)
                if not chunk:
                    break
            results[case] = {"closed": True, "seconds": round(time.monotonic() - started, 3)}
        except (asyncio.TimeoutError, OSError) as exc:
            results[case] = {"closed": isinstance(exc, OSError), "error": repr(exc)}
        session.close()
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
