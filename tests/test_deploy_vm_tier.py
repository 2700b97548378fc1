"""The vm tier on the lambda-local backend: a mixed deployment (a vm base + function burst) where
the vm instance runs on a public lab host through its host daemon (`boxer host serve`, the stand-in
for an EC2 vm host) and the function instance in a lambda-local sandbox behind NAT; clients reach
the service by name; a killed vm instance is replaced on a vm host, through the daemon again."""

from __future__ import annotations

import importlib.util
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
if importlib.util.find_spec("awslambdaric") is None:
    pytest.skip("awslambdaric is not installed (pip install '.[test]')", allow_module_level=True)

DEPLOY = """
name: {name}
services:
  kv:
    command: [redis-server, --port, "6379", --save, "", --protected-mode, "no"]
    placement: function
    baseCapacity: 1
    minInstances: 2
    maxInstances: 2
"""


def _status(name: str) -> dict:
    return labkit.control_status(name)


def _ps() -> str:
    return subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout


def test_mixed_deployment_vm_base_through_host_daemons_and_function_burst(tmp_path):
    from boxer.controller.paths import DeployPaths, read_json

    name = f"vt{os.getpid() % 100000}"
    (tmp_path / "deploy.yaml").write_text(DEPLOY.format(name=name))
    up = subprocess.run([*BOXER, "up", "--detach", "--backend", "lambda-local", str(tmp_path / "deploy.yaml")],
                        capture_output=True, text=True, timeout=150)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        lab = read_json(DeployPaths(name).deployment)["lab"]
        st = labkit.wait_for("both kv instances ready", lambda: (s := _status(name)) and len(
            [i for i in s["instances"] if i["state"] == "ready"]) == 2 and s, timeout=60)
        by_placement = {i["placement"]: i for i in st["instances"]}
        vm, function = by_placement["vm"], by_placement["function"]
        assert vm["host"].startswith("p"), vm  # a public lab host: the vm host's daemon named it
        # The vm instance is the daemon's child, not an invocation; the function one is one.
        ps = _ps()
        daemons = [line for line in ps.splitlines() if "boxer host serve" in line and name in line]
        assert daemons, "no host daemon runs for this lab"
        # A vm host's daemon holds its token, not the deployment secret (its instances' apps run beside it).
        for line in daemons:
            pid = int(line.split()[0])
            assert "--token-file" in line and "secret" not in line, line
            assert b"BOXER_SECRET" not in Path(f"/proc/{pid}/environ").read_bytes()
        parent = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(_ppid(vm["pid"]))], capture_output=True,
                                text=True).stdout
        assert "host serve" in parent, parent
        assert "boxer.backends.emulators.lambda_local" in ps and "awslambdaric" in ps
        assert not function["host"].startswith("p")
        # Clients reach the service by name (both instances behind it).
        labkit.wait_deployed_redis(lab, "kv through the service name", timeout=45)
        # Kill the vm instance's app: the controller hears it and starts a replacement on a vm host.
        app = subprocess.run(["pgrep", "-P", str(vm["pid"])], capture_output=True, text=True).stdout.split()
        assert app, "the vm agent has no app child"
        killed = time.monotonic()
        os.kill(int(app[0]), signal.SIGKILL)
        new = labkit.wait_for("a ready vm replacement", lambda: next(
            (i for i in _status(name)["instances"] if i["placement"] == "vm" and i["state"] == "ready"
             and i["instance_id"] != vm["instance_id"]), None), timeout=45)
        print(f"vm instance killed -> replacement ready on {new['host']}: {time.monotonic() - killed:.2f} s")
        assert new["host"].startswith("p") and new["pid"] != vm["pid"]
        assert "host serve" in subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(_ppid(new["pid"]))],
                                              capture_output=True, text=True).stdout
        labkit.wait_deployed_redis(lab, "kv after the replacement", timeout=30)
    finally:
        labkit.deployment_down(name)
    # boxer down stopped the daemons too (they are the controller's children on this backend).
    assert not [line for line in _ps().splitlines() if "boxer host serve" in line and f"{name}" in line]


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])
