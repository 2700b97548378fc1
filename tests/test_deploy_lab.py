"""`boxer up/status/down` on the lab, end to end, with real processes behind real NATs.

One small deployment for the module: a fixed service on `vm` (public hosts) and a service at
zero on `function` that the first connect starts. Checks: up brings the fixed instances up;
a connect to the service with no instance starts one and completes (scale from zero); killing
an instance's app gets it replaced; `boxer up` again applies an edited file (counts at once, a new
environment rolled out under steady requests with none failing, and refuses what cannot change
live); `boxer down` leaves no namespace and no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import labkit
import pytest
from labkit import wait_for

BOXER = [sys.executable, "-m", "boxer"]
pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    print("skipping: deployment lab tests need root (network namespaces, iptables)")
    pytest.skip("deployment lab tests need root", allow_module_level=True)
if shutil.which("curl") is None:
    print("skipping: deployment lab tests need curl (scripts/install-deps.sh)")
    pytest.skip("deployment lab tests need curl", allow_module_level=True)

DEPLOY = """
name: {name}
services:
  api:
    command: [python3, -m, http.server, "8080"]
    placement: function
    minInstances: 0
    maxInstances: 2
    autoscale:
      target: 5
      scaleToZeroGracePeriodSeconds: 300
      scaleFromZeroTimeoutSeconds: 10
  fixed:
    command: [python3, -m, http.server, "9090"]
    placement: vm
    minInstances: 1
"""


def status(name: str) -> dict:
    return labkit.control_status(name)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    name = f"dt{os.getpid() % 100000}"
    folder = tmp_path_factory.mktemp("deploy")
    (folder / "deploy.yaml").write_text(DEPLOY.format(name=name))
    up = subprocess.run([*BOXER, "up", "--detach", str(folder / "deploy.yaml")],
                        capture_output=True, text=True, timeout=90)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        yield name
    finally:
        labkit.deployment_down(name)


def client(name: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    from boxer.controller.paths import DeployPaths, read_json

    lab = read_json(DeployPaths(name).deployment)["lab"]
    hosts = int(read_json(Path(f"/run/boxer/lab/{lab}/lab.json"))["host_count"])
    # The last NATed host is left to clients (LocalBackend(spare_hosts=1)).
    return subprocess.run([*BOXER, "lab", "exec", "--name", lab, f"h{hosts}", "--", *BOXER,
                           "run", "--name", f"cli{time.monotonic_ns() % 10000}", "--", *argv],
                          capture_output=True, text=True, timeout=timeout)


def test_up_brings_the_fixed_service_up(deployment):
    st = wait_for("fixed-1 ready", lambda: (s := status(deployment))
                  and any(i["name"] == "fixed-1" and i["state"] == "ready"
                          for i in s["instances"]) and s)
    fixed = next(i for i in st["instances"] if i["name"] == "fixed-1")
    assert fixed["placement"] == "vm" and fixed["address"].startswith("100.")
    assert fixed["host"].startswith("p")  # vm placement: a public lab host
    assert not any(i["service"] == "api" for i in st["instances"])  # api waits at zero
    text = subprocess.run([*BOXER, "status", "--name", deployment], capture_output=True,
                          text=True, timeout=30).stdout
    assert "fixed-1" in text and "ready" in text


def test_an_instance_is_given_its_token_and_never_the_deployment_secret(deployment):
    """The controller issues each instance its token only: the agent (forked from the lab's
    zygote) and its app hold no deployment secret in their environment, their open files or,
    for the agent, its memory; the agent's credential is its own instance's token."""
    from boxer.controller.paths import DeployPaths, read_json
    from boxer.nat_traversal.auth import instance_token, load_secret

    fixed = wait_for("fixed-1 ready", lambda: next((i for i in status(deployment)["instances"]
                                                    if i["name"] == "fixed-1" and i["state"] == "ready"), None))
    lab = read_json(DeployPaths(deployment).deployment)["lab"]
    secret_file = Path(f"/run/boxer/lab/{lab}/secret")
    secret = load_secret(str(secret_file))
    agent = int(fixed["pid"])
    apps = subprocess.run(["pgrep", "-P", str(agent)], capture_output=True, text=True).stdout.split()
    assert apps, "the agent has no app child"
    for pid in (agent, *map(int, apps)):
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"BOXER_SECRET" not in environ and secret.hex().encode() not in environ, pid
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                assert os.readlink(f"/proc/{pid}/fd/{fd}") != str(secret_file), (pid, fd)
    memory = labkit.readable_memory(agent)
    assert len(memory) > 1 << 20
    # (not even where the secret is: the secret file's path)
    held = {what: what in memory for what in (secret, secret.hex().encode(), str(secret_file).encode())}
    assert not any(held.values()), held
    token = instance_token(secret, fixed["instance_id"])
    assert token in memory or token.hex().encode() in memory  # what it holds instead


def test_a_connect_to_a_service_at_zero_starts_an_instance_and_completes(deployment):
    began = time.monotonic()
    proc = client(deployment, "curl", "-sS", "--max-time", "15", "-o", "/dev/null", "-w",
                  "%{http_code}", "http://api:8080/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "200"
    print(f"scale from zero: connect answered after {time.monotonic() - began:.2f} s "
          "(including `boxer run` of the client)")
    st = status(deployment)
    assert [i["name"] for i in st["instances"] if i["service"] == "api"] == ["api-1"]


def test_a_killed_instance_is_replaced(deployment):
    st = wait_for("api-1 ready", lambda: (s := status(deployment)) and any(
        i["name"] == "api-1" and i["state"] == "ready" for i in s["instances"]) and s)
    old = next(i for i in st["instances"] if i["name"] == "api-1")
    app_pids = subprocess.run(["pgrep", "-P", str(old["pid"])], capture_output=True,
                              text=True).stdout.split()
    assert app_pids, "the agent has no app child"
    killed = time.monotonic()
    os.kill(int(app_pids[0]), signal.SIGKILL)
    new = wait_for("a ready replacement", lambda: next(
        (i for i in status(deployment)["instances"] if i["name"] == "api-1"
         and i["instance_id"] != old["instance_id"] and i["state"] == "ready"), None))
    print(f"kill -> replacement ready: {time.monotonic() - killed:.2f} s")
    assert new["pid"] != old["pid"]
    proc = client(deployment, "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w",
                  "%{http_code}", "http://api:8080/")
    assert proc.stdout == "200", proc.stderr


# Requests to the service every 50 ms until the file in argv[1] exists: {"ok": N, "failed": [...]}.
STEADY_CLIENT = """
import json, os, sys, time, urllib.request
ok, failed = 0, []
while not os.path.exists(sys.argv[1]):
    try:
        with urllib.request.urlopen("http://api:8080/", timeout=5) as reply:
            reply.read()
        ok += 1
    except Exception as exc:
        failed.append(repr(exc))
    time.sleep(0.05)
