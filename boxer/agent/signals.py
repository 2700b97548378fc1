"""What the agent observes of its application, without its cooperation: open overlay
connections, CPU and memory, idleness. Sent to the coordinator as a Report every second."""

from __future__ import annotations

import socket
import time

import psutil

# /proc/net/tcp states of a connection the app still holds: ESTABLISHED, SYN_SENT, SYN_RECV,
# FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, CLOSING, LAST_ACK (not TIME_WAIT, CLOSE, LISTEN).
OPEN_STATES = {"01", "02", "03", "04", "05", "08", "0B", "09"}


def open_local_ports(path: str = "/proc/net/tcp") -> set[int]:
    """Local ports of this network namespace's open IPv4 TCP connections.

    Read straight from the kernel's table: psutil.net_connections() also maps every socket to
    its process by scanning all of /proc/*/fd, which stalled the agent's event loop for tens of
    milliseconds once a second."""
    ports = set()
    with open(path) as table:
        next(table, None)
        for line in table:
            fields = line.split(None, 4)
            if len(fields) > 3 and fields[3] in OPEN_STATES:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class ConnectionTracker:
    """Counts the overlay connections we handed to the app that are still open.

    We never see the app close a socket (read/write/close of connected sockets are not ours), so
    we look the connections up by their local port in the kernel's table once per report."""

    def __init__(self) -> None:
        self._ports: set[int] = set()

    def handed(self, sock: socket.socket) -> None:
        try:
            self._ports.add(sock.getsockname()[1])
        except OSError:
            pass

    def handed_port(self, local_port: int) -> None:
        """A connection the fast path handed over, known by its local port."""
        if local_port:
            self._ports.add(local_port)

    def count_open(self, live: set[int] | None = None) -> int:
        """How many handed connections are still open; `live` from open_local_ports() (read
        off the event loop: the kernel's table takes milliseconds to read)."""
        if not self._ports:
            return 0
        if live is None:
            try:
                live = open_local_ports()
            except OSError:
                return len(self._ports)
        self._ports &= live
        return len(self._ports)


class ProcessSampler:
    """CPU (percent of one CPU) and resident memory of the app and all its descendants."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._procs: dict[int, psutil.Process] = {}

    def sample(self) -> tuple[float, int]:
        try:
            root = psutil.Process(self._pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0, 0
        cpu, rss = 0.0, 0
        seen = {}
        for proc in tree:
            known = self._procs.get(proc.pid, proc)
            seen[proc.pid] = known
            try:
                cpu += known.cpu_percent(interval=None)  # since the previous sample of this process
                rss += known.memory_info().rss
            except psutil.Error:
                pass
        self._procs = seen
        return cpu, rss


class IdleClock:
    """Seconds since the app last had a connection open or used CPU."""

    def __init__(self, cpu_threshold: float = 2.0) -> None:
        self._busy_at = time.monotonic()
        self._threshold = cpu_threshold

    def observe(self, active: int, cpu: float) -> float:
        now = time.monotonic()
        if active > 0 or cpu > self._threshold:
            self._busy_at = now
        return now - self._busy_at
