"""NAT mappings that expire: idle connections kept alive, and a frozen instance that recovers.

The lab's routers here forget an idle mapping after 3 s and never revive one mid-connection
(nf_conntrack_tcp_loose=0), as a strict NAT would. Agents are told (BOXER_NAT_IDLE_TIMEOUT) so
their keepalives, pings and ticket renewals run faster than that.
"""

from __future__ import annotations

import json
import os
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

MAPPING_TIMEOUT = 3


def test_idle_connections_survive_and_a_frozen_instance_recovers_on_thaw():
    from boxer.lab import lab_down, lab_up

    name = f"fz{os.getpid() % 100000}"
    lab = lab_up(name, hosts=2, mapping_timeout=MAPPING_TIMEOUT)
    env = {**os.environ, "BOXER_NAT_IDLE_TIMEOUT": str(MAPPING_TIMEOUT)}
    procs: list[subprocess.Popen] = []

    def client(*args: str, timeout: float = 60) -> dict:
        proc = lab.run("h2", [*BOXER, "run", "--name", f"c{len(procs)}{int(time.time() * 1000) % 100000}", "--",
                              sys.executable, str(APPS / "client.py"), *args],
                       capture_output=True, text=True, timeout=timeout, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    try:
        procs.append(lab.popen("h1", [*BOXER, "run", "--name", "echo", "--", sys.executable,
                                      str(APPS / "echo_server.py"), "7777"], env=env))
        deadline = time.monotonic() + 20
        while client("connect", "echo", "7777")["errno"] is not None:
            assert time.monotonic() < deadline
            time.sleep(0.3)

        # 1. an application connection idle for twice the mapping timeout still works
        assert client("idle", "echo", "7777", str(2 * MAPPING_TIMEOUT)) == {"first": "first", "second": "again"}

        # 2. freeze the server's whole host for longer than the mapping timeout, as Lambda freezes
        lab.freeze("h1")
        time.sleep(3 * MAPPING_TIMEOUT)
        lab.thaw("h1")
        thawed = time.time()
        result = client("retry_connect", "echo", "7777", str(thawed), "15")
        assert result["connected_at"] is not None, result
        recovery = result["connected_at"] - thawed
        print(f"new connections to the thawed instance work {recovery:.2f} s after thaw")
        assert recovery < 5.0
    finally:
        stop_all(procs)
        lab_down(name)