print(json.dumps({"ok": ok, "failed": failed}))
"""


def test_up_again_applies_an_edited_file_while_it_runs(deployment, tmp_path):
    from boxer.controller.paths import DeployPaths, read_json
    from boxer.lab import load_lab

    text = Path(read_json(DeployPaths(deployment).deployment)["file"]).read_text()

    def up_again(old: str, new: str, keep: bool = False) -> subprocess.CompletedProcess:
        nonlocal text
        assert old in text
        edited = text.replace(old, new)
        (tmp_path / "deploy.yaml").write_text(edited)
        if keep:
            text = edited
        return subprocess.run([*BOXER, "up", str(tmp_path / "deploy.yaml")], capture_output=True,
                              text=True, timeout=90)

    raised = up_again("minInstances: 0", "minInstances: 2", keep=True)
    assert raised.returncode == 0, raised.stderr + raised.stdout
    assert "applied services.api.minInstances: 0 -> 2" in raised.stdout
    ready = [i["name"] for i in status(deployment)["instances"]
             if i["service"] == "api" and i["state"] == "ready"]
    assert sorted(ready) == ["api-1", "api-2"]  # `up` returned once they were

    moved = up_again("placement: function", "placement: vm")
    assert moved.returncode != 0
    assert "services.api.placement" in moved.stderr and "boxer down" in moved.stderr
    too_big = up_again("maxInstances: 2", "maxInstances: 9")
    assert too_big.returncode != 0
    assert "the edited maxInstances need 11 NATed and 1 public hosts" in too_big.stderr
    # Neither refusal changed what runs.
    assert "minInstances: 2" in DeployPaths(deployment).applied_file.read_text()
    assert "placement: function" in DeployPaths(deployment).applied_file.read_text()

    # A new environment is rolled out under steady requests, none of which fails.
    lab = load_lab(read_json(DeployPaths(deployment).deployment)["lab"])
    (tmp_path / "steady.py").write_text(STEADY_CLIENT)
    done = tmp_path / "done"
    steady = lab.popen(lab.hosts[-1].name, [*BOXER, "run", "--name", "steady", "--", sys.executable,
                                             str(tmp_path / "steady.py"), str(done)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # requests flowing before the change
        rolled = up_again('"8080"]\n    placement: function', '"8080"]\n    env: {VERSION: "2"}\n'
                          '    placement: function', keep=True)
        assert rolled.returncode == 0, rolled.stderr + rolled.stdout
        assert "applied services.api.env.VERSION: (unset) -> 2" in rolled.stdout
        assert "rolling out api" in rolled.stdout
        st = status(deployment)  # `up` returned: the rollout is over
        time.sleep(1.0)  # requests after it
    finally:
        done.touch()
        out, err = steady.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    print(f"rollout under steady requests: {result['ok']} ok, {len(result['failed'])} failed")
    assert result["failed"] == [] and result["ok"] >= 20, err[-2000:]
    assert st["services"]["api"]["revision"] == 2 and st["services"]["api"]["outdated"] == 0
    api = [i for i in st["instances"] if i["service"] == "api" and i["state"] == "ready"]
    assert len(api) == 2 and {i["revision"] for i in api} == {2}
    for instance in api:  # the app itself runs with the new environment
        app_pid = subprocess.run(["pgrep", "-P", str(instance["pid"])], capture_output=True,
                                 text=True).stdout.split()[0]
        assert b"VERSION=2" in Path(f"/proc/{app_pid}/environ").read_bytes().split(b"\0")


def test_logs_show_each_instance_its_restarts_and_a_misspelled_binary(deployment, tmp_path):
    """`boxer logs api`: http.server's request lines of every api instance, the killed one's exit
    and its successor's start between them. A service added with a misspelled binary: `boxer logs
    -f` shows `command not found` and the exit status 127 as they happen, and ends on Ctrl-C."""
    from boxer.controller.paths import DeployPaths, read_json

    logs = subprocess.run([*BOXER, "logs", "--name", deployment, "api"], capture_output=True, text=True,
                          timeout=30)
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert any(" api-1    | " in line and '"GET / HTTP/1.1" 200' in line for line in lines), logs.stdout
    exits = [i for i, line in enumerate(lines) if " api-1    * exited with status 137; started again" in line]
    restarts = [i for i, line in enumerate(lines) if " api-1    * restarted on h" in line]
    assert exits and restarts and exits[0] < restarts[0], logs.stdout  # the killed one, then its successor
    times = [line.split()[0] for line in lines]
    assert times == sorted(times)

    # A rollout to a misspelled binary, followed from before the edit: the new instance and its
    # `command not found` appear as they happen (the old instances keep serving). Ctrl-C while
    # `boxer up` waits on the rollout only stops the waiting.
    text = Path(read_json(DeployPaths(deployment).deployment)["file"]).read_text()
    assert 'command: [python3, -m, http.server, "8080"]' in text
    edited = tmp_path / "deploy.yaml"
    edited.write_text(text.replace('command: [python3, -m, http.server, "8080"]',
                                   'command: [pythn3, -m, http.server, "8080"]'))
    follow = subprocess.Popen([*BOXER, "logs", "-f", "--name", deployment, "api"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    apply = subprocess.Popen([*BOXER, "up", "--name", deployment, str(edited)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lines_in: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines_in.put(line) for line in follow.stdout], daemon=True).start()
    seen: list[str] = []
    try:
        assert apply.stdout.readline().startswith("applied services.api.command"), apply.stderr.read()
        apply.send_signal(signal.SIGINT)
        _, apply_err = apply.communicate(timeout=30)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not any("exited with status 127" in line for line in seen):
            with contextlib.suppress(queue.Empty):
                seen.append(lines_in.get(timeout=max(0.01, deadline - time.monotonic())))
    finally:
        if apply.poll() is None:
            apply.kill()
            apply.wait()
        follow.send_signal(signal.SIGINT)
        _, follow_err = follow.communicate(timeout=30)
    assert apply.returncode == 130 and "Traceback" not in apply_err, apply_err
    assert "interrupted: the edited file is applied and the deployment runs on" in apply_err
    typo = [line for line in seen if "| boxer: command not found: pythn3" in line]
    assert typo, (seen[-20:], follow_err)
    instance = typo[0].split()[1]
    assert any(f" {instance}" in line and "* exited with status 127" in line for line in seen), seen[-20:]
    assert follow.returncode == 130 and "Traceback" not in follow_err, follow_err

    # Another broken edit, waited on: `boxer up` stops at the crash loop and says why in one line.
    edited.write_text(text.replace('command: [python3, -m, http.server, "8080"]',
                                   'command: [pythn4, -m, http.server, "8080"]'))
    began = time.monotonic()
    again = subprocess.run([*BOXER, "up", "--name", deployment, str(edited)], capture_output=True, text=True,
                           timeout=60)
    print(f"a rollout to a missing command: `boxer up` said so after {time.monotonic() - began:.1f} s")
    assert again.returncode == 1, again.stdout + again.stderr
    (last,) = [line for line in again.stderr.splitlines() if line.startswith("boxer: ")]
    assert last.startswith("boxer: api fails since the change: exited with status 127"), last
    assert "crash loop: started again in " in last, last
    # (the slot the first edit broke may be the one that fails again first: the service fails)
    assert re.search(r"last log line: boxer: command not found: pythn[34]\. The change is applied: fix the file "
                     r"and `boxer up` it again \(`boxer logs api` shows why\)$", last), last
    assert time.monotonic() - began < 20


def test_down_leaves_nothing_behind(deployment):
    from boxer.controller.paths import DeployPaths, read_json

    info = read_json(DeployPaths(deployment).deployment)
    pids = [i["pid"] for i in status(deployment)["instances"] if i["pid"]]
    down = subprocess.run([*BOXER, "down", "--name", deployment], capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"bx-{info['lab']}-" not in namespaces
    for pid in [info["controller_pid"], *pids]:
        assert not Path(f"/proc/{pid}").exists() or \
            b"boxer" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    after = subprocess.run([*BOXER, "status", "--name", deployment], capture_output=True,
                           text=True, timeout=30).stdout
    assert after.startswith(f"deployment {deployment} is stopped (down ")


# ---- the user's folder does not change what boxer runs (issue 12 item 6) ----------------------

SHADOWED = """
name: {name}
services:
  web:
    command: [python3, -I, -m, http.server, "9091"]
    placement: vm
    minInstances: 1
"""

# Modules a user may well keep beside a deployment file, each shadowing one that boxer's helpers
# import (the controller daemon, the zygote, agents): imported, it leaves a mark and fails.
POISON = "import pathlib; pathlib.Path(__file__).with_suffix('.imported').touch(); raise SystemExit({what!r})\n"


def test_up_from_a_folder_that_shadows_boxers_modules_runs_boxers_own(tmp_path):
    name = f"ds{os.getpid() % 100000}"
    (tmp_path / "deploy.yaml").write_text(SHADOWED.format(name=name))
    for package in ("controller", "boxer", "nat_traversal"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(POISON.format(what=f"the user's {package}/"))
    for module in ("yaml", "logging", "json", "asyncio"):
        (tmp_path / f"{module}.py").write_text(POISON.format(what=f"the user's {module}.py"))
    # `boxer` as a user runs it (the console script), from the folder, with the file's name only.
    entry = str(Path(sys.executable).with_name("boxer"))
    up = subprocess.run([entry, "up", "--detach", "deploy.yaml"], cwd=tmp_path, capture_output=True, text=True,
                        timeout=90)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        wait_for("web-1 ready", lambda: any(i["name"] == "web-1" and i["state"] == "ready"
                                            for i in status(name)["instances"]), timeout=60)
        served = client(name, "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                        "http://web:9091/")
        assert served.stdout == "200", served.stderr
    finally:
        labkit.deployment_down(name)
    assert sorted(p.name for p in tmp_path.rglob("*.imported")) == []
