"""What encrypting the control channel would cost per connect: TLS 1.3 in front of the current
handshake, against the current HMAC challenge-response alone, side by side.

The server is the real coordinator's protocol (CoordinatorServer and its _PeerProtocol over a
Broker) in a process of its own on 127.0.0.1, served once in the clear and once behind asyncio's
TLS (ECDSA P-256 certificate from `openssl`, pinned by the client). One connect is what an agent
does before its first useful frame: TCP connect, [TLS handshake,] Challenge, Auth, Welcome, then
one Ping answered by a Pong. Connects alternate between the two modes so machine noise hits both
alike. Reported: client-side latency per connect (p50, p99) and the server's CPU per connect
(from /proc), plus the bytes on the wire. Loopback has no round-trip time: on a real path TLS 1.3
adds one round trip before the Challenge (1-RTT handshake), which is the larger cost there.

Prints a table and writes benchmarks/results/control_tls.json.

    python benchmarks/bench_control_tls.py [--connects 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import percentile, write_results

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.wire import FrameDecoder, encode_frame

RESULTS = ROOT / "benchmarks" / "results" / "control_tls.json"
SECRET = bytes(range(32))

SERVER = """
import asyncio, ssl, sys
from boxer.nat_traversal.broker import Broker
from boxer.nat_traversal.coordinator import CoordinatorServer, _PeerProtocol

async def main(cert, key):
    loop = asyncio.get_running_loop()
    server = CoordinatorServer(Broker(bytes(range(32))))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    plain = await loop.create_server(lambda: _PeerProtocol(server), "127.0.0.1", 0)
    tls = await loop.create_server(lambda: _PeerProtocol(server), "127.0.0.1", 0, ssl=ctx)
    print(plain.sockets[0].getsockname()[1], tls.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def one_connect(port: int, tls: ssl.SSLContext | None) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls,
                                                   server_hostname="coordinator" if tls else None)
    decoder = FrameDecoder()

    async def receive() -> m.Message:
        while (frame := decoder.next_frame()) is None:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("closed")
            decoder.receive_data(data)
        return m.decode(frame)

    challenge = await receive()
    assert isinstance(challenge, m.Challenge)
    nonce = auth.new_token()
    writer.write(encode_frame(m.Auth(v=m.PROTOCOL_VERSION, nonce=nonce,
                                     mac=auth.mac(SECRET, auth.AGENT_PROOF, challenge.nonce, nonce)).to_wire()))
    welcome = await receive()
    assert isinstance(welcome, m.Welcome)
    assert auth.verify(auth.mac(SECRET, auth.COORDINATOR_PROOF, nonce, challenge.nonce), welcome.mac)
    writer.write(encode_frame(m.Ping(seq=1).to_wire()))
    assert await receive() == m.Pong(seq=1)
    elapsed = time.perf_counter() - t0
    sock = writer.get_extra_info("socket")
    info = _tcp_bytes(sock)
    writer.close()
    return elapsed, *info


def _tcp_bytes(sock) -> tuple[int, int]:
    """Bytes acked out and received in, from TCP_INFO (tcpi_bytes_acked, tcpi_bytes_received)."""
    import socket
    import struct

    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    # struct tcp_info: tcpi_bytes_acked at offset 120, tcpi_bytes_received at 128 (Linux >= 4.1).
    acked, received = struct.unpack_from("QQ", raw, 120)
    return acked, received


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(plain_port: int, tls_port: int, cert: str, connects: int, pid: int) -> dict:
    ctx = ssl.create_default_context(cafile=cert)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    samples: dict[str, list[float]] = {"hmac": [], "tls+hmac": []}
    wire: dict[str, tuple[int, int]] = {}
    cpu = {"hmac": 0.0, "tls+hmac": 0.0}
    for _ in range(20):  # warm both paths
        await one_connect(plain_port, None)
        await one_connect(tls_port, ctx)
    for i in range(2 * connects):
        mode = "hmac" if i % 2 == 0 else "tls+hmac"
        before = _cpu_seconds(pid)
        elapsed, out, back = await one_connect(plain_port if mode == "hmac" else tls_port,
                                               None if mode == "hmac" else ctx)
        await asyncio.sleep(0.002)  # let the server finish the close before its CPU is read
        cpu[mode] += _cpu_seconds(pid) - before
        samples[mode].append(elapsed)
        wire[mode] = (out, back)
    return {mode: {"p50_ms": percentile(s, 0.5) * 1e3, "p99_ms": percentile(s, 0.99) * 1e3,
                   "server_cpu_ms_per_connect": cpu[mode] / connects * 1e3,
                   "bytes_client_to_server": wire[mode][0], "bytes_server_to_client": wire[mode][1]}
            for mode, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = f"{tmp}/cert.pem", f"{tmp}/key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=coordinator",
                        "-addext", "subjectAltName=DNS:coordinator"], check=True, capture_output=True)
        server = subprocess.Popen([sys.executable, "-c", SERVER, cert, key], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            plain_port, tls_port = map(int, server.stdout.readline().split())
            results = asyncio.run(measure(plain_port, tls_port, cert, args.connects, server.pid))
        finally:
            server.terminate()
            server.wait(10)
    print(f"\n{'per connect (127.0.0.1)':<26}{'p50 ms':>9}{'p99 ms':>9}{'server CPU ms':>15}{'bytes out/in':>15}")
    for mode, r in results.items():
        print(f"{mode:<26}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['server_cpu_ms_per_connect']:>15.3f}"
              f"{r['bytes_client_to_server']:>8}/{r['bytes_server_to_client']:<6}")
    hmac, tls = results["hmac"], results["tls+hmac"]
    print(f"\nTLS adds {tls['p50_ms'] - hmac['p50_ms']:.3f} ms (p50) and "
          f"{tls['server_cpu_ms_per_connect'] - hmac['server_cpu_ms_per_connect']:.3f} ms of coordinator CPU per "
          "connect on loopback, plus one network round trip on a real path. Noisy shared machine: compare the "
          "two rows of one run, not runs.")
    write_results(str(RESULTS), {"connects": args.connects, "machine": platform.platform(),
                                 "cpus": os.cpu_count(), "results": results})


if __name__ == "__main__":
    main()
