"""The lab's link emulator: delay, jitter and loss applied in user space through NFQUEUE.

Why not tc netem: kernels built without CONFIG_NET_SCH_NETEM (this project's CI machines among
them) have no netem at all, while NFQUEUE (nfnetlink_queue + the xt NFQUEUE target) is common.
So the hop after each shaped endpoint gets one iptables rule (`_shaping.py` says where and
why there, never in the sender's own namespace),

    router of h<i>:   -t mangle -A POSTROUTING -o bx-up -j NFQUEUE --queue-num 0
    internet:         -t mangle -A FORWARD -m physdev --physdev-in bx-p<k> -j NFQUEUE --queue-num k
                      (and bx-c, queue 0, for the coordinator)

and this daemon (one per lab, started inside the lab's internet namespace) holds every queued
packet's verdict: it answers DROP at once for a lost packet and ACCEPT when the packet's delay
is over. The kernel keeps the packet; only ~100 bytes of metadata per packet cross to user
space (copy mode META). The kernel segments GSO buffers before queueing them, so loss and delay
apply per wire packet, not per 64 kB burst.

Its netlink sockets are opened inside each of those namespaces from a short-lived thread
(`_netns.in_thread`, the same trick the topology code uses), one per namespace, bound to every
queue number used there, so one process serves the whole lab. It reads the links from lab.json
at start and on SIGHUP, then writes the reload count to `shaper.ready` so that `Lab.set_link` can
wait for the change to be live.

Run as: python -m boxer.lab._shaper LAB_NAME
"""

from __future__ import annotations

import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxer.lab import _netns, _shaping
from boxer.lab._conditions import LinkConditions
from boxer.lab._plan import COORDINATOR_HOST, lab_plan

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NF_DROP = 0
NF_ACCEPT = 1
QUEUE_MAXLEN = 100_000  # packets held at once per namespace; beyond it the kernel drops

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_NLATTR = struct.Struct("=HH")


def _attr(kind: int, payload: bytes) -> bytes:
    padded = payload + b"\0" * (-len(payload) % 4)
    return _NLATTR.pack(_NLATTR.size + len(payload), kind) + padded


def _message(msg_type: int, attrs: bytes, queue: int, seq: int = 0) -> bytes:
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, queue) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg_type
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def verdict_message(queue: int, packet_id: int, verdict: int) -> bytes:
    return _message(NFQNL_MSG_VERDICT,
                    _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id)), queue)


def packet_ids(data: bytes) -> list[tuple[int, int]]:
    """(queue number, packet id) of each NFQNL_MSG_PACKET message in one netlink datagram."""
    ids = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            queue = _NFGENMSG.unpack_from(data, offset + _NLMSGHDR.size)[2]
            pos = offset + _NLMSGHDR.size + _NFGENMSG.size
            end = offset + length
            while pos + _NLATTR.size <= end:
                alen, atype = _NLATTR.unpack_from(data, pos)
                if alen < _NLATTR.size:
                    break
                if atype & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append((queue, struct.unpack_from("!I", data, pos + _NLATTR.size)[0]))
                    break
                pos += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return ids


def _runs_in(netns: str) -> bool:
    """Whether this process (its main thread) is inside namespace `netns`."""
    ours = os.stat(f"/proc/{os.getpid()}/ns/net")
    st = os.stat(_netns.netns_path(netns))
    return (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino)


def open_queue(netns: str) -> socket.socket:
    """A netlink socket inside `netns`, not yet bound to a queue (`bind_queue`)."""

    def body() -> socket.socket:
        if not _runs_in(netns):  # the internet namespace is the shaper's own
            _netns._enter(netns)
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)

    sock = _netns.in_thread(body)
    sock.bind((0, 0))
    try:  # Root may exceed rmem_max; a burst of queued packets must not overflow the socket.
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    sock.setblocking(False)
    return sock


def bind_queue(sock: socket.socket, queue: int) -> None:
    """Make `sock` the listener of NFQUEUE `queue` of its namespace, in metadata-only mode."""
    for attrs in (
        _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)),
        _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)),
        _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN)),
    ):
        sock.send(_message(NFQNL_MSG_CONFIG, attrs, queue))


