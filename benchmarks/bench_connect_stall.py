#!/usr/bin/env python3
"""How long a new overlay connect stalls the calling thread: blocking vs non-blocking sockets.

In a 2-host lab (both hosts behind NAT), an echo server runs under `boxer run` on h1; a client
under `boxer run` on h2 makes --connects new overlay connections per mode and measures, with
the monotonic clock around the calls themselves:

  stall       time spent inside connect()  (the caller's thread can do nothing else)
  complete    connect() called -> socket writable and SO_ERROR == 0 (-> first byte can go)

A blocking connect stalls for the whole punch; a non-blocking one must return EINPROGRESS at
once (the punch runs in the agent while the app's event loop keeps going) and complete through
poll/epoll (issue 3). The client is plain Python: `socket.connect` on a blocking socket, and
`connect_ex` + `select.epoll` + `getsockopt(SO_ERROR)` on a non-blocking one, as event loops do.

    sudo .venv/bin/python benchmarks/bench_connect_stall.py [--connects 100]

Prints a table and writes benchmarks/results/connect_stall.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from boxer.lab import lab_down, lab_up

BOXER = [sys.executable, "-m", "boxer", "run"]
ECHO = [sys.executable, str(ROOT / "tests" / "apps" / "echo_server.py")]

CLIENT = r"""
import json, select, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
addr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
out = {"blocking": {"stall": [], "complete": []}, "nonblocking": {"stall": [], "complete": []}}
ep = select.epoll()
for i in range(2 * n):
    mode = "blocking" if i % 2 == 0 else "nonblocking"   # interleaved: same conditions
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if mode == "blocking":
        t0 = time.perf_counter()
        s.connect(addr)
        t1 = time.perf_counter()
        t2 = t1
    else:
        s.setblocking(False)
        t0 = time.perf_counter()
        rc = s.connect_ex(addr)
        t1 = time.perf_counter()
        assert rc in (0, 115), rc   # 115: EINPROGRESS
        ep.register(s.fileno(), select.EPOLLOUT)
        while not ep.poll(10):
            pass
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        t2 = time.perf_counter()
        assert err == 0, err
        ep.unregister(s.fileno())
        s.setblocking(True)
    s.sendall(b"ECHO\nx")
    assert s.recv(1) == b"x"
    s.close()
    out[mode]["stall"].append(t1 - t0)
    out[mode]["complete"].append(t2 - t0)
print(json.dumps(out))
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=100, help="connections per mode")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the benchmark needs root (it builds a lab of network namespaces)", file=sys.stderr)
        return 2
    name = f"st{os.getpid() % 100000}"
    lab = lab_up(name, hosts=2)
    server = None
    try:
        server = lab.popen("h1", [*BOXER, "--name", "echo", "--", *ECHO, "7777"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            probe = lab.run("h2", [*BOXER, "--name", "probe", "--", sys.executable, "-c",
                                   "import socket; socket.create_connection(('echo', 7777), 5).close()"],
                            capture_output=True, text=True, timeout=30)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"echo server did not come up: {probe.stderr}")
            time.sleep(0.3)
        proc = lab.run("h2", [*BOXER, "--name", "stall", "--", sys.executable, "-c", CLIENT, "echo", "7777",
                              str(args.connects)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"client failed: {proc.stderr}")
        raw = json.loads(proc.stdout)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        lab_down(name)

    rows = []
    for mode in ("blocking", "nonblocking"):
        for what in ("stall", "complete"):
            v = [x * 1e6 for x in raw[mode][what]]
            rows.append({"mode": mode, "measure": what, "n": len(v), "p50_us": round(pct(v, 0.5), 1),
                         "p90_us": round(pct(v, 0.9), 1), "p99_us": round(pct(v, 0.99), 1),
                         "max_us": round(max(v), 1), "mean_us": round(statistics.fmean(v), 1)})
    print(f"{'mode':<12} {'measure':<9} {'n':>4} {'p50 µs':>9} {'p90 µs':>9} {'p99 µs':>9} {'max µs':>9}")
    for r in rows:
        print(f"{r['mode']:<12} {r['measure']:<9} {r['n']:>4} {r['p50_us']:>9} {r['p90_us']:>9} "
              f"{r['p99_us']:>9} {r['max_us']:>9}")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "connect_stall.json").write_text(json.dumps(
        {"connects_per_mode": args.connects, "rows": rows,
         "conditions": "lab, 2 hosts behind NAT, no netem; python client, interleaved modes"}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
