#!/usr/bin/env python3
"""How long the paths' race takes, from the coordinator's Punch to an authenticated socket, on
the lab at several round-trip times: the figures the relay's delay (happy eyeballs,
nat_traversal/client.py Timeouts.relay_delay) is chosen from.

    sudo .venv/bin/python benchmarks/bench_punch.py [--connects 200] [--rtts 0,10,50]

Every connect is cold (no spares), so each one is brokered and punched. The times come from the
client agent's debug log ("punch <conn> (client): direct in X ms"). Prints a table and writes
benchmarks/results/punch.json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from _common import percentile, stop_all, write_results

from boxer.lab import lab_down, lab_up

BOXER = [sys.executable, "-m", "boxer", "run"]
ECHO = [sys.executable, str(ROOT / "tests" / "apps" / "echo_server.py")]
PROBE = [sys.executable, str(HERE / "latency_client.py")]
RACE = re.compile(r"punch \S+ \(client\): (direct|relayed) in ([0-9.]+) ms")


def measure(rtt: float, connects: int, gap: float) -> dict:
    name = f"punch{os.getpid() % 10000}"
    lab = lab_up(name, hosts=2, rtt=rtt)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(lab.popen("h1", BOXER + ["--name", "echo", "--"] + ECHO + ["7002"]))
        end = time.monotonic() + 30
        while lab.run("h2", BOXER + ["--name", "waiter", "--", "python3", "-c",
                                     "import socket; socket.create_connection(('echo', 7002), 1)"],
                      capture_output=True).returncode != 0:
            if time.monotonic() > end:
                raise RuntimeError("the echo server did not come up")
            time.sleep(0.2)
        env = dict(os.environ, BOXER_WARM_SPARES="0", BOXER_LOG_LEVEL="10")
        out = lab.run("h2", BOXER + ["--name", "client", "--"] + PROBE + ["connect", "echo", "7002", str(connects),
                                                                          str(gap)],
                      env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"probe failed: {out.stderr[-800:]}")
    finally:
        stop_all(procs)
        lab_down(name)
    races = [(path, float(ms)) for path, ms in RACE.findall(out.stderr)]
    direct = [ms for path, ms in races if path == "direct"]
    return {"rtt_ms": rtt, "connects": len(races), "relayed": len(races) - len(direct),
            "direct_p50_ms": percentile(direct, 0.5), "direct_p99_ms": percentile(direct, 0.99),
            "direct_max_ms": max(direct)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connects", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between new connections")
    parser.add_argument("--rtts", default="0,10,50", help="round-trip times to measure at (ms)")
    parser.add_argument("--out", default=str(HERE / "results" / "punch.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (the lab)", file=sys.stderr)
        return 2
    rows = [measure(float(rtt), args.connects, args.gap) for rtt in args.rtts.split(",")]
    print(f"\n{'rtt (ms)':>9} {'connects':>9} {'relayed':>8} {'direct p50':>11} {'p99':>8} {'max':>8}  (ms)")
    for row in rows:
        print(f"{row['rtt_ms']:9.0f} {row['connects']:9d} {row['relayed']:8d} {row['direct_p50_ms']:11.2f} "
              f"{row['direct_p99_ms']:8.2f} {row['direct_max_ms']:8.2f}")
    write_results(args.out, {"races": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
