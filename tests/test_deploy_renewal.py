"""Lifetime renewal in the lab: an instance nearing its maximum lifetime gets its replacement
started first, is drained, then stopped, and a client making new connections all along sees no
failure (what Lambda's 900 s cap demands, here with a 12 s cap); an instance with a declared
name comes back under that name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    minInstances: 1
    maxInstances: 1
    maxLifetimeSeconds: 12
    renewalMarginSeconds: 5
"""

CLIENT = """
import json, sys, time, urllib.request
ok = failed = 0
errors = []
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        with urllib.request.urlopen("http://api:8080/", timeout=5) as r:
            ok += r.status == 200
    except Exception as exc:
        failed += 1
        errors.append(repr(exc)[:120])
    time.sleep(0.05)
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:5]}))
"""


def test_renewal_replaces_an_instance_before_its_lifetime_ends_without_failed_requests(tmp_path):
    from boxer.controller.paths import DeployPaths, read_json

    name = f"rn{os.getpid() % 100000}"
    (tmp_path / "deploy.yaml").write_text(DEPLOY.format(name=name))
    up = subprocess.run([*BOXER, "up", "--detach", str(tmp_path / "deploy.yaml")],
                        capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        info = read_json(DeployPaths(name).deployment)
        lab = info["lab"]
        hosts = int(read_json(Path(f"/run/boxer/lab/{lab}/lab.json"))["host_count"])
        client = subprocess.run([*BOXER, "lab", "exec", "--name", lab, f"h{hosts}", "--", *BOXER, "run", "--name",
                                 "steady", "--", sys.executable, "-c", CLIENT, "22"],
                                capture_output=True, text=True, timeout=120)
        assert client.returncode == 0, client.stderr[-2000:]
        result = json.loads(client.stdout)
        timeline = [json.loads(line) for line in DeployPaths(name).timeline.read_text().splitlines() if line]
        decisions = [d for tick in timeline for d in tick.get("decisions", [])]
        renewals = [d for d in decisions if d["kind"] == "start" and d["reason"].startswith("renew")]
        drained = [d for d in decisions if d["kind"] == "drain"]
        print(f"steady load across {len(renewals)} renewals: {result['ok']} ok, {result['failed']} failed")
        assert len(renewals) >= 1, f"no renewal in 22 s with a 12 s lifetime: {decisions}"
        assert drained, "the renewed instance was never drained"
        assert result["failed"] == 0, result
        assert result["ok"] > 100
    finally:
        labkit.deployment_down(name)


DECLARED = """
name: {name}
services:
  kv:
    command: [python3, -m, http.server, "8080"]
    placement: function
    minInstances: 1
    maxInstances: 1
    hostnames: [kv-a]
    maxLifetimeSeconds: 10
    renewalMarginSeconds: 4
"""


def test_a_declared_host_comes_back_under_its_name_after_its_renewal(tmp_path):
    """Clients know kv-a by name: its renewal drains it, then starts it again as kv-a (not as an
    undeclared kv-2 beside it), and kv-a answers again."""
    from boxer.controller.paths import DeployPaths, read_json

    name = f"rd{os.getpid() % 100000}"
    (tmp_path / "deploy.yaml").write_text(DECLARED.format(name=name))
    up = subprocess.run([*BOXER, "up", "--detach", str(tmp_path / "deploy.yaml")],
                        capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        first = labkit.wait_for("kv-a ready", lambda: next(
            (i for i in read_json(DeployPaths(name).status)["instances"] if i["state"] == "ready"), None))
        second = labkit.wait_for("kv-a renewed", lambda: next(
            (i for i in (read_json(DeployPaths(name).status) or {}).get("instances", [])
             if i["state"] == "ready" and i["instance_id"] != first["instance_id"]), None), timeout=30)
        assert (first["name"], second["name"]) == ("kv-a", "kv-a")
        lab = read_json(DeployPaths(name).deployment)["lab"]
        hosts = int(read_json(Path(f"/run/boxer/lab/{lab}/lab.json"))["host_count"])
        answer = subprocess.run([*BOXER, "lab", "exec", "--name", lab, f"h{hosts}", "--", *BOXER, "run",
                                 "--name", "cli", "--", sys.executable, "-c",
                                 "import urllib.request as u; print(u.urlopen('http://kv-a:8080/', timeout=10).status)"],
                                capture_output=True, text=True, timeout=60)
        assert answer.stdout.strip() == "200", answer.stderr[-2000:]
        decisions = [d for row in (json.loads(x) for x in DeployPaths(name).timeline.read_text().splitlines() if x)
                     for d in row["decisions"]]
        assert not [d for d in decisions if d["kind"] == "start" and d["instance"].startswith("kv-2")]
    finally:
        labkit.deployment_down(name)
