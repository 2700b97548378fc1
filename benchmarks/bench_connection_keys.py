#!/usr/bin/env python3
"""What the per-connection keys cost: coordinator CPU per brokered connect, and the agent's unwrap.

Since protocol 5 the coordinator hands both agents of every connection its key,
HMAC(secret, "conn:" + conn + "|" + salt) with a fresh salt, in Punch/Incoming (agents no longer
hold the deployment secret); since protocol 6 it wraps that key for each receiver (XOR with
HMAC(receiver's token, "boxer-v6-conn-key-wrap" | conn | salt)), one HMAC per side. This drives
the real sans-IO Broker through fast-path connects (both sides' tickets deposited) in one
process, alternating rounds of three modes: no key (the key step replaced by a constant, the
work protocol 4 did), key + salt sent as is (protocol 5), key + salt wrapped for each side
(protocol 6); and times one agent's unwrap (Punch.key_for) alone.

    .venv/bin/python benchmarks/bench_connection_keys.py [--connects 3000] [--rounds 5]

Writes benchmarks/results/connection_keys.json.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import write_results

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.broker import Broker, Send, Timeouts
from boxer.nat_traversal.limits import Limits

SECRET = bytes(range(32))
UNBOUNDED = 10**6


def _sent(actions: list) -> list[m.Message]:
    return [a.message for a in actions if isinstance(a, Send)]


def _session(broker: Broker, cid: int, name: str, instance: str) -> tuple[str, str]:
    token = auth.instance_token(SECRET, instance)
    challenge = _sent(broker.connection_made(cid, f"198.18.1.{cid}:40000"))[0]
    nonce = "ab" * 16
    proof = auth.mac(token, auth.AGENT_PROOF, challenge.nonce, nonce)  # type: ignore[attr-defined]
    welcome = _sent(broker.message_received(
        cid, m.Auth(v=m.PROTOCOL_VERSION, nonce=nonce, instance=instance, mac=proof), 0.0))[0]
    registered = _sent(broker.message_received(cid, m.Register(name=name, service=name, instance=instance), 0.0))[0]
    broker.flush_members()
    return welcome.session, registered.addr  # type: ignore[attr-defined]


MODES = {"none": "no connection key (protocol 4's work)",
         "clear": "key + fresh salt (protocol 5)",
         "wrapped": "key + salt, wrapped per side (protocol 6)"}


def cpu_per_connect(connects: int, mode: str) -> float:
    broker = Broker(SECRET, prefix="100.64.0.0/16", timeouts=Timeouts(broker=3.0),
                    limits=Limits(unauthenticated_per_source=UNBOUNDED, unauthenticated=UNBOUNDED,
                                  tickets_per_session=UNBOUNDED, pending_per_session=UNBOUNDED))
    if mode == "none":
        broker._connection_key = lambda conn: (b"\xab" * 32, "5a170001")  # type: ignore[method-assign]
    if mode in ("none", "clear"):
        broker._wrap = lambda key, receiver, conn, salt: key.hex()  # type: ignore[method-assign]
    session_a, _ = _session(broker, 1, "web", "0000000a")
    session_b, addr_b = _session(broker, 2, "kv", "0000000b")
    cid = 100
    for i in range(connects):
        for session, instance, ticket, purpose in ((session_a, "0000000a", f"{i:08x}aa", "outgoing"),
                                                    (session_b, "0000000b", f"{i:08x}bb", "incoming")):
            cid += 1
            challenge = _sent(broker.connection_made(cid, f"198.18.2.1:{cid}"))[0]
            broker.message_received(cid, m.Observe(
                v=m.PROTOCOL_VERSION, session=session, ticket=ticket, purpose=purpose,
                mac=auth.mac(auth.instance_token(SECRET, instance), auth.OBSERVE_PROOF, challenge.nonce,  # type: ignore[attr-defined]
                             session, ticket)), 0.0)
    messages = [m.Connect(conn=f"{i:08x}cc", dst_addr=addr_b, dst_port=80, src_port=1, ticket=f"{i:08x}aa")
                for i in range(connects)]
    started = time.process_time()
    for message in messages:
        out = broker.message_received(1, message, 0.0)
    elapsed = time.process_time() - started
    assert isinstance(_sent(out)[0], m.Punch), out
    return elapsed / connects * 1e6


def unwrap_us(connects: int) -> float:
    """One agent's CPU to unwrap the key of one Punch (what each side adds per connect)."""
    token = auth.instance_token(SECRET, "0000000a")
    key = auth.connection_key(SECRET, "0000abcdcc", "5a170001")
    punches = [m.Punch(conn=f"{i:08x}cc", role="client", peer="198.18.1.2:50002", ticket="aaaa0001",
                       wrapped_key=auth.wrap_connection_key(token, key, f"{i:08x}cc", "5a170001").hex(),
                       salt="5a170001") for i in range(connects)]
    started = time.process_time()
    for punch in punches:
        punch.key_for(token)
    return (time.process_time() - started) / connects * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / "connection_keys.json"))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    unwrap: list[float] = []
    for _ in range(args.rounds):  # alternating, so a noisy moment hits every mode alike
        for mode in MODES:
            samples[mode].append(cpu_per_connect(args.connects, mode))
        unwrap.append(unwrap_us(args.connects))
    print(f"{'broker, fast-path connect':44} {'median us CPU':>14} {'min':>7} {'max':>7}")
    for mode, name in MODES.items():
        values = samples[mode]
        print(f"{name:44} {statistics.median(values):14.1f} {min(values):7.1f} {max(values):7.1f}")
    print(f"{'one agent unwrapping its Punch (key_for)':44} {statistics.median(unwrap):14.1f} "
          f"{min(unwrap):7.1f} {max(unwrap):7.1f}")
    median = {mode: statistics.median(values) for mode, values in samples.items()}
    print(f"added per connect: key {median['clear'] - median['none']:.1f} us, its two wraps "
          f"{median['wrapped'] - median['clear']:.1f} us more of coordinator CPU; "
          f"{statistics.median(unwrap):.1f} us per agent to unwrap (the relay adds one HMAC per relayed half)")
    write_results(args.out, {"connects": args.connects, "rounds": args.rounds,
                             "us_cpu_per_connect": samples, "us_cpu_unwrap_per_agent": unwrap,
                             "added_median_us": {"key": round(median["clear"] - median["none"], 2),
                                                 "wrap": round(median["wrapped"] - median["clear"], 2)}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
