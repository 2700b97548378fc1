"""How does our NAT map ports? Measured against the coordinator's two ports.

From one local port we ask the coordinator's main port and its relay port which public endpoint
they see. The same endpoint from both means endpoint-independent mapping (what TCP hole punching
needs, and what Lambda is believed to have); two different ports mean a symmetric NAT, which maps
each destination to a new port, so punching cannot work and connections go through the relay.

Filtering is measured too (for `boxer probe-nat`): while we listen on the mapped local port, the
coordinator's relay host connects to our public endpoint from a port we never talked to; getting
through means endpoint-independent filtering.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import asdict, dataclass

from boxer.nat_traversal import messages as m
from boxer.nat_traversal.wire import FrameDecoder, encode_frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NatProbe:
    local_port: int
    endpoint_main: str  # public endpoint seen by the coordinator's main port
    endpoint_relay: str  # ... and by its relay port, from the same local port

    @property
    def mapping(self) -> str:
        return "eim" if self.endpoint_main == self.endpoint_relay else "symmetric"

    @property
    def port_preserved(self) -> bool:
        return int(self.endpoint_main.rpartition(":")[2]) == self.local_port

    def as_dict(self) -> dict:
        return {**asdict(self), "mapping": self.mapping, "port_preserved": self.port_preserved}


async def _observe_from(local_port: int, target: tuple[str, int], timeout: float) -> str:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(("0.0.0.0", local_port))
        await asyncio.wait_for(loop.sock_connect(sock, target), timeout)
        await loop.sock_sendall(sock, encode_frame(m.Probe(v=m.PROTOCOL_VERSION).to_wire()))
        decoder = FrameDecoder()
        while True:
            frame = decoder.next_frame()
            if frame is not None:
                message = m.decode(frame)
                if isinstance(message, m.Observed):
                    return message.endpoint
                continue  # the main port greets every connection with a challenge first
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)
            if not data:
                raise ConnectionResetError(f"{target[0]}:{target[1]} closed before answering the probe")
            decoder.receive_data(data)
    finally:
        sock.close()


async def idle_mapping_survives(relay: tuple[str, int], idle: int) -> bool:
    """Does a TCP mapping idle for `idle` seconds still carry traffic from outside?"""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, relay), 5.0)
        await loop.sock_sendall(sock, encode_frame(m.Probe(v=m.PROTOCOL_VERSION, again_after=idle).to_wire()))
        decoder = FrameDecoder()
        answers = 0
        deadline = loop.time() + idle + 3.0
        while answers < 2:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), remaining)
            except asyncio.TimeoutError:
                return False
            if not data:
                return False
            decoder.receive_data(data)
            while decoder.next_frame() is not None:
                answers += 1
        return True
    finally:
        sock.close()


async def probe_filtering(relay: tuple[str, int], wait: float = 1.5) -> str:
    """Does our NAT let in a connection from an endpoint we never sent to? We listen on a local
    port, reach the relay from it, and the relay connects back from a port of its own.

    "endpoint-independent": it got in (or there is no NAT); "address-and-port-dependent": only
    the exact endpoint we sent to may answer (one coordinator address cannot tell
    address-dependent from endpoint-independent filtering apart: both let it in)."""
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("0.0.0.0", 0))
    listener.listen(4)
    listener.setblocking(False)
    out = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    out.setblocking(False)
    out.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    out.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        out.bind(("0.0.0.0", listener.getsockname()[1]))
        await asyncio.wait_for(loop.sock_connect(out, relay), 5.0)
        await loop.sock_sendall(out, encode_frame(m.Probe(v=m.PROTOCOL_VERSION, call_back=True).to_wire()))
        try:
            conn, _ = await asyncio.wait_for(loop.sock_accept(listener), wait)
            conn.close()
            return "endpoint-independent"
        except asyncio.TimeoutError:
            return "address-and-port-dependent"
    finally:
        out.close()
        listener.close()


async def probe_mapping(coordinator: tuple[str, int], relay_port: int, timeout: float = 2.0) -> NatProbe:
    reserve = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind(("0.0.0.0", 0))  # holds the port for both probes
    local_port = reserve.getsockname()[1]
    try:
        main = await _observe_from(local_port, coordinator, timeout)
        relay = await _observe_from(local_port, (coordinator[0], relay_port), timeout)
    finally:
        reserve.close()
    return NatProbe(local_port, main, relay)
