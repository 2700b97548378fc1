"""Launches per second from one controller: LambdaBackend.launch() against the local Invoke API,
through aiobotocore (what the controller uses) and through the boto3 thread pool it used before,
in the same run against the same server.

The server is `boxer lambda-local serve --drop` in a process of its own (so it does not share
the controller's interpreter): it answers each Invoke as Lambda does, 202 once the event is
queued, and runs no sandbox. A burst is N launches started at once (the controller's panic
scale-up); a launch is done when Invoke answered 202. Target: 500/s, so the controller never
limits a burst (Lambda itself allows 1000 new execution environments per 10 s per function).

    .venv/bin/python benchmarks/bench_lambda_launch.py [--launches 2000] [--rounds 3]

Writes benchmarks/results/lambda_launch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

from boxer import _aio as aio
from boxer.backends.aws_lambda.backend import LambdaBackend, boto3_client
from boxer.backends.aws_lambda.facts import LambdaFacts
from boxer.backends.base import InstanceSpec
from boxer.backends.emulators.invoke_api import fetch_stats

RESULTS = Path(__file__).resolve().parent / "results" / "lambda_launch.json"
REGION = "eu-west-1"
FUNCTION = "boxer-bench"
TARGET = 500.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, latency: float) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "boxer", "lambda-local", "serve", "--function", FUNCTION,
                             "--drop", "--region", REGION, "--listen", f"127.0.0.1:{port}",
                             "--latency", str(latency)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            fetch_stats(f"http://127.0.0.1:{port}", region=REGION, timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the local Invoke API did not start")


def spec(i: int) -> InstanceSpec:
    return InstanceSpec(name=f"kv-{i}", service="kv", index=i,
                        command=["redis-server", "--port", "6379", "--save", ""], max_lifetime=840)


async def burst(make_backend, launches: int) -> tuple[float, float]:
    """(launches per second of wall time, per second of this process's CPU time) of one burst of
    `launches`, the client warmed by one launch first. The CPU figure is what one controller
    core can do, whatever else the machine runs; the wall figure is what this run got."""
    backend = make_backend(launches + 1)
    try:
        first = await backend.launch(spec(0))  # builds the client, opens a first connection
        first.mark_stopped()
        began, cpu = time.perf_counter(), time.process_time()
        handles = await asyncio.gather(*(backend.launch(spec(i)) for i in range(1, launches + 1)))
        spent, cpu_spent = time.perf_counter() - began, time.process_time() - cpu
        assert all(h.details["attempts"] == 1 for h in handles)
        for handle in handles:
            handle.mark_stopped()
        return launches / spent, launches / cpu_spent
    finally:
        await backend.close()


def measure(paths: dict, port: int, latency: float, args: argparse.Namespace) -> dict:
    server = start_server(port, latency)
    rates: dict[str, list[float]] = {name: [] for name in paths}
    per_cpu: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for _ in range(args.rounds):  # interleaved, so a noisy moment hits every path alike
            for name, make in paths.items():
                # the controller's own loop (uvloop, boxer._aio), as `python -m boxer.controller.daemon`
                wall, cpu = aio.run(burst(make, args.launches))
                rates[name].append(wall)
                per_cpu[name].append(cpu)
        stats = fetch_stats(f"http://127.0.0.1:{port}", region=REGION)
    finally:
        server.terminate()
        server.wait(10)
    print(f"\nInvoke answered after {latency * 1000:.0f} ms; server: {stats.get('events')} events over "
          f"{stats.get('connections')} connections")
    print(f"{'path':44} {'median/s':>9} {'min/s':>7} {'max/s':>7} {'per CPU-s':>10}  target {TARGET:.0f}/s")
    out: dict = {"latency_seconds": latency, "paths": {},
                 "server": {k: stats.get(k) for k in ("events", "connections", "dropped")}}
    for name, samples in rates.items():
        median = statistics.median(samples)
        cpu = statistics.median(per_cpu[name])
        out["paths"][name] = {"median": median, "min": min(samples), "max": max(samples), "samples": samples,
                              "per_cpu_second": cpu, "per_cpu_second_samples": per_cpu[name]}
        print(f"{name:44} {median:9.0f} {min(samples):7.0f} {max(samples):7.0f} {cpu:10.0f}  "
              f"{'meets' if median >= TARGET else 'below'}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, action="append",
                        help="seconds the server waits before each answer (the round trip to Lambda's "
                             "endpoint); repeatable [default: 0 and 0.02]")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_EC2_METADATA_DISABLED", "true")):
        os.environ.setdefault(name, value)
    port = free_port()
    os.environ["AWS_ENDPOINT_URL_LAMBDA"] = f"http://127.0.0.1:{port}"
    facts = LambdaFacts(FUNCTION, "203.0.113.7:7000", "/boxer/bench/secret", REGION)
    paths = {
        "aiobotocore (64 connections)":
            lambda n: LambdaBackend(facts, max_concurrency=n, max_connections=64),
        "aiobotocore (8 connections)":
            lambda n: LambdaBackend(facts, max_concurrency=n, max_connections=8),
        "boto3 in a thread pool (8 threads, before)":
            lambda n: LambdaBackend(facts, client=boto3_client(REGION, 8), max_concurrency=n, max_workers=8),
        "boto3 in a thread pool (64 threads)":
            lambda n: LambdaBackend(facts, client=boto3_client(REGION, 64), max_concurrency=n, max_workers=64),
    }
    results: dict = {"launches": args.launches, "rounds": args.rounds, "target_per_second": TARGET,
                     "latencies": {}}
    print(f"{args.launches} launches per burst, {args.rounds} rounds, one controller, python "
          f"{platform.python_version()}, {os.cpu_count()} cores (shared: noisy)")
    for latency in args.latency or [0.0, 0.02]:
        results["latencies"][str(latency)] = measure(paths, port, latency, args)
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
