"""Client side of the lab tests: an unmodified application making ordinary socket calls.

Prints one JSON object on stdout with what it observed.
"""

import errno
import hashlib
import json
import socket
import sys
import threading
import time


def connect(host, port, timeout=10.0):
    return socket.create_connection((host, int(port)), timeout=timeout)


def cmd_concurrent(host, port, n):
    n = int(n)
    results = [None] * n
    barrier = threading.Barrier(n)

    def worker(i):
        payload = f"connection {i} ".encode() * 100
        try:
            barrier.wait()
            with connect(host, port) as s:
                s.sendall(b"ECHO\n" + payload)
                s.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
            results[i] = got == payload
        except OSError as exc:
            results[i] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"ok": sum(1 for r in results if r is True), "errors": [r for r in results if r is not True]}


def cmd_bulk(host, port, nbytes):
    nbytes = int(nbytes)
    block = hashlib.sha256(b"boxer").digest() * 2048  # 64 KiB, deterministic
    data = (block * (nbytes // len(block) + 1))[:nbytes]
    started = time.monotonic()
    with connect(host, port, timeout=60) as s:
        print("connected", file=sys.stderr, flush=True)  # tests that act mid-transfer wait for it
        s.sendall(f"SHA {nbytes}\n".encode())
        s.sendall(data)
        answer = s.makefile().readline().strip()
    seconds = time.monotonic() - started
    return {"match": answer == hashlib.sha256(data).hexdigest(), "seconds": seconds, "bytes": nbytes}


def cmd_peer(host, port):
    with connect(host, port) as s:
        s.sendall(b"PEER\n")
        server_view = s.makefile().readline().split()
        return {"server_sees_peer": server_view[:2], "server_own": server_view[2:4], "server_hostname": server_view[4],
                "client_sock": list(map(str, s.getsockname())), "client_peer": list(map(str, s.getpeername())),
                "client_hostname": socket.gethostname()}


def cmd_connect(host, port, timeout="10"):
    started = time.monotonic()
    s = socket.socket()
    s.settimeout(float(timeout))
    try:
        s.connect((host, int(port)))
        return {"errno": None, "seconds": time.monotonic() - started}
    except OSError as exc:
        return {"errno": errno.errorcode.get(exc.errno, str(exc)), "seconds": time.monotonic() - started}
    finally:
        s.close()


def cmd_stream(host, port, seconds):
    """Echo 1 KiB every 20 ms on one connection for `seconds`, checking every byte."""
    sent = 0
    with connect(host, port) as s:
        s.sendall(b"ECHO\n")
        end = time.monotonic() + float(seconds)
        while time.monotonic() < end:
            block = (f"{sent:016d}" * 64).encode()
            s.sendall(block)
            got = b""
            while len(got) < len(block):
                chunk = s.recv(len(block) - len(got))
                if not chunk:
                    return {"ok": False, "bytes": sent, "error": "connection closed"}
                got += chunk
            if got != block:
                return {"ok": False, "bytes": sent, "error": "corrupted"}
            sent += len(block)
            time.sleep(0.02)
    return {"ok": True, "bytes": sent}


def cmd_retry_connect(host, port, after, seconds, attempt_timeout="2", success_from="0"):
    """From wall-clock time `after` on, connect every 20 ms until one succeeds at or after
    wall time `success_from` (earlier successes are counted, not reported); report when.
    Each attempt gives up after `attempt_timeout` seconds."""
    while time.time() < float(after):
        time.sleep(0.01)
    end = time.monotonic() + float(seconds)
    attempts = early = 0
    while time.monotonic() < end:
        attempts += 1
        try:
            with connect(host, port, timeout=float(attempt_timeout)) as s:
                s.sendall(b"ECHO\nx")
                if s.recv(1) == b"x":
                    if time.time() >= float(success_from):
                        return {"connected_at": time.time(), "attempts": attempts, "early": early}
                    early += 1
        except OSError:
            pass
        time.sleep(0.02)
    return {"connected_at": None, "attempts": attempts, "early": early}


def cmd_idle(host, port, seconds):
    """Echo a block, stay idle for `seconds`, echo another: does an idle connection survive?"""
    with connect(host, port) as s:
        s.sendall(b"ECHO\nfirst")
        first = s.recv(5)
        time.sleep(float(seconds))
        s.settimeout(5)
        try:
            s.sendall(b"again")
            second = s.recv(5)
        except OSError as exc:
            return {"first": first.decode(), "error": str(exc)}
    return {"first": first.decode(), "second": second.decode()}


def cmd_resolve(name):
    try:
        infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
        return {"addresses": sorted({info[4][0] for info in infos})}
    except socket.gaierror as exc:
        names = {socket.EAI_NONAME: "EAI_NONAME", socket.EAI_AGAIN: "EAI_AGAIN"}
        return {"error": names.get(exc.errno, exc.errno)}


if __name__ == "__main__":
    print(json.dumps(globals()["cmd_" + sys.argv[1]](*sys.argv[2:])))
