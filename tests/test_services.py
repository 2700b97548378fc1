"""Services in the lab: names that resolve with no instance, per-connection balancing, scale from
zero (a held connect completes once an instance listens), signals, and draining."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labkit import stop_all

APPS = Path(__file__).parent / "apps"
BOXER = [sys.executable, "-m", "boxer"]
pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    pytest.skip("lab tests need root (network namespaces, iptables)", allow_module_level=True)


def run_app(lab, host, name, *argv, service=None, timeout=60):
    extra = ["--service", service] if service else []
    return lab.run(host, [*BOXER, "run", "--name", name, *extra, "--", *argv],
                   capture_output=True, text=True, timeout=timeout)


def events(proc: subprocess.Popen) -> list[dict]:
    out, _ = proc.communicate(timeout=60)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


class LabWithProcs:
    """The lab, plus the processes a test started in it (stopped by the fixture)."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.procs: list[subprocess.Popen] = []

    def __getattr__(self, name):
        return getattr(self.lab, name)


@pytest.fixture
def lab():
    from boxer.lab import lab_down, lab_up

    name = f"sv{os.getpid() % 100000}"
    lab = LabWithProcs(lab_up(name, hosts=4))
    try:
        yield lab
    finally:
        stop_all(lab.procs)
        lab_down(name)


def start(lab, host, name, *argv, service=None):
    extra = ["--service", service] if service else []
    proc = lab.popen(host, [*BOXER, "run", "--name", name, *extra, "--", *argv],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(proc)
    return proc


def test_scale_from_zero_holds_the_connect_until_an_instance_listens(lab):
    watcher = lab.popen("coord", [sys.executable, str(APPS / "watcher.py"), "--declare", "api=10", "--seconds", "8"],
                        stdout=subprocess.PIPE, text=True)
    lab.procs.append(watcher)
    time.sleep(1.0)
    client = lab.popen("h2", [*BOXER, "run", "--name", "caller", "--", sys.executable, str(APPS / "client.py"),
                              "connect", "api", "8080", "15"], stdout=subprocess.PIPE, text=True)
    lab.procs.append(client)
    time.sleep(2.0)  # the connect is now held by the coordinator (its client took ~0.5 s to start); start an instance "in response"
    started = time.monotonic()
    start(lab, "h1", "api-1", sys.executable, "-m", "http.server", "8080", service="api")
    result = json.loads(client.communicate(timeout=30)[0])
    assert result["errno"] is None, result
    assert result["seconds"] > 1.0  # it really waited for the instance
    assert time.monotonic() - started < 5.0
    seen = events(watcher)
    kinds = [e["t"] for e in seen]
    assert "demand" in kinds
    demand = next(e for e in seen if e["t"] == "demand")
    assert (demand["service"], demand["port"]) == ("api", 8080)
    up = next(e for e in seen if e["t"] == "instance_up" and e["name"] == "api-1")
    assert (up["name"], up["service"]) == ("api-1", "api")
    reports = [e for e in seen if e["t"] == "instance_report" and e["name"] == "api-1"]
    assert any(8080 in r["report"]["listening"] for r in reports)


def test_each_new_connection_to_a_service_is_balanced_across_its_instances(lab):
    for host, name in (("h1", "web-1"), ("h3", "web-2"), ("h4", "web-3")):
        start(lab, host, name, sys.executable, str(APPS / "echo_server.py"), "7777", service="web")
    deadline = time.monotonic() + 20
    while True:  # all three listening and reported
        probe = run_app(lab, "h2", "probe", sys.executable, str(APPS / "client.py"), "resolve", "web")
        if probe.returncode == 0 and "addresses" in probe.stdout:
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    time.sleep(1.5)
    # 30 connections, one at a time, each asking the server its name (PEER reports its hostname)
    script = ("import socket, collections, json\n"
              "seen = collections.Counter()\n"
              "for _ in range(30):\n"
              "    s = socket.create_connection(('web', 7777), timeout=10)\n"
              "    s.sendall(b'PEER\\n'); seen[s.makefile().readline().split()[4]] += 1; s.close()\n"
              "print(json.dumps(seen))\n")
    proc = run_app(lab, "h2", "balancer", sys.executable, "-c", script)
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout)
    assert set(counts) == {"web-1", "web-2", "web-3"}, counts
    assert min(counts.values()) >= 5, counts


def test_a_connect_whose_instance_hangs_while_it_is_set_up_goes_to_another(lab):
    """The app's connect to a service does not wait out its timeout, nor fail, for an instance
    that hung (or died) meanwhile: the coordinator gives the connect up once the instance is
    quiet (0.8 s without a beat) or gone, and the client's agent asks again."""
    import psutil

    start(lab, "h1", "web-1", sys.executable, str(APPS / "echo_server.py"), "7777", service="web")
    frozen = start(lab, "h3", "web-2", sys.executable, str(APPS / "echo_server.py"), "7777",
                   service="web")
    wait_serving = ("import socket, time\n"
                    "for _ in range(200):\n"
                    "    try: socket.create_connection(('web-2', 7777), 1).close(); break\n"
                    "    except OSError: time.sleep(0.1)\n")
    assert run_app(lab, "h2", "probe", sys.executable, "-c", wait_serving).returncode == 0
    time.sleep(1.5)  # both reported, listening: both are picked
    tree = [frozen.pid, *(p.pid for p in psutil.Process(frozen.pid).children(recursive=True))]
    os.kill(frozen.pid, signal.SIGSTOP)  # web-2 hangs: connects routed to it go unanswered
    script = ("import socket, json, time\n"
              "served, slowest = [], 0.0\n"
              "for _ in range(6):\n"
              "    began = time.monotonic()\n"
              "    s = socket.create_connection(('web', 7777), timeout=20)\n"
              "    slowest = max(slowest, time.monotonic() - began)\n"
              "    s.sendall(b'PEER\\n'); served.append(s.makefile().readline().split()[4]); s.close()\n"
              "print(json.dumps({'served': served, 'slowest': slowest}))\n")
    try:
        client = run_app(lab, "h2", "caller", sys.executable, "-c", script)
    finally:
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
    assert client.returncode == 0, client.stderr[-3000:]
    result = json.loads(client.stdout)
    assert result["served"] == ["web-1"] * 6, result
    assert result["slowest"] < 3.0, result  # not the agent's connect timeout


def test_drained_instance_finishes_its_connection_then_stops(lab):
    server = start(lab, "h1", "kv-1", sys.executable, str(APPS / "echo_server.py"), "7777", service="kv")
    time.sleep(2.0)
    watcher = lab.popen("coord", [sys.executable, str(APPS / "watcher.py"), "--seconds", "12", "--drain", "kv-1",
                                  "--grace", "20"], stdout=subprocess.PIPE, text=True)
    lab.procs.append(watcher)
    stream = lab.popen("h2", [*BOXER, "run", "--name", "streamer", "--", sys.executable, str(APPS / "client.py"),
                              "stream", "kv-1", "7777", "4"], stdout=subprocess.PIPE, text=True)
    lab.procs.append(stream)
    streamed = json.loads(stream.communicate(timeout=30)[0])
    assert streamed["ok"] is True  # the drain let the open connection finish
    server.wait(timeout=10)  # ... then the instance stopped by itself
    seen = events(watcher)
    down = [e for e in seen if e["t"] == "instance_down" and e["name"] == "kv-1"]
    assert down, [e["t"] for e in seen]
    final = [e for e in seen if e["t"] == "instance_report" and e["name"] == "kv-1"][-1]
    assert final["report"]["draining"] is True
    assert final["report"]["exited"] is not None
