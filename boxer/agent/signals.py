"""What the agent observes of its application, without its cooperation: open overlay
connections, CPU and memory, idleness. Sent to the coordinator as a Report every second."""

from __future__ import annotations

import os
import socket
import time

import psutil

from boxer.agent import sockdiag

# /proc/net/tcp states of a connection the app still holds: ESTABLISHED, SYN_SENT, SYN_RECV,
# FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, CLOSING, LAST_ACK (not TIME_WAIT, CLOSE, LISTEN).
OPEN_STATES = {f"{state:02X}" for state in sockdiag.OPEN_STATES}


def open_local_ports() -> set[int]:
    """Local ports of this network namespace's open IPv4 TCP connections.

    Asked of the kernel with sock_diag (boxer.agent.sockdiag: no walk of the whole table); the
    text table where netlink is not available. psutil.net_connections() would also
    map every socket to its process by scanning all of /proc/*/fd, which stalled the agent's
    event loop for tens of milliseconds once a second."""
    from boxer.agent.features import current

    if not current().sock_diag:
        return read_open_ports()
    try:
        return sockdiag.open_tcp_ports()
    except OSError:
        return read_open_ports()


def read_open_ports(path: str = "/proc/net/tcp") -> set[int]:
    """open_local_ports() from the text table (/proc/net/tcp format)."""
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


# /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN): present in Debian's and Lambda's kernels.
HAS_CHILDREN_FILES = os.path.exists("/proc/thread-self/children")


def descendant_pids(pid: int) -> list[int]:
    """The pids below `pid`, read from its threads' `children` files: a few small reads, where
    psutil's children() reads the stat file of every process on the machine (~6 ms in a lab of
    a hundred processes, once a second per agent)."""
    if not HAS_CHILDREN_FILES:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    found: list[int] = []
    parents = [pid]
    while parents:
        parent = parents.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # exited meanwhile
        for tid in threads:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    children = [int(child) for child in f.read().split()]
            except OSError:
                continue
            found += children
            parents += children
    return found


class ProcessSampler:
    """CPU (percent of one CPU) and resident memory of the app and all its descendants."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._procs: dict[int, psutil.Process] = {}

    def sample(self) -> tuple[float, int]:
        try:
            pids = [self._pid, *descendant_pids(self._pid)]
        except psutil.Error:
            return 0.0, 0
        cpu, rss = 0.0, 0
        seen = {}
        for pid in pids:
            try:
                # The same object each time: cpu_percent() measures since its previous call.
                proc = self._procs.get(pid) or psutil.Process(pid)
                seen[pid] = proc
                cpu += proc.cpu_percent(interval=None)
                rss += proc.memory_info().rss
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
