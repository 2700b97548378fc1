#!/usr/bin/env python3
"""Connectivity per NAT type and link condition, in the lab.

For each condition (clean links; 20 ms RTT with 2 % loss) a lab is built with an
endpoint-independent-mapping client host (h1), an eim server host (h2) and a symmetric-NAT server
host (h3). From h1, under `boxer run`:
  - N new connections to each server: connect-to-first-byte p50/p99, and the share of direct
    connections whose first simultaneous open succeeded (from the agent's own report);
  - iperf3 throughput to h2 (direct, punched) and to h3 (relayed), and their ratio;
  - plain iperf3 (no boxer) between two public hosts, p2 -> p1: what the link itself allows.

    sudo .venv/bin/python benchmarks/bench_nat.py [--connects 100] [--seconds 3] [--cc cubic]

--cc has every iperf3 client send with that congestion control (iperf3 -C, per socket: the
namespace default cannot be set to one outside net.ipv4.tcp_allowed_congestion_control, which
is the machine's). BBR, this machine's default, ignores random loss; cubic shows what a
loss-based sender gets. The relay's own sockets keep the default.

Prints a table and writes benchmarks/results/nat.json. Targets (issue 6): relayed throughput
>= 0.8 of direct in the lab.
"""

from __future__ import annotations

import argparse
import json
import os
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
WATCHER = [sys.executable, str(ROOT / "tests" / "apps" / "watcher.py")]

CONDITIONS = {"clean": {}, "20ms-2%loss": {"rtt": 20, "loss": 2}}


def run_json(lab, host: str, argv: list[str], timeout: float = 300) -> dict:
    out = lab.run(host, argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[-6:]} failed: {out.stderr[-600:]}")
    return json.loads(out.stdout)


def bare_throughput(lab, seconds: int, cc_args: list[str]) -> float:
    """Plain iperf3 p2 -> p1, no boxer: Mbit/s."""
    server = lab.popen("p1", ["iperf3", "-s", "-1", "-p", "5202"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        perf = run_json(lab, "p2", ["iperf3", "-c", lab.public_host("p1").address, "-p", "5202",
                                    "-t", str(seconds), "-J", *cc_args])
    finally:
        stop_all([server])
    return perf["end"]["sum_received"]["bits_per_second"] / 1e6


def measure(condition: str, options: dict, connects: int, seconds: int, cc: str | None) -> dict:
    name = f"bn{os.getpid() % 1000}{len(condition)}"
    lab = lab_up(name, hosts=3, nat={"h3": "symmetric"}, public=2, **options)
    procs: list[subprocess.Popen] = []
    cc_args = ["-C", cc] if cc else []
    try:
        for host, server in (("h2", "eim"), ("h3", "sym")):
            procs.append(lab.popen(host, BOXER + ["--name", f"{server}-echo", "--"] + ECHO + ["7000"]))
            procs.append(lab.popen(host, BOXER + ["--name", f"{server}-perf", "--", "iperf3", "-s", "-p", "5201"],
                                   stdout=subprocess.DEVNULL))
        time.sleep(3.0)  # registrations and NAT probes
        result: dict = {}
        for server in ("eim", "sym"):
            watcher = lab.popen("coord", WATCHER + ["--seconds", "600"], stdout=subprocess.PIPE, text=True)
            client = f"probe-{server}"
            samples = run_json(lab, "h1", BOXER + ["--name", client, "--"] + PROBE +
                               ["connect", f"{server}-echo", "7000", str(connects)])["samples"]
            time.sleep(1.5)  # the client's final report reaches the watcher
            watcher.terminate()
            events = [json.loads(line) for line in watcher.communicate()[0].splitlines() if line.strip()]
            final = [e["report"] for e in events if e.get("t") == "instance_report" and e["name"] == client]
            report = final[-1] if final else {}
            direct, relayed = report.get("direct", 0), report.get("relayed", 0)
            perf = run_json(lab, "h1", BOXER + ["--name", f"iperf-{server}", "--", "iperf3", "-c", f"{server}-perf",
                                                 "-p", "5201", "-t", str(seconds), "-J", *cc_args])
            result[server] = {
                "connect_p50_ms": percentile(samples, 0.5) * 1e3,
                "connect_p99_ms": percentile(samples, 0.99) * 1e3,
                "direct": direct, "relayed": relayed,
                "punch_first_try": (report.get("first_try", 0) / direct) if direct else None,
                "throughput_mbit_s": perf["end"]["sum_received"]["bits_per_second"] / 1e6,
            }
        result["relayed_over_direct"] = result["sym"]["throughput_mbit_s"] / result["eim"]["throughput_mbit_s"]
        result["bare_public_mbit_s"] = bare_throughput(lab, seconds, cc_args)
        return result
    finally:
        stop_all(procs)
        lab_down(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connects", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "nat.json"))
    parser.add_argument("--cc", help="TCP congestion control inside the lab (e.g. cubic)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (the lab)", file=sys.stderr)
        return 2
    results = {cond: measure(cond, opts, args.connects, args.seconds, args.cc)
               for cond, opts in CONDITIONS.items()}
    print(f"\n{'condition':14} {'path to':10} {'path':8} {'first try':>9} {'p50 ms':>8} {'p99 ms':>8} {'Mbit/s':>9}")
    for cond, res in results.items():
        for server, label in (("eim", "eim NAT"), ("sym", "symmetric")):
            r = res[server]
            path = "direct" if r["direct"] and not r["relayed"] else ("relayed" if r["relayed"] and not r["direct"]
                                                                        else f"{r['direct']}d/{r['relayed']}r")
            first = "-" if r["punch_first_try"] is None else f"{r['punch_first_try']:.0%}"
            print(f"{cond:14} {label:10} {path:8} {first:>9} {r['connect_p50_ms']:8.2f} {r['connect_p99_ms']:8.2f} "
                  f"{r['throughput_mbit_s']:9.0f}")
        print(f"{cond:14} relayed/direct throughput: {res['relayed_over_direct']:.2f} (target >= 0.8)")
        print(f"{cond:14} plain TCP p2 -> p1 (no boxer): {res['bare_public_mbit_s']:.0f} Mbit/s")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
