"""Launches per second of `vm` instances: through the host daemons (the lambda backends' vm tier:
the controller sends each instance's event to `boxer host serve` on a vm host, which starts
`boxer run`) against the lab backend's own path (`local`: `boxer run` forked from the lab's
zygote in the public host), in the same run, on the same lab's public hosts.

A burst is one instance per public host, all launched at once (what a fresh deployment's vm base
asks for); a launch is done when the backend has started the instance's process (the daemon
answered `started`; the zygote answered the fork), which is what Invoke's 202 is for a function
instance. Every instance is a real `boxer run -- sleep 600` that registers with the lab's
coordinator; each round's instances are stopped (timed too) before the next, and the paths
alternate rounds.

    .venv/bin/python benchmarks/bench_vm_launch.py [--hosts 8] [--rounds 5]

Writes benchmarks/results/vm_launch.json. Needs root (the lab).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, write_results

from boxer.backends.base import InstanceSpec, Placement
from boxer.nat_traversal.auth import instance_token, load_secret

RESULTS = Path(__file__).resolve().parent / "results" / "vm_launch.json"


def spec(i: int, round_: int, secret: bytes) -> InstanceSpec:
    instance_id = f"{round_:04x}{i:012x}"
    return InstanceSpec(name=f"vm-{i}", service="vm", index=i, command=("sleep", "600"), placement=Placement.VM,
                        env={"BOXER_INSTANCE_ID": instance_id}, token=instance_token(secret, instance_id).hex())


async def burst(backend, hosts: int, round_: int, secret: bytes) -> dict:
    latencies: list[float] = []

    async def one(i: int):
        began = time.perf_counter()
        handle = await backend.launch(spec(i, round_, secret))
        latencies.append(time.perf_counter() - began)
        return handle

    began = time.perf_counter()
    handles = await asyncio.gather(*(one(i) for i in range(1, hosts + 1)))
    took = time.perf_counter() - began
    stop_began = time.perf_counter()
    await asyncio.gather(*(backend.stop(h) for h in handles))
    stopped = time.perf_counter() - stop_began
    await asyncio.sleep(0.5)  # hosts freed (the local backend's waiter), daemons' slots told
    return {"per_second": hosts / took, "p50_ms": 1000 * percentile(latencies, 0.5),
            "max_ms": 1000 * max(latencies), "stop_seconds": stopped}


async def run(lab, rounds: int, log_dir: Path) -> dict:
    from boxer.backends.emulators.lambda_local import LocalLambdaBackend
    from boxer.backends.local import LocalBackend

    hosts = len(lab.public_hosts)
    secret = load_secret(str(lab.secret_file), None)
    local = LocalBackend(lab, log_dir=log_dir, spare_hosts=1)
    daemons = LocalLambdaBackend(lab, log_dir=log_dir, spare_hosts=1, host_daemons=True, zygote=False)
    await daemons.vm_hosts_ready()  # the hosts are up before the clock starts, as EC2 hosts would be
    await local._zygote_for({})  # and the zygote ready: both paths warm
    paths = {"host daemon (vm tier)": daemons, "local backend (zygote fork)": local}
    samples: dict[str, list[dict]] = {name: [] for name in paths}
    try:
        for round_ in range(rounds):
            for name, backend in (paths.items() if round_ % 2 == 0 else reversed(paths.items())):
                samples[name].append(await burst(backend, hosts, round_ * 2 + (name.startswith("host")), secret))
    finally:
        await daemons.close()
        await local.close()
    out = {}
    for name, rows in samples.items():
        out[name] = {
            "per_second_median": statistics.median(r["per_second"] for r in rows),
            "p50_ms_median": statistics.median(r["p50_ms"] for r in rows),
            "max_ms_median": statistics.median(r["max_ms"] for r in rows),
            "stop_seconds_median": statistics.median(r["stop_seconds"] for r in rows),
            "rounds": rows,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=8, help="public lab hosts = vm hosts = the burst")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--inside", metavar="LAB", help=argparse.SUPPRESS)  # the measuring half
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_vm_launch: needs root (it builds a lab)", file=sys.stderr)
        return 2
    from boxer import _aio as aio
    from boxer.lab import lab_down, lab_up, load_lab

    if args.inside:
        # In the lab's coordinator namespace, where the controller runs: the public hosts are
        # reachable from there (not from the machine's own namespace).
        lab = load_lab(args.inside)
        with tempfile.TemporaryDirectory(prefix="bench-vm-") as logs:
            figures = aio.run(run(lab, args.rounds, Path(logs)))
        report(args, figures)
        return 0
    import subprocess

    name = f"bvm{os.getpid() % 10000}"
    lab = lab_up(name, 1, public=args.hosts)
    try:
        argv = [sys.executable, __file__, "--hosts", str(args.hosts), "--rounds", str(args.rounds),
                "--out", str(Path(args.out).resolve()), "--inside", name]
        return subprocess.run(lab.command("coord", argv), env=lab.env("coord"), check=False).returncode
    finally:
        lab_down(name)


def report(args: argparse.Namespace, figures: dict) -> None:
    print(f"\nvm launches, bursts of {args.hosts} (one per public host), medians of {args.rounds} rounds"
          f" ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    print(f"{'path':<30} {'launches/s':>10} {'p50 ms':>8} {'max ms':>8} {'stop s':>7}")
    for path, row in figures.items():
        print(f"{path:<30} {row['per_second_median']:>10.1f} {row['p50_ms_median']:>8.1f}"
              f" {row['max_ms_median']:>8.1f} {row['stop_seconds_median']:>7.2f}")
    write_results(args.out, {"hosts": args.hosts, "rounds": args.rounds, "cpus": os.cpu_count(),
                             "python": platform.python_version(), "paths": figures})


if __name__ == "__main__":
    sys.exit(main())