@dataclass
class Shape:
    delay: float  # seconds, one way
    jitter: float  # seconds, +- uniform
    loss: float  # probability


Queue = tuple[str, int]  # (namespace, NFQUEUE number)


def read_shapes(state_file: Path) -> dict[Queue, Shape]:
    """{queue: Shape} for every endpoint with a non-clean link in lab.json."""
    data: dict[str, Any] = json.loads(state_file.read_text())
    plan = lab_plan(data["name"], int(data["host_count"]), public=int(data["public_count"]))
    links = {COORDINATOR_HOST: data.get("coordinator_link")}
    links.update({host["name"]: host.get("link") for host in data.get("hosts", [])})
    shapes = {}
    for endpoint in plan.endpoint_names():
        link = LinkConditions.from_description(links.get(endpoint))
        if not link.clean:
            shapes[_shaping.queue_of(plan, endpoint)] = Shape(
                link.rtt / 2000, link.jitter / 2000, link.loss / 100)
    return shapes


CLEAN = Shape(0.0, 0.0, 0.0)


class Shaper:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.sockets: dict[str, socket.socket] = {}  # one per namespace
        self.bound: set[Queue] = set()
        self.shapes: dict[Queue, Shape] = {}
        self.by_fd: dict[int, tuple[str, socket.socket]] = {}
        self.pending: list[tuple[float, int, int, int, int]] = []  # (due, seq, fd, queue, id)
        self.seq = 0
        self.reloads = 0
        self.reload_wanted = True
        self.stop = False
        # Signals wake select() through this pair (PEP 475 would otherwise retry the wait).
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)

    def reload(self) -> None:
        self.shapes = read_shapes(self.state_dir / "lab.json")
        for netns, queue in self.shapes:
            if netns not in self.sockets:
                sock = open_queue(netns)
                self.sockets[netns] = sock
                self.by_fd[sock.fileno()] = (netns, sock)
            if (netns, queue) not in self.bound:
                bind_queue(self.sockets[netns], queue)
                self.bound.add((netns, queue))
        # Queues of links that became clean stay bound: their rule is gone, nothing arrives,
        # and packets still held keep their release time.
        self.reloads += 1
        ready = self.state_dir / "shaper.ready"
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(f"{self.reloads}\n")
        os.replace(tmp, ready)

    def receive(self, fd: int, now: float) -> None:
        netns, sock = self.by_fd[fd]
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            for queue, packet_id in packet_ids(data):
                shape = self.shapes.get((netns, queue), CLEAN)
                if shape.loss and random.random() < shape.loss:
                    sock.send(verdict_message(queue, packet_id, NF_DROP))
                    continue
                due = now + shape.delay
                if shape.jitter:
                    due += random.uniform(-shape.jitter, shape.jitter)
                if due <= now:
                    sock.send(verdict_message(queue, packet_id, NF_ACCEPT))
                    continue
                self.seq += 1
                heapq.heappush(self.pending, (due, self.seq, fd, queue, packet_id))

    def release(self, now: float) -> None:
        while self.pending and self.pending[0][0] <= now:
            _, _, fd, queue, packet_id = heapq.heappop(self.pending)
            self.by_fd[fd][1].send(verdict_message(queue, packet_id, NF_ACCEPT))

    def run(self) -> None:
        while not self.stop:
            if self.reload_wanted:
                self.reload_wanted = False
                self.reload()
            timeout = 1.0
            if self.pending:
                timeout = max(0.0, self.pending[0][0] - time.monotonic())
            try:
                readable, _, _ = select.select([*self.by_fd, self.wake_r.fileno()], [], [],
                                               timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries; signals set flags
                readable = []
            now = time.monotonic()
            for fd in readable:
                if fd == self.wake_r.fileno():
                    try:
                        self.wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                else:
                    self.receive(fd, now)
            self.release(time.monotonic())


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m boxer.lab._shaper STATE_DIR", file=sys.stderr)
        return 2
    shaper = Shaper(Path(argv[0]))  # before the handlers: it sets the wakeup fd

    def on_hup(signum: int, frame: object) -> None:
        shaper.reload_wanted = True

    def on_term(signum: int, frame: object) -> None:
        shaper.stop = True

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    shaper.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
