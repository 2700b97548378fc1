"""`boxer up --backend lambda-local`: the deployment's instances run as local Lambda invocations
(Runtime API + awslambdaric + our handler) inside NATed lab hosts, and serve another instance."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

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
    minInstances: 1
    maxInstances: 1
"""


def test_up_with_lambda_local_serves_redis_from_an_invocation(tmp_path):
    from boxer.controller.paths import DeployPaths, read_json

    name = f"dl{os.getpid() % 100000}"
    (tmp_path / "deploy.yaml").write_text(DEPLOY.format(name=name))
    up = subprocess.run([*BOXER, "up", "--detach", "--backend", "lambda-local", str(tmp_path / "deploy.yaml")],
                        capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        info = read_json(DeployPaths(name).deployment)
        assert info["backend"] == "lambda-local"
        lab = info["lab"]
        labkit.wait_deployed_redis(lab, "the lambda-local instance", timeout=45)
        status = labkit.control_status(name)
        kv = [i for i in status["instances"] if i["service"] == "kv"]
        assert kv and kv[0]["state"] == "ready"
        # the instance really is an invocation: its host runs the local Lambda sandbox
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "boxer.backends.emulators.lambda_local" in ps and "awslambdaric" in ps
    finally:
        labkit.deployment_down(name)
