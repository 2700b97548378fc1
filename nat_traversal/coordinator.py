"""The coordinator's asyncio server: moves frames between sockets and the Broker.

Kept thin on purpose: all decisions live in broker.py. One TCP port serves both agents' control
sessions and their rendezvous connections (the broker tells them apart by the first frame).

Membership updates are flushed once per turn of the event loop: every data_received of a turn
runs before a callback scheduled with call_soon during it, so registrations read in one turn
reach each agent as one MembersDelta.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import resource
import signal
import socket
from pathlib import Path

from boxer.nat_traversal import messages as m
from boxer.nat_traversal.broker import Action, Broker, Close, Send, Timeouts
from boxer.nat_traversal.defaults import relay_port_of
from boxer.nat_traversal.limits import Limits, Refusals, RelayLimits
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
        self.paused_at: float | None = None  # the transport's write buffer passed its high mark then

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_limits = getattr(transport, "set_write_buffer_limits", None)
        if set_limits is not None:
            set_limits(high=self._server.broker.limits.write_buffer)
        host, port = transport.get_extra_info("peername")[:2]
        self._server.peers[self.cid] = self
        self._server.apply(self._server.broker.connection_made(self.cid, f"{host}:{port}", self._server.now()))

    def pause_writing(self) -> None:
        # More than `Limits.write_buffer` bytes wait for this peer: it reads slowly or not at
        # all. expire_forever drops it if that lasts `Limits.write_stall` seconds.
        self.paused_at = self._server.now()
        self._server.paused.add(self.cid)

    def resume_writing(self) -> None:
        self.paused_at = None
        self._server.paused.discard(self.cid)

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
        self._server.paused.discard(self.cid)
        self._server.apply(self._server.broker.connection_lost(self.cid))


class CoordinatorServer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.peers: dict[int, _PeerProtocol] = {}
        self.paused: set[int] = set()  # peers whose writes are paused (they do not read)
        self.cids = itertools.count(1)
        limits = broker.limits
        # One full Members may land on top of a paused buffer; more than that and twice the
        # mark is a peer that stopped reading long ago.
        self._write_cap = 2 * limits.write_buffer + MAX_DOWNSTREAM_FRAME
        self._loop = asyncio.get_running_loop()
        self._flush_scheduled = False

    def now(self) -> float:
        return self._loop.time()

    def apply(self, actions: list[Action]) -> None:
        frames: dict[int, bytes] = {}  # one message sent to many (a MembersDelta) is encoded once
        for action in actions:
            peer = self.peers.get(action.cid)
            if peer is None or peer.transport is None or peer.transport.is_closing():
                continue
            if isinstance(action, Send):
                key = id(action.message)  # `actions` keeps every message alive: no id is reused
                if key not in frames:
                    frames[key] = encode_frame(action.message.to_wire(), MAX_DOWNSTREAM_FRAME)
                peer.transport.write(frames[key])
                if peer.paused_at is not None and peer.transport.get_write_buffer_size() > self._write_cap:
                    self._drop_slow_reader(peer)
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

    def _drop_slow_reader(self, peer: _PeerProtocol) -> None:
        assert peer.transport is not None
        self.broker.refusals.refuse("slow-reader", self.now(), f"connection {peer.cid} does not read what it is sent "
                                    f"({peer.transport.get_write_buffer_size()} bytes wait): dropped")
        self.paused.discard(peer.cid)
        peer.transport.abort()  # close() would wait to flush what it never reads

    def _drop_stalled(self) -> None:
        stall = self.broker.limits.write_stall
        for cid in list(self.paused):
            peer = self.peers.get(cid)
            if peer is not None and peer.paused_at is not None and self.now() - peer.paused_at > stall:
                self._drop_slow_reader(peer)

    async def expire_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.apply(self.broker.expire(self.now()))
            if self.paused:
                self._drop_stalled()


def raise_descriptor_limit() -> int:
    """Raises this process's soft limit of open files to its hard limit (each agent holds a
    control connection and its tickets here, 17 descriptors); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft


def fit_to_descriptors(limits: Limits, relay: RelayLimits, files: int) -> tuple[Limits, RelayLimits]:
    """The caps of what anyone may hold without a secret, lowered to fit the descriptors we
    have: unauthenticated connections may take a quarter of them on the control port and an
    eighth on the relay port, relayed pairs (six each: two sockets, a pipe per direction) a
    quarter, so the rest stays for agents."""
    fitted = dataclasses.replace(limits, unauthenticated=min(limits.unauthenticated, max(8, files // 4)))
    fitted_relay = dataclasses.replace(relay, unauthenticated=min(relay.unauthenticated, max(8, files // 8)),
                                       pairs=min(relay.pairs, max(4, files // 24)))
    if (fitted, fitted_relay) != (limits, relay):
        log.warning("with %d open files at most: at most %d unauthenticated connections (relay: %d) and %d "
                    "relayed pairs; raise the limit (LimitNOFILE, ulimit -n) for more", files,
                    fitted.unauthenticated, fitted_relay.unauthenticated, fitted_relay.pairs)
    return fitted, fitted_relay


async def serve(host: str, port: int, secret: bytes, prefix: str, ready_file: str | None = None,
                relay_port: int | None = None, embedded_relay: bool = True,
                metrics: tuple[str, int] | None = None, timeouts: Timeouts | None = None,
                limits: Limits | None = None, relay_limits: RelayLimits | None = None) -> None:
    """Serve until SIGINT/SIGTERM. relay_port: the relay and NAT-probe port (default port + 1);
    with embedded_relay False a separate `boxer relay` serves it (and relayed connections then
    survive a restart of the coordinator). timeouts: heartbeat interval, quiet limit and the rest;
    limits, relay_limits: what anyone may make the coordinator and the relay hold."""
    loop = asyncio.get_running_loop()
    files = raise_descriptor_limit()
    limits, relay_limits = fit_to_descriptors(limits or Limits(), relay_limits or RelayLimits(), files)
    refusals = Refusals()
    relay = RelayServer(secret, relay_limits, refusals)
    relay_port = relay_port_of(port) if relay_port is None else relay_port
    relay_bound = await relay.start(host, relay_port) if embedded_relay else relay_port
    server = CoordinatorServer(Broker(secret, prefix=prefix, relay_port=relay_bound, timeouts=timeouts or Timeouts(),
                                      limits=limits, refusals=refusals))
    listener = await loop.create_server(lambda: _PeerProtocol(server), host, port,
                                        reuse_address=True, backlog=1024)
    bound = listener.sockets[0].getsockname()
    metrics_server = None
    if metrics is not None:
        from boxer.nat_traversal.metrics import render, serve_metrics

        metrics_server = await serve_metrics(
            metrics[0], metrics[1], lambda: render(server.broker, relay.stats if embedded_relay else None, refusals))
    log.info("coordinator listening on %s:%d, relay on port %d (overlay prefix %s, %d open files at most)",
             bound[0], bound[1], relay_bound, prefix, files)
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


async def serve_relay(host: str, port: int, secret: bytes, limits: RelayLimits | None = None) -> None:
    """A stand-alone relay (`boxer relay`), until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    _, limits = fit_to_descriptors(Limits(), limits or RelayLimits(), raise_descriptor_limit())
    relay = RelayServer(secret, limits)
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
