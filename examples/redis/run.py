#!/usr/bin/env python3
"""redis-server on one NATed host, redis-cli and redis-benchmark on another, through boxer.

Neither host can accept an inbound connection (each sits behind its own NAT router, as a Lambda
instance does); under `boxer run` they talk over a direct, hole-punched TCP connection.

    sudo .venv/bin/python examples/redis/run.py

Builds a fresh lab, runs the demo, prints what happened and tears the lab down (also on Ctrl-C).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

from boxer.lab import lab_down, lab_up

LAB = f"redis{os.getpid() % 10000}"
BOXER = [sys.executable, "-m", "boxer"]
# --protected-mode no: without a password redis answers only clients on its loopback, and ours
# come from another host, as on any network. No dump.rdb, no append-only file in the cwd.
REDIS_SERVER = ["redis-server", "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"]


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(proc: subprocess.CompletedProcess) -> str:
    out = (proc.stdout or "").strip()
    for line in out.splitlines():
        print(f"   {line}")
    if proc.returncode != 0 and proc.stderr:
        for line in proc.stderr.strip().splitlines()[-5:]:
            print(f"   ! {line}")
    return out


def main() -> int:
    if os.geteuid() != 0:
        print("this demo builds network namespaces and NAT routers: run it as root", file=sys.stderr)
        return 2
    step("building the lab: 2 hosts, each behind its own NAT router, and a coordinator")
    started = time.monotonic()
    lab = lab_up(LAB, hosts=2)
    server = None
    try:
        h1, h2 = lab.host("h1"), lab.host("h2")
        print(f"   lab up in {time.monotonic() - started:.2f} s; coordinator at {lab.coordinator}")
        print(f"   h1: private {h1.address}, behind NAT {h1.public_address}")
        print(f"   h2: private {h2.address}, behind NAT {h2.public_address}")

        step("without boxer: redis-cli on h2 cannot reach a server on h1 (the NAT drops it)")
        raw = subprocess.Popen(lab.command("h1", REDIS_SERVER), stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            probe = lab.run("h2", ["timeout", "2", "redis-cli", "-h", h1.public_address, "-p", "6379", "ping"],
                            capture_output=True, text=True, timeout=10)
            answer = (probe.stdout + probe.stderr).strip()
            print(f"   redis-cli -h {h1.public_address} ping -> "
                  f"{answer or 'no answer in 2 s (the SYN was silently dropped)'}")
        finally:
            raw.terminate()
            raw.wait()

        # The step prints the very command it runs.
        step(f"h1: boxer run --name kv -- {shlex.join(REDIS_SERVER)}")
        server = lab.popen("h1", [*BOXER, "run", "--name", "kv", "--", *REDIS_SERVER], stdout=subprocess.DEVNULL)
        cli = [*BOXER, "run", "--name", "client", "--", "redis-cli", "-h", "kv", "-p", "6379"]
        deadline = time.monotonic() + 15
        while True:
            ping = lab.run("h2", [*cli, "ping"], capture_output=True, text=True, timeout=20)
            if ping.stdout.strip() == "PONG" or time.monotonic() > deadline:
                break
            time.sleep(0.2)

        step("h2: boxer run -- redis-cli -h kv ping / set / get / client list")
        show(ping)
        if ping.stdout.strip() != "PONG":
            print("   the demo failed: redis-cli did not get PONG", file=sys.stderr)
            return 1
        show(lab.run("h2", [*cli, "set", "greeting", "hello across two NATs"], capture_output=True, text=True))
        show(lab.run("h2", [*cli, "get", "greeting"], capture_output=True, text=True))
        show(lab.run("h2", [*BOXER, "run", "--name", "client", "--", "sh", "-c",
                            "redis-cli -h kv client list; echo \"(this client is $(hostname))\""],
                     capture_output=True, text=True))

        step("h2: boxer run -- redis-benchmark -h kv -n 20000 -c 20 -t set,get -q")
        bench = lab.run("h2", [*BOXER, "run", "--name", "bench", "--", "redis-benchmark", "-h", "kv",
                               "-n", "20000", "-c", "20", "-t", "set,get", "-q"],
                        capture_output=True, text=True, timeout=120)
        # -q still draws a progress line per second (with \r); keep the summaries
        bench.stdout = "\n".join(line.rsplit("\r", 1)[-1].strip() for line in bench.stdout.splitlines()
                                 if "requests per second" in line)
        show(bench)
        print("\nEvery connection above was a direct TCP connection between two NATed hosts,\n"
              "hole-punched through both routers; no byte of redis traffic went through boxer.")
        return 0 if bench.returncode == 0 else 1
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        step("tearing the lab down")
        lab_down(LAB)
        print("   done")


if __name__ == "__main__":
    sys.exit(main())
