"""Heartbeats in the lab: an agent that stops (SIGSTOP, as a hung or frozen instance) is reported
quiet by the coordinator and replaced by the controller within a second of the stop, while the
instance beside it, busy serving, is left alone.

Measured from the SIGSTOP to the controller's decision as its timeline records it (each tick
line carries the wall time and the decisions taken in it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    minInstances: 2
    maxInstances: 2
"""
DETECT_WITHIN = 1.0  # seconds from the stop to the decision: the bound


def status(name: str) -> dict:
    from boxer.controller.paths import DeployPaths, read_json

    return read_json(DeployPaths(name).status) or {}


def wait_for(what: str, predicate, timeout: float = 30.0):
    return labkit.wait_for(what, predicate, timeout, interval=0.02)  # decisions are timed to 20 ms


def decisions_since(name: str, since: float) -> list[tuple[float, dict]]:
    from boxer.controller.paths import DeployPaths

    rows = [json.loads(line) for line in DeployPaths(name).timeline.read_text().splitlines() if line]
    return [(row["t"], d) for row in rows if row["t"] >= since for d in row["decisions"]]


def test_a_stopped_agent_is_replaced_within_a_second_and_its_neighbour_is_not(tmp_path):
    name = f"hb{os.getpid() % 100000}"
    (tmp_path / "deploy.yaml").write_text(DEPLOY.format(name=name))
    up = subprocess.run([*BOXER, "up", "--detach", str(tmp_path / "deploy.yaml")],
                        capture_output=True, text=True, timeout=120)
    stopped_pid = None
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        ready = wait_for("both instances ready", lambda: (rows := [
            i for i in status(name).get("instances", []) if i["state"] == "ready"]) and len(rows) == 2 and rows)
        victim = next(i for i in ready if i["name"] == "api-1")
        neighbour = next(i for i in ready if i["name"] == "api-2")
        time.sleep(2.0)  # a few report and beat rounds in steady state: nothing may happen
        assert decisions_since(name, 0) and all(d["kind"] == "start" for _, d in decisions_since(name, 0))

        stopped_pid = victim["pid"]  # the agent (`boxer run`); its app keeps running
        stopped_at = time.time()
        os.kill(stopped_pid, signal.SIGSTOP)
        decided = wait_for("the controller's decision", lambda: [
            (t, d) for t, d in decisions_since(name, stopped_at)
            if d["kind"] == "stop" and d["instance"].startswith("api-1.")], timeout=10)
        (decided_at, stop), = decided
        took = decided_at - stopped_at
        print(f"SIGSTOP -> controller's decision: {took:.3f} s ({stop['reason']})")
        assert "quiet" in stop["reason"], stop
        assert took <= DETECT_WITHIN, f"detected {took:.3f} s after the stop: {stop}"
        starts = [d for _, d in decisions_since(name, stopped_at) if d["kind"] == "start"]
        assert starts and starts[0]["reason"].startswith("replace api-1: agent quiet"), starts

        new = wait_for("a ready replacement", lambda: next(
            (i for i in status(name).get("instances", []) if i["name"] == "api-1"
             and i["instance_id"] != victim["instance_id"] and i["state"] == "ready"), None))
        print(f"SIGSTOP -> replacement ready: {time.time() - stopped_at:.2f} s")
        assert new["pid"] != victim["pid"]
        # The stopped agent was resumed to act on its SIGTERM, and is gone.
        wait_for("the stopped agent to exit", lambda: not Path(f"/proc/{stopped_pid}").exists()
                 or b"boxer" not in Path(f"/proc/{stopped_pid}/cmdline").read_bytes(), timeout=10)
        stopped_pid = None
        # Its neighbour, beating all along, was never touched.
        assert not [d for _, d in decisions_since(name, 0)
                    if d["kind"] != "start" and d["instance"] == neighbour["id"]]
        assert any(i["instance_id"] == neighbour["instance_id"] and i["state"] == "ready"
                   for i in status(name)["instances"])
    finally:
        if stopped_pid is not None:
            try:
                os.kill(stopped_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        labkit.deployment_down(name)
