"""The coordinator's asyncio server: moves frames between sockets and the Broker.

Kept thin on purpose: all decisions live in broker.py. One TCP port serves both agents' control
sessions and their rendezvous connections (the broker tells them apart by the first frame).

Membership updates are flushed once per turn of the event loop: every data_received of a turn
runs before a callback scheduled with call_soon during it, so registrations read in one turn
reach each agent as one MembersDelta.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import socket
from pathlib import Path

from boxer.nat_traversal import messages as m
from boxer.nat_traversal.broker import Action, Broker, Close, Send, Timeouts
from boxer.nat_traversal.relay import RelayServer
from boxer.nat_traversal.wire import MAX_DOWNSTREAM_FRAME, FrameDecoder, ProtocolError, encode_frame

log = logging.getLogger(__name__)

TICK = 0.1  # how often pending connects and quiet instances are checked
# Most reads of a control connection are exactly m.BEAT_FRAME: comparing bytes spares the JSON
# parse and the decoder (its result would be this message).
BEAT_FRAME = m.BEAT_FRAME
_BEAT = m.Beat()


class _PeerProtocol(asyncio.Protocol):
    def __init__(self, server: CoordinatorServer) -> None:
        self._server = server
        self._decoder = FrameDecoder()
        self.cid = next(server.cids)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host, port = transport.get_extra_info("peername")[:2]
        self._server.peers[self.cid] = self
        self._server.apply(self._server.broker.connection_made(self.cid, f"{host}:{port}"))

    def data_received(self, data: bytes) -> None:
        broker = self._server.broker
        if data == BEAT_FRAME and not self._decoder.buffered:
            try:
                self._server.apply(broker.message_received(self.cid, _BEAT, self._server.now()))
            except Exception:
                log.exception("internal error while serving connection %d; closing it", self.cid)
                self._server.close(self.cid)
            return
        self._decoder.receive_data(data)
        try:
            while (frame := self._decoder.next_frame()) is not None:
                message = m.decode(frame)
                self._server.apply(broker.message_received(self.cid, message, self._server.now()))
        except ProtocolError as exc:
            self._server.apply(broker.protocol_error(self.cid, str(exc)))
        except Exception:  # a bug must cost one connection, never the coordinator
            log.exception("internal error while serving connection %d; closing it", self.cid)
            self._server.close(self.cid)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.peers.pop(self.cid, None)
        self._server.apply(self._server.broker.connection_lost(self.cid))


class CoordinatorServer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.peers: dict[int, _PeerProtocol] = {}
        self.cids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self._flush_scheduled = False

    def now(self) -> float:
        return self._loop.time()

    def apply(self, actions: list[Action]) -> None:
        frames: dict[int, bytes] = {}  # one message sent to many (a MembersDelta) is encoded once
        for action in actions:
            peer = self.peers.get(action.cid)
            if peer is None or peer.transport is None:
                continue
            if isinstance(action, Send):
                key = id(action.message)  # `actions` keeps every message alive: no id is reused
                if key not in frames:
                    frames[key] = encode_frame(action.message.to_wire(), MAX_DOWNSTREAM_FRAME)
                peer.transport.write(frames[key])
            elif isinstance(action, Close):
                peer.transport.close()
        if self.broker.members_due and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_members)

    def _flush_members(self) -> None:
        self._flush_scheduled = False
        self.apply(self.broker.flush_members())

    def close(self, cid: int) -> None:
        peer = self.peers.get(cid)
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    async def expire_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.apply(self.broker.expire(self.now()))


async def serve(host: str, port: int, secret: bytes, prefix: str, ready_file: str | None = None,
                relay_port: int | None = None, embedded_relay: bool = True,
                metrics: tuple[str, int] | None = None, timeouts: Timeouts | None = None) -> None:
    """Serve until SIGINT/SIGTERM. relay_port: the relay and NAT-probe port (default port + 1);
    with embedded_relay False a separate `boxer relay` serves it (and relayed connections then
    survive a restart of the coordinator). timeouts: heartbeat interval, quiet limit and the rest."""
    timeouts = timeouts or Timeouts()
    loop = asyncio.get_running_loop()
    relay = RelayServer(secret)
    relay_port = port + 1 if relay_port is None else relay_port
    relay_bound = await relay.start(host, relay_port) if embedded_relay else relay_port
    server = CoordinatorServer(Broker(secret, prefix=prefix, relay_port=relay_bound, timeouts=timeouts))
    listener = await loop.create_server(lambda: _PeerProtocol(server), host, port,
                                        reuse_address=True, backlog=1024)
    bound = listener.sockets[0].getsockname()
    metrics_server = None
    if metrics is not None:
        from boxer.nat_traversal.metrics import render, serve_metrics

        metrics_server = await serve_metrics(
            metrics[0], metrics[1], lambda: render(server.broker, relay.stats if embedded_relay else None))
    log.info("coordinator listening on %s:%d, relay on port %d (overlay prefix %s)",
             bound[0], bound[1], relay_bound, prefix)
    if ready_file:
        Path(ready_file).write_text(f"{bound[0]}:{bound[1]}\n")
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    expirer = asyncio.create_task(server.expire_forever())
    try:
        await stop.wait()
    finally:
        expirer.cancel()
        listener.close()
        relay.close()
        if metrics_server is not None:
            metrics_server.close()


async def serve_relay(host: str, port: int, secret: bytes) -> None:
    """A stand-alone relay (`boxer relay`), until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    relay = RelayServer(secret)
    bound = await relay.start(host, port)
    log.info("relay listening on %s:%d", host, bound)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        relay.close()
        log.info("coordinator stopped")
