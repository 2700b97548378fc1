"""What the agent observes of its app without its cooperation: open connections (sock_diag, and
the /proc/net/tcp fallback), the process tree, CPU and memory. Real sockets and processes."""

from __future__ import annotations

import errno
import socket
import struct
import subprocess
import sys
import time

import psutil
import pytest

from boxer.agent import sockdiag
from boxer.agent.signals import ConnectionTracker, ProcessSampler, descendant_pids, open_local_ports, read_open_ports


@pytest.fixture
def loopback_pair():
    """A listener and one connection to it, all on loopback: (listener, client, server side)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    yield listener, client, server
    for sock in (client, server, listener):
        sock.close()


def test_open_ports_are_the_connections_not_the_listeners(loopback_pair):
    listener, client, _server = loopback_pair
    idle_listener = socket.create_server(("127.0.0.1", 0))
    try:
        ports = open_local_ports()
        assert client.getsockname()[1] in ports
        assert listener.getsockname()[1] in ports  # the accepted side's local port
        assert idle_listener.getsockname()[1] not in ports  # LISTEN is not a connection
    finally:
        idle_listener.close()


def test_sock_diag_and_the_text_table_agree(loopback_pair):
    _listener, client, _server = loopback_pair
    ours = {client.getsockname()[1]}
    assert ours <= sockdiag.open_tcp_ports()
    assert ours <= read_open_ports()


def test_a_closed_connection_is_no_longer_counted(loopback_pair):
    _listener, client, server = loopback_pair
    tracker = ConnectionTracker()
    tracker.handed(client)
    assert tracker.count_open() == 1
    port = client.getsockname()[1]
    # We close first: our side goes to TIME_WAIT (not held by anyone), theirs to CLOSE_WAIT.
    client.close()
    server.close()
    deadline = time.monotonic() + 2
    while port in open_local_ports() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tracker.count_open() == 0


def test_parse_reads_ports_and_stops_at_done():
    header = struct.Struct("=IHHII")
    msg = bytes([socket.AF_INET, 1, 0, 0]) + struct.pack("!HH", 40000, 80) + bytes(64)
    data = header.pack(header.size + len(msg), sockdiag.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + msg
    ports: set[int] = set()
    assert sockdiag.parse(data, ports) is False
    assert ports == {40000}
    assert sockdiag.parse(header.pack(header.size + 4, sockdiag.NLMSG_DONE, 2, 1, 0) + bytes(4), ports)


def test_parse_raises_the_kernels_error():
    header = struct.Struct("=IHHII")
    data = header.pack(header.size + 4, sockdiag.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -errno.EINVAL)
    with pytest.raises(OSError) as caught:
        sockdiag.parse(data, set())
    assert caught.value.errno == errno.EINVAL


def test_parse_refuses_a_malformed_length():
    data = struct.Struct("=IHHII").pack(3, sockdiag.SOCK_DIAG_BY_FAMILY, 0, 1, 0)
    with pytest.raises(OSError, match="malformed"):
        sockdiag.parse(data, set())


def wait_for_descendants(proc: subprocess.Popen, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(descendant_pids(proc.pid)) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def kill_tree(proc: subprocess.Popen) -> None:
    """A test's process and everything it started (only pids below it)."""
    for pid in descendant_pids(proc.pid):
        psutil.Process(pid).kill()
    proc.kill()
    proc.wait()


def test_descendants_include_grandchildren_and_match_psutil():
    # A shell whose child outlives nothing: sh -> sleep (and a second level: sh -> sh -> sleep).
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & sh -c 'sleep 30 & wait' & wait"])
    try:
        wait_for_descendants(proc, 3)
        ours = sorted(descendant_pids(proc.pid))
        theirs = sorted(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
        assert len(ours) == 3
        assert ours == theirs
    finally:
        kill_tree(proc)


def test_descendants_of_a_gone_process_are_none():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert descendant_pids(proc.pid) == []


def test_sampler_sees_a_busy_grandchild():
    code = "import subprocess,sys; subprocess.run([sys.executable,'-c','while True: pass'])"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        sampler = ProcessSampler(proc.pid)
        wait_for_descendants(proc, 1)
        sampler.sample()  # the first sample of a process only starts its clock
        time.sleep(0.5)
        cpu, rss = sampler.sample()
        assert cpu > 10.0  # a spinning process: near 100 % of a CPU, unless the machine is starved
        assert rss > 1_000_000
    finally:
        kill_tree(proc)


def test_sampler_of_a_gone_process_reports_nothing():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert ProcessSampler(proc.pid).sample() == (0.0, 0)
