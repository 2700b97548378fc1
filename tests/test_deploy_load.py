"""A load step in the lab: one instance at its target gets three times the load, and the
controller starts a second one from what the agent reports, with no orchestration.

The agent counts the connections it hands to the app and reports soon after they change (not
only once a second), so the step reaches the controller's next tick. Measured from the client's
last connect to the controller's decision as its timeline records it; benchmarks/bench_scaling.py
measures the same up to the new instance listening.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import labkit
import pytest

BOXER = [sys.executable, "-m", "boxer"]
pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    pytest.skip("deployment lab tests need root (network namespaces, iptables)", allow_module_level=True)

DEPLOY = """
name: {name}
services:
  api:
    command: [python3, -m, http.server, "8080"]
    placement: function
    minInstances: 1
    maxInstances: 3
    autoscale:
      metric: activeConnections
      target: 2
      stableWindowSeconds: 20
      panicWindowSeconds: 1
      scaleToZeroGracePeriodSeconds: 600
"""
# Two connections held open (the instance at its target), then four more: prints the time of
# the last connect, and holds them all until killed.
LOAD = """
import json, socket, time
connect = lambda n: [socket.create_connection(("api", 8080), timeout=10) for _ in range(n)]
steady = connect(2)
time.sleep(3)
step = connect(4)
print(json.dumps(time.time()), flush=True)
time.sleep(120)
"""
DECIDE_WITHIN = 0.8  # seconds; a report a second apart would often miss it


def status(name: str) -> dict:
    from boxer.controller.paths import DeployPaths, read_json

    return read_json(DeployPaths(name).status) or {}


def ready(name: str) -> list[dict]:
    return [i for i in status(name).get("instances", []) if i["state"] == "ready"]


def test_a_load_step_starts_a_second_instance_from_the_reported_connections(tmp_path):
    from boxer.controller.paths import DeployPaths, read_json

    name = f"ld{os.getpid() % 100000}"
    (tmp_path / "deploy.yaml").write_text(DEPLOY.format(name=name))
    (tmp_path / "load.py").write_text(LOAD)
    up = subprocess.run([*BOXER, "up", "--detach", str(tmp_path / "deploy.yaml")],
                        capture_output=True, text=True, timeout=120)
    load = None
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        labkit.wait_for("api-1 ready", lambda: len(ready(name)) == 1)
        from boxer.lab import load_lab

        lab = load_lab(read_json(DeployPaths(name).deployment)["lab"])
        # The last NATed host is left to clients (LocalBackend(spare_hosts=1)).
        load = lab.popen(lab.hosts[-1].name, labkit.boxer_run("load", sys.executable, str(tmp_path / "load.py")),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert load.stdout is not None
        line = load.stdout.readline()
        assert line, load.stderr.read() if load.stderr else "the load generator said nothing"
        step = json.loads(line)

        labkit.wait_for("a second instance ready", lambda: len(ready(name)) == 2, timeout=15)
        rows = [json.loads(x) for x in DeployPaths(name).timeline.read_text().splitlines() if x]
        starts = [(row["t"], d) for row in rows if row["t"] >= step for d in row["decisions"]
                  if d["kind"] == "start"]
        assert starts, "no start decision after the step"
        decided_at, start = starts[0]
        print(f"load step -> controller's decision: {decided_at - step:.3f} s ({start['reason']})")
        assert start["reason"].startswith("scale up 1 -> 2"), start
        assert decided_at - step <= DECIDE_WITHIN
        # All six connections went to the one instance there was, and its agent counted them.
        first = next(i for i in ready(name) if i["name"] == "api-1")
        assert first["connections"] == 6, first
    finally:
        if load is not None:
            labkit.stop_all([load])
        labkit.deployment_down(name)
