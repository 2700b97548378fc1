"""Small helpers shared by the lab tests that run programs under `boxer run`."""

from __future__ import annotations

import subprocess
import sys

BOXER = [sys.executable, "-m", "boxer"]


def boxer_run(name: str, *argv: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The argv of `boxer run --name NAME [extra] -- argv...`."""
    return [*BOXER, "run", "--name", name, *extra, "--", *argv]


def stop_all(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Terminate every process a test started (those still running), then kill stragglers."""
    from boxer.lab import stop_processes

    stop_processes(procs, grace)


def wait_serving(lab, host: str, target: str, port: int | str, timeout: float = 30.0) -> None:
    """Until an overlay connect from HOST to TARGET:PORT succeeds.

    Instances come up on their own schedule (on lossy links registration alone can take seconds
    of SYN retransmits); a test that measures a transfer must not race the server's start.
    """
    import json
    import time
    from pathlib import Path

    client = Path(__file__).parent / "apps" / "client.py"
    deadline = time.monotonic() + timeout
    while True:
        proc = lab.run(host, boxer_run("probe", sys.executable, str(client), "connect", target, str(port)),
                       capture_output=True, text=True, timeout=timeout + 30)
        if proc.returncode == 0 and json.loads(proc.stdout)["errno"] is None:
            return
        assert time.monotonic() < deadline, (
            f"{target}:{port} did not start serving within {timeout:g} s: {proc.stdout} {proc.stderr[-2000:]}")
        time.sleep(0.3)


def wait_for(what: str, predicate, timeout: float = 20.0, interval: float = 0.1):
    """predicate()'s first truthy value, polled every `interval` s; fails after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what} ({timeout:g} s)"
        time.sleep(interval)


def control_status(name: str, state_root: str | None = None) -> dict:
    """A deployment's status as its controller gives it through the control API (the fields of
    control.proto's DeploymentStatus, which the lab tests check), or once it is gone the last it
    wrote (status.json, running false). Scripts read `boxer status -o json`, the stable format of
    docs/cli.md, which names things as the deployment file does. `state_root`: a deployment kept
    under another BOXER_DEPLOY_STATE_ROOT than this process's."""
    import os

    from boxer.controller.deployments import load_status

    saved = os.environ.get("BOXER_DEPLOY_STATE_ROOT")
    if state_root is not None:
        os.environ["BOXER_DEPLOY_STATE_ROOT"] = state_root
    try:
        return load_status(name) or {"running": False, "services": {}, "instances": []}
    finally:
        if state_root is not None:
            if saved is None:
                os.environ.pop("BOXER_DEPLOY_STATE_ROOT", None)
            else:
                os.environ["BOXER_DEPLOY_STATE_ROOT"] = saved


def deployment_down(name: str) -> None:
    """Take a test's deployment down and leave nothing of it: `boxer down`, the lab's own
    teardown for whatever down could not do, and the deployment's files under /run/boxer/deploy
    (`boxer down` keeps them for `boxer report`; a test has no use for them after)."""
    import shutil

    from boxer.controller.paths import DeployPaths, read_json

    subprocess.run([*BOXER, "down", "--name", name], capture_output=True, timeout=90)
    paths = DeployPaths(name)
    info = read_json(paths.deployment) or {}
    if info.get("lab"):
        from boxer.lab import lab_down

        lab_down(info["lab"])
    if info.get("image"):  # --image: the working container `boxer down` did not remove
        from boxer.backends.emulators.image import close_image

        close_image(info["image"])
    shutil.rmtree(paths.root, ignore_errors=True)


def wait_deployed_redis(lab: str, what: str, timeout: float) -> None:
    """Until `redis-cli -h kv ping`, run under `boxer run` on the last NATed host of a
    deployment's lab (one no instance takes first), answers PONG; fails after `timeout` s."""
    import time
    from pathlib import Path

    from boxer.controller.paths import read_json

    hosts = int(read_json(Path(f"/run/boxer/lab/{lab}/lab.json"))["host_count"])
    deadline = time.monotonic() + timeout
    answer = ""
    while answer != "PONG":
        assert time.monotonic() < deadline, f"{what} never answered"
        proc = subprocess.run([*BOXER, "lab", "exec", "--name", lab, f"h{hosts}", "--", *BOXER, "run",
                               "--name", f"cli{time.monotonic_ns() % 10000}", "--", "redis-cli", "-h", "kv",
                               "ping"], capture_output=True, text=True, timeout=30)
        answer = proc.stdout.strip()
        time.sleep(0.3)


def readable_memory(pid: int) -> bytes:
    """Every readable mapping of a process (as root): to show what it does not hold."""
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or line.rstrip().endswith("[vvar]"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except (OSError, OverflowError, ValueError):
                continue
    return b"".join(chunks)


def issued_spec(lab, instance: str = "0123456789abcdef", **fields):
    """An InstanceSpec as the controller makes it for `lab`: the instance's id and the token it
    issues for it (derived from the lab's secret), never the secret itself."""
    from boxer.backends.base import InstanceSpec
    from boxer.nat_traversal.auth import instance_token, load_secret

    env = {"BOXER_INSTANCE_ID": instance, **fields.pop("env", {})}
    token = instance_token(load_secret(str(lab.secret_file)), instance).hex()
    return InstanceSpec(env=env, token=token, **fields)
