"""Latency probes, run as an ordinary application (under `boxer run` for the overlay, bare for
the baseline). Prints JSON.

  rtt HOST PORT N       N one-byte request/response round trips on one open connection
  connect HOST PORT N [GAP]  N new connections, GAP seconds apart: connect, send, wait for the
                             first byte back
"""

import json
import socket
import sys
import time


def rtt(host, port, n):
    with socket.create_connection((host, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"ECHO\n")
        for _ in range(50):  # warm-up
            s.sendall(b"x")
            s.recv(1)
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(b"x")
            s.recv(1)
            samples.append(time.perf_counter() - t0)
    return samples


def connect(host, port, n, gap=0.0):
    samples = []
    for _ in range(n):
        time.sleep(gap)
        t0 = time.perf_counter()
        with socket.create_connection((host, port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"ECHO\nx")
            s.recv(1)
            samples.append(time.perf_counter() - t0)
    return samples


if __name__ == "__main__":
    mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    extra = [float(a) for a in sys.argv[5:]]  # connect: the gap between connects, in seconds
    print(json.dumps({"mode": mode, "samples": {"rtt": rtt, "connect": connect}[mode](host, port, n, *extra)}))
