"""What a cold start of n instances costs in membership updates: protocol 2's full snapshots
against protocol 3's deltas, side by side in one run.

The broker is driven in process (no sockets): n agents authenticate, then register one after
another; the coordinator's loop turn is simulated by calling flush_members() after every
registration (each arrives in its own turn: the worst case for deltas), or after every `burst`
registrations (they arrive together: one delta per receiver for the whole burst).

The baseline is the same broker with `full_snapshots=True`, a switch that sends the full Members
to every receiver on every change, which is what protocol 2 sent (then on every registration).

Columns:
  frames, bytes   membership frames (Members + MembersDelta) sent to agents, and their size on the
                  wire (each distinct message is encoded once and counted once per receiver);
  broker s        CPU time in the broker (Register handling + flush_members), process_time;
  encode s        the coordinator's JSON encoding of those frames: protocol 2's coordinator encoded
                  every Send (measured: one encode per distinct message, times its receivers);
                  protocol 3's encodes each message once per flush;
  agents s        the agents' decoding of what they received, summed over all agents (measured:
                  one decode per distinct message, times its receivers; both columns use
                  protocol 3's faster check_ipv4, so the baseline is, if anything, flattered).

Prints a table and writes benchmarks/results/membership.json.

    python benchmarks/bench_membership.py [--sizes 100 1000] [--burst 10]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import platform
import sys
import time
import timeit
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.broker import Broker, Send
from boxer.nat_traversal.wire import encode_frame

RESULTS = ROOT / "benchmarks" / "results" / "membership.json"
SECRET = bytes(range(32))


@dataclass
class Tally:
    """What the membership frames of one cold start cost, message by message."""
    receivers: dict[int, int] = field(default_factory=dict)  # id(message) -> receivers
    messages: dict[int, m.Message] = field(default_factory=dict)

    def add(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send) and isinstance(action.message, (m.Members, m.MembersDelta)):
                key = id(action.message)
                self.messages[key] = action.message
                self.receivers[key] = self.receivers.get(key, 0) + 1

    def costs(self, encode_every_send: bool) -> dict:
        frames = wire_bytes = 0
        encode_s = decode_s = 0.0
        for key, message in self.messages.items():
            count = self.receivers[key]
            frame = encode_frame(message.to_wire())
            # Small messages are timed several times (one timing of a few microseconds is mostly
            # noise); the best run counts, as in timeit.
            repeats = 2 if len(frame) > 2000 else 10
            encoded = _best(lambda msg=message: encode_frame(msg.to_wire()), repeats)
            decode_s += _best(lambda body=frame[4:]: m.decode(json.loads(body)), repeats) * count
            encode_s += encoded * (count if encode_every_send else 1)
            frames += count
            wire_bytes += len(frame) * count
        return {"frames": frames, "bytes": wire_bytes, "encode_s": round(encode_s, 4),
                "agents_decode_s": round(decode_s, 4)}


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.process_time()
        fn()
        times.append(time.process_time() - began)
    return min(times)


def cold_start(n: int, burst: int, full_snapshots: bool) -> dict:
    counter = iter(range(1, 10**9))
    broker = Broker(SECRET, prefix="100.64.0.0/16", new_token=lambda: f"{next(counter):032x}",
                    full_snapshots=full_snapshots)
    for cid in range(1, n + 1):  # authentication is the same either way: not counted
        challenge = broker.connection_made(cid, f"198.18.{cid // 250}.{cid % 250 + 1}:40000")[0].message
        nonce = "ab" * 16
        broker.message_received(cid, m.Auth(v=m.PROTOCOL_VERSION, nonce=nonce, mac=auth.mac(
            SECRET, auth.AGENT_PROOF, challenge.nonce, nonce)), 0.0)
    tally = Tally()
    broker_s = 0.0
    for cid in range(1, n + 1):
        register = m.Register(name=f"app-{cid}", service="app", instance=f"{cid:08x}")
        began = time.process_time()
        actions = broker.message_received(cid, register, 0.0)
        if cid % burst == 0 or cid == n:
            actions += broker.flush_members()
        broker_s += time.process_time() - began
        tally.add(actions)
    assert len(broker.members()) == n
    return {"instances": n, "per_turn": burst, "mode": "full" if full_snapshots else "delta",
            "broker_s": round(broker_s, 4), **tally.costs(encode_every_send=full_snapshots)}


def check_ipv4_us() -> dict:
    """One address through protocol 2's check (ipaddress) and protocol 3's (inet_aton round trip)."""
    def old(value: str) -> None:
        ipaddress.IPv4Address(value)

    runs = 100_000
    return {"ipaddress_us": round(min(timeit.repeat(lambda: old("100.64.12.34"), number=runs, repeat=3))
                                  / runs * 1e6, 3),
            "check_ipv4_us": round(min(timeit.repeat(lambda: m.check_ipv4("100.64.12.34"), number=runs,
                                                     repeat=3)) / runs * 1e6, 3)}


def _size(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError


def print_table(rows: list[dict]) -> None:
    columns = [("instances", "instances", "{:>9}"), ("per turn", "per_turn", "{:>8}"),
               ("updates", "mode", "{:>15}"), ("frames", "frames", "{:>9}"), ("bytes", "bytes", "{:>9}"),
               ("broker s", "broker_s", "{:>9.3f}"), ("encode s", "encode_s", "{:>9.3f}"),
               ("agents s", "agents_decode_s", "{:>9.3f}")]
    print("  ".join(f"{title:>{len(fmt.format(rows[0][key]) if key != 'bytes' else '123456789')}}"
                    for title, key, fmt in columns))
    for row in rows:
        cells = []
        for _, key, fmt in columns:
            value = row[key]
            if key == "bytes":
                cells.append(f"{_size(value):>9}")
            elif key == "mode":
                cells.append(f"{'full (proto 2)' if value == 'full' else 'delta (proto 3)':>15}")
            else:
                cells.append(fmt.format(value))
        print("  ".join(cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--burst", type=int, default=10, help="registrations per loop turn, second delta run")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the broker logs every registration
    rows = []
    for n in args.sizes:
        rows.append(cold_start(n, 1, full_snapshots=True))
        rows.append(cold_start(n, 1, full_snapshots=False))
        if args.burst > 1:
            rows.append(cold_start(n, args.burst, full_snapshots=False))
    results = {"cold_start": rows, "check_ipv4": check_ipv4_us(),
               "baseline": "the same broker with full_snapshots=True: the full Members to every agent on "
                           "every change (protocol 2); its coordinator encoded every Send",
               "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print("membership updates for a cold start of n instances (broker in process; CPU seconds)")
    print_table(rows)
    ck = results["check_ipv4"]
    print(f"one address checked: ipaddress {ck['ipaddress_us']:.2f} us, check_ipv4 now {ck['check_ipv4_us']:.2f} us")
    print("baseline: the same broker with full_snapshots=True (protocol 2's full Members to every agent on "
          "every change);\n  its encode column counts one encode per Send, as protocol 2's coordinator did")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
