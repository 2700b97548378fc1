"""`boxer logs` of a vm instance on the lambda-local backend's vm tier: its output stays on its vm
host (a public lab host running `boxer host serve`, the stand-in for an EC2 vm host), and the
controller reads it from that host's daemon (the `logs` request), as on AWS. The lines carry the
instance's name; `-f` shows a line the app writes after the command started."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import labkit
import pytest

BOXER = [sys.executable, "-m", "boxer"]
pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    pytest.skip("deployment lab tests need root (network namespaces, iptables)", allow_module_level=True)
if importlib.util.find_spec("awslambdaric") is None:
    pytest.skip("awslambdaric is not installed (pip install '.[test]')", allow_module_level=True)

DEPLOY = """
name: {name}
services:
  tick:
    command: [sh, -c, 'python3 -m http.server 8080 >/dev/null 2>&1 & echo vm-hello-1; echo vm-hello-2; while true; do if [ -e {flag} ]; then rm -f {flag};
                       echo vm-new-line; fi; sleep 0.1; done']
    placement: vm
"""


def test_boxer_logs_reads_a_vm_instance_from_its_host_daemon_and_follows_it(tmp_path):
    from boxer.controller.paths import DeployPaths

    name = f"vl{os.getpid() % 100000}"
    flag = tmp_path / "write-one"
    (tmp_path / "deploy.yaml").write_text(DEPLOY.format(name=name, flag=flag))
    up = subprocess.run([*BOXER, "up", "--detach", "--backend", "lambda-local", str(tmp_path / "deploy.yaml")],
                        capture_output=True, text=True, timeout=150)
    follower = None
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        labkit.wait_for("the vm instance ready", lambda: any(
            i["state"] == "ready" for i in labkit.control_status(name)["instances"]), timeout=60)
        (instance,) = labkit.control_status(name)["instances"]
        assert instance["placement"] == "vm" and instance["host"].startswith("p"), instance
        # The controller holds no log file of it: the index names its host daemon and its ref.
        index = [json.loads(line) for line in (DeployPaths(name).instances / "index.jsonl").read_text().splitlines()]
        start = next(e for e in index if e["kind"] == "start")
        assert "log" not in start and start["daemon"].endswith(":7100") and start["ref"].startswith("tick-1."), start
        logs = subprocess.run([*BOXER, "logs", "--name", name, "-o", "json", "tick-1"], capture_output=True,
                              text=True, timeout=30)
        assert logs.returncode == 0, logs.stderr
        lines = [json.loads(line) for line in logs.stdout.splitlines()]
        output = [(line["instance"], line["text"]) for line in lines if line["kind"] == "output"]
        assert ("tick-1", "vm-hello-1") in output and ("tick-1", "vm-hello-2") in output, logs.stdout
        text = subprocess.run([*BOXER, "logs", "--name", name, "tick"], capture_output=True, text=True, timeout=30)
        assert text.returncode == 0 and "tick-1" in text.stdout and "vm-hello-2" in text.stdout, text.stdout
        # -f: a line the app writes now reaches the follower.
        follower = subprocess.Popen([*BOXER, "logs", "--name", name, "-f", "tick-1"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        assert follower.stdout is not None
        seen = []
        while "vm-hello-2" not in "".join(seen):
            seen.append(follower.stdout.readline())
            assert seen[-1], follower.stderr.read() if follower.stderr else ""
        flag.touch()
        written = time.monotonic()
        while "vm-new-line" not in seen[-1]:
            seen.append(follower.stdout.readline())
            assert seen[-1] and time.monotonic() - written < 20, seen
        print(f"a new vm line reached boxer logs -f after {time.monotonic() - written:.2f} s")
        assert "tick-1" in seen[-1], seen[-1]
    finally:
        if follower is not None:
            follower.terminate()
            follower.communicate(timeout=10)
        labkit.deployment_down(name)
