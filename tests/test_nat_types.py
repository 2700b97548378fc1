"""Every NAT: probe-nat tells the NAT types apart, and connections work across all of them.

h1 sits behind an endpoint-independent NAT (like Lambda), h2 behind a symmetric one (a new public
port per destination, where TCP hole punching cannot work), p1 is a public host (the VM tier).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labkit import stop_all, wait_serving

APPS = Path(__file__).parent / "apps"
BOXER = [sys.executable, "-m", "boxer"]
pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    pytest.skip("lab tests need root (network namespaces, iptables)", allow_module_level=True)


@pytest.fixture(scope="module")
def lab():
    from boxer.lab import lab_down, lab_up

    name = f"nt{os.getpid() % 100000}"
    lab = lab_up(name, hosts=3, nat={"h2": "symmetric"}, public=1)
    procs = []
    try:
        for host, name_ in (("h1", "eim-srv"), ("h2", "sym-srv"), ("p1", "pub-srv")):
            procs.append(lab.popen(host, [*BOXER, "run", "--name", name_, "--", sys.executable,
                                          str(APPS / "echo_server.py"), "7777"]))
        time.sleep(2.0)
        yield lab
    finally:
        stop_all(procs)
        lab_down(name)


def probe(lab, host):
    proc = lab.run(host, [*BOXER, "probe-nat", "-o", "json"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_probe_nat_tells_eim_from_symmetric(lab):
    eim = probe(lab, "h1")
    assert eim["mapping"] == "eim" and eim["port_preserved"] is True
    assert eim["filtering"] == "address-and-port-dependent"  # the lab's routers, like Lambda's NAT
    sym = probe(lab, "h2")
    assert sym["mapping"] == "symmetric"
    assert sym["endpoint_main"] != sym["endpoint_relay"]
    public = probe(lab, "p1")
    assert public["mapping"] == "eim" and public["port_preserved"] is True
    assert public["filtering"] == "endpoint-independent"  # no NAT at all


@pytest.mark.parametrize("client_host, server", [
    ("h3", "eim-srv"),   # eim <-> eim: direct
    ("h3", "sym-srv"),   # eim -> symmetric: relayed
    ("h2", "eim-srv"),   # symmetric -> eim: relayed
    ("h3", "pub-srv"),   # NATed -> public host
    ("p1", "eim-srv"),   # public host -> NATed
])
def test_ten_megabytes_byte_exact_across_every_nat_pair(lab, client_host, server):
    proc = lab.run(client_host, [*BOXER, "run", "--name", f"c-{client_host}-{server}", "--", sys.executable,
                                 str(APPS / "client.py"), "bulk", server, "7777", str(10 * 1024 * 1024)],
                   capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["match"] is True


def test_symmetric_nat_goes_to_the_relay_without_trying_to_punch(lab):
    before = lab.coordinator_log.read_text().count("relay: joined")
    started = time.monotonic()
    proc = lab.run("h3", [*BOXER, "run", "--name", "sym-client", "--", sys.executable, str(APPS / "client.py"),
                          "connect", "sym-srv", "7777"], capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout)["errno"] is None
    # no 1.5 s direct attempt first: the coordinator knew h2's NAT is symmetric
    assert json.loads(proc.stdout)["seconds"] < 1.0
    assert time.monotonic() - started < 10
    assert lab.coordinator_log.read_text().count("relay: joined") > before


def test_lossy_slow_links_redis_and_10_mb_direct_and_relayed():
    """20 ms RTT and 2 % loss on every link (the issue's bar): redis, and bulk on both paths."""
    from boxer.lab import lab_down, lab_up

    name = f"nl{os.getpid() % 100000}"
    lab = lab_up(name, hosts=3, nat={"h2": "symmetric"}, rtt=20, loss=2)
    procs = []
    try:
        procs.append(lab.popen("h1", [*BOXER, "run", "--name", "kv", "--", "redis-server", "--port", "6379",
                                      "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                               stdout=subprocess.DEVNULL))
        procs.append(lab.popen("h2", [*BOXER, "run", "--name", "sym-srv", "--", sys.executable,
                                      str(APPS / "echo_server.py"), "7777"]))
        procs.append(lab.popen("h1", [*BOXER, "run", "--name", "eim-srv", "--", sys.executable,
                                      str(APPS / "echo_server.py"), "7777"]))
        deadline = time.monotonic() + 30
        while True:
            ping = lab.run("h3", [*BOXER, "run", "--name", "cli", "--", "redis-cli", "-h", "kv", "ping"],
                           capture_output=True, text=True, timeout=60)
            if ping.stdout.strip() == "PONG":
                break
            assert time.monotonic() < deadline, ping.stderr
            time.sleep(0.5)
        for server in ("eim-srv", "sym-srv"):
            wait_serving(lab, "h3", server, 7777, timeout=60)
        for server in ("eim-srv", "sym-srv"):
            started = time.monotonic()
            proc = lab.run("h3", [*BOXER, "run", "--name", f"bulk-{server}", "--", sys.executable,
                                  str(APPS / "client.py"), "bulk", server, "7777", str(10 * 1024 * 1024)],
                           capture_output=True, text=True, timeout=240)
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["match"] is True
            print(f"10 MB to {server} over 20 ms / 2 % loss links: {time.monotonic() - started:.1f} s")
    finally:
        stop_all(procs)
        lab_down(name)
