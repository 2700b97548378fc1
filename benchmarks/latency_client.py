"""Latency probes, run as an ordinary application (under `boxer run` for the overlay, bare for
the baseline). Prints JSON.

  rtt HOST PORT N       N one-byte request/response round trips on one open connection
  connect HOST PORT N [GAP]  N new connections, GAP seconds apart: connect, send, wait for the
                             first byte back
  rate HOST PORT SECONDS THREADS  THREADS clients making new connections back to back for
                             SECONDS (connect, one byte there and back, close); the samples
                             are the completed connections per second of each client
"""

import json
import socket
import sys
import threading
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


def rate(host, port, seconds, threads=1):
    counts = [0] * int(threads)
    errors = []
    deadline = time.perf_counter() + seconds

    def client(i):
        try:
            while time.perf_counter() < deadline:
                with socket.create_connection((host, port), timeout=10) as s:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.sendall(b"ECHO\nx")
                    s.recv(1)
                counts[i] += 1
        except OSError as exc:
            errors.append(repr(exc))

    workers = [threading.Thread(target=client, args=(i,)) for i in range(int(threads))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise SystemExit(f"rate: {len(errors)} clients failed, first: {errors[0]}")
    return [count / seconds for count in counts]


if __name__ == "__main__":
    mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    extra = [float(a) for a in sys.argv[5:]]  # connect: the gap between connects; rate: threads
    modes = {"rtt": rtt, "connect": connect, "rate": rate}
    n = n if mode == "rate" else int(n)
    print(json.dumps({"mode": mode, "samples": modes[mode](host, port, n, *extra)}))
