"""An idle-connection flood against a lab coordinator with few descriptors, while new instances
still register and connect (issue 14: before the limits, 240 idle connections against a limit of
200 descriptors kept agents from logging in until the attacker left, and the relay's accept loop
died on its first EMFILE)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from labkit import boxer_run, stop_all, wait_serving

APPS = Path(__file__).parent / "apps"
pytestmark = pytest.mark.lab

# Holds `count` idle connections to each target, opening a new one whenever one is closed, for
# `seconds`; then says how many it held at the end and how many the coordinator closed.
FLOOD = textwrap.dedent("""
    import json, selectors, socket, sys, time
    targets = [(h, int(p)) for h, p in (t.rsplit(":", 1) for t in sys.argv[1].split(","))]
    count, seconds = int(sys.argv[2]), float(sys.argv[3])
    sel = selectors.DefaultSelector()
    closed = {t: 0 for t in targets}
    def open_one(target):
        s = socket.socket(); s.setblocking(False)
        try:
            s.connect_ex(target)
            sel.register(s, selectors.EVENT_READ, target)
        except OSError:
            s.close()
    for t in targets:
        for _ in range(count):
            open_one(t)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in sel.select(0.2):
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if not data:  # closed by the far side: come back at once
                sel.unregister(key.fileobj); key.fileobj.close()
                closed[key.data] += 1
                open_one(key.data)
    print(json.dumps({"held": len(sel.get_map()), "closed": {f"{h}:{p}": n for (h, p), n in closed.items()}}))
""")


def test_an_idle_flood_with_few_descriptors_does_not_lock_agents_out(lab_factory):
    coordinator = ["prlimit", "--nofile=200:200", sys.executable, "-m", "boxer", "coordinator"]
    lab = lab_factory(hosts=3, coordinator_cmd=coordinator)
    host, port = lab.coordinator.rsplit(":", 1)
    relay = f"{host}:{int(port) + 1}"
    procs: list[subprocess.Popen] = []
    try:
        flood = lab.popen("h3", [sys.executable, "-c", FLOOD, f"{lab.coordinator},{relay}", "300", "40"],
                          stdout=subprocess.PIPE, text=True)
        procs.append(flood)
        time.sleep(3.0)  # the flood is in place before any agent comes
        t0 = time.monotonic()
        procs.append(lab.popen("h1", boxer_run("echo", sys.executable, str(APPS / "echo_server.py"), "7777")))
        wait_serving(lab, "h2", "echo", 7777, timeout=30)
        served_after = time.monotonic() - t0
        assert flood.poll() is None, "the flood ended before the agents were served: it proved nothing"
        result = json.loads(flood.communicate(timeout=60)[0])
        log = lab.coordinator_log.read_text()
    finally:
        stop_all(procs)
    print(f"registered and connected {served_after:.1f} s into the flood; flood: {result}")
    assert result["held"] > 0
    # The coordinator kept shedding the attacker on both ports (first-frame deadline, caps),
    assert result["closed"][lab.coordinator] > 300 and result["closed"][relay] > 300, result
    assert "refused (unauthenticated" in log or "refused (first-frame-deadline)" in log
    # and never lost a port: its relay still answers a NAT probe.
    probe = lab.run("h2", [sys.executable, "-m", "boxer", "probe-nat", "-o", "json"], capture_output=True,
                    text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert "Traceback" not in log
