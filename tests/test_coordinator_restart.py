"""The coordinator is soft state: it restarts, and the overlay carries on.

Established connections never pass through it and keep flowing; agents reconnect, re-register
under the same names and addresses, and new connections work again within 2 s of its return.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

APPS = Path(__file__).parent / "apps"
BOXER = [sys.executable, "-m", "boxer"]
pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    pytest.skip("lab tests need root (network namespaces, iptables)", allow_module_level=True)


def test_coordinator_restart_keeps_connections_and_recovers_within_2_s():
    from boxer.lab import lab_down, lab_up

    name = f"cr{os.getpid() % 100000}"
    lab = lab_up(name, hosts=2)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(lab.popen("h1", [*BOXER, "run", "--name", "echo", "--", sys.executable,
                                      str(APPS / "echo_server.py"), "7777"]))
        deadline = time.monotonic() + 15
        while lab.run("h2", [*BOXER, "run", "--name", "probe", "--", sys.executable, str(APPS / "client.py"),
                             "connect", "echo", "7777"], capture_output=True, text=True).stdout.find('"errno": null') < 0:
            assert time.monotonic() < deadline, "echo server did not come up"
            time.sleep(0.2)

        restart_at = time.time() + 2.0
        stream = lab.popen("h2", [*BOXER, "run", "--name", "streamer", "--", sys.executable, str(APPS / "client.py"),
                                  "stream", "echo", "7777", "5"], stdout=subprocess.PIPE, text=True)
        retry = lab.popen("h2", [*BOXER, "run", "--name", "retrier", "--", sys.executable, str(APPS / "client.py"),
                                 "retry_connect", "echo", "7777", str(restart_at), "15"],
                          stdout=subprocess.PIPE, text=True)
        procs += [stream, retry]

        time.sleep(1.0)
        coordinator = lab.processes[0].pid
        os.kill(coordinator, signal.SIGKILL)
        while time.time() < restart_at:
            time.sleep(0.01)
        returned_at = time.time()
        procs.append(lab.popen("coord", [*BOXER, "coordinator", "--listen", lab.coordinator,
                                         "--secret-file", str(lab.secret_file)],
                               stderr=subprocess.DEVNULL))

        streamed = json.loads(stream.communicate(timeout=30)[0])
        assert streamed["ok"] is True, streamed
        assert streamed["bytes"] > 100_000

        retried = json.loads(retry.communicate(timeout=30)[0])
        assert retried["connected_at"] is not None, retried
        recovery = retried["connected_at"] - returned_at
        print(f"new connections work again {recovery:.2f} s after the coordinator's return")
        assert recovery < 2.0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        lab_down(name)
