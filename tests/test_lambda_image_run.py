"""boxer's Lambda image, built here (buildah, a debootstrap Debian base: lambda_image/build.py)
and run as Lambda runs a function: its entry point from its root filesystem, read-only, with a
512 MB /tmp, uid 993, no capabilities, 1024 descriptors, the timeout enforced by SIGKILL; and
the redis example served from it through `boxer up --backend lambda-local --image`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import labkit
import psutil
import pytest

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent
BOXER = [sys.executable, "-m", "boxer"]

if os.geteuid() != 0:
    pytest.skip("running the image needs root (mount and PID namespaces, chroot)", allow_module_level=True)
for tool in ("buildah", "debootstrap"):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/install-deps.sh installs it)", allow_module_level=True)


@pytest.fixture(scope="session")
def images() -> tuple[str, str]:
    """(boxer's image, the redis example on it): built unless their hash tags exist."""
    proc = subprocess.run([sys.executable, str(ROOT / "lambda_image" / "build.py"), "--example", "redis"],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    base, redis = proc.stdout.split()
    return base, redis


@pytest.fixture
def opened(images, request):
    from boxer.backends.emulators.image import close_image, open_image

    root = open_image(images[1], f"t{os.getpid() % 100000}{request.node.name[-12:]}".replace("_", ""))
    yield root
    close_image(root)


def sandbox(root, script: str, **options) -> subprocess.CompletedProcess[str]:
    from boxer.backends.emulators.sandbox import SandboxConfig, sandbox_argv

    config = SandboxConfig(root=root.rootfs, argv=["/bin/sh", "-c", script], workdir=root.workdir, **options)
    return subprocess.run(sandbox_argv(config), capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


def test_the_sandbox_is_lambdas_execution_environment(opened, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    proc = sandbox(opened, "id -u; id -g; id -G; grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status;"
                   " ulimit -n; pwd; df -k /tmp | tail -1; cat /tmp/in/secret; stat -c %u /tmp/in/secret;"
                   " touch /var/task/x 2>&1; echo data > /tmp/y && cat /tmp/y; ls /dev | tr '\\n' ' ';"
                   " echo; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'",
                   copies=[(str(secret), "/tmp/in/secret")])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["993", "993", "993"]  # sbx_user1051's uid, no other group
    assert lines[3:6] == ["CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "NoNewPrivs:\t1"]
    assert lines[6] == "1024"
    assert lines[7] == "/var/task"
    assert lines[8].split()[1] == str(512 * 1024)  # /tmp: a 512 MB tmpfs
    assert lines[9:11] == ["s3cret", "993"]  # the copied file, the sandbox user's
    assert "Read-only file system" in lines[11]
    assert lines[12] == "data"
    assert lines[13].split() == ["fd", "full", "null", "random", "stderr", "stdin", "stdout", "tty", "urandom",
                                 "zero"]
    assert "boxer.backends.emulators.sandbox" in lines[14]  # pid 1 is the sandbox's init, not the host's
    assert int(lines[15]) <= 5  # its own PID namespace: only the sandbox's processes


def test_the_timeout_kills_every_process_of_the_sandbox(opened):
    from boxer.backends.emulators.lambda_local import invoke_local

    # A runtime that never asks for its event, and leaves a grandchild behind: both must go.
    hung = replace(opened, entrypoint=("/bin/sh", "-c", "sleep 300 & sleep 300"), cmd=())
    before = {p.pid for p in psutil.process_iter()}
    started = time.monotonic()
    result = invoke_local({}, timeout=2, image=hung)
    assert result.status == "timeout"
    assert 2 <= time.monotonic() - started < 6
    time.sleep(0.2)
    left = [p for p in psutil.process_iter(["uids", "name"]) if p.pid not in before
            and p.info["uids"] and p.info["uids"].real == 993]
    assert not left, left


def test_redis_example_runs_from_the_image_as_a_function(images, tmp_path):
    """examples/aws/deploy.yaml, on the lab: each instance is an invocation of the image."""
    from boxer.controller.paths import DeployPaths, read_json

    name = f"im{os.getpid() % 100000}"
    deploy = ROOT / "examples" / "aws" / "deploy.yaml"
    up = subprocess.run([*BOXER, "up", "--detach", "--name", name, "--backend", "lambda-local", "--image", images[1],
                         str(deploy)], capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        info = read_json(DeployPaths(name).deployment)
        assert info["image"]["image"] == images[1]
        lab = info["lab"]
        labkit.wait_deployed_redis(lab, "the instances run from the image", timeout=60)
        status = labkit.control_status(name)
        assert [i["state"] for i in status["instances"] if i["service"] == "kv"] == ["ready", "ready"]
        # Each redis is the image's own binary, run by the image's handler, as the function's user,
        # with the image's root as its root.
        rootfs = json.loads((DeployPaths(name).root / "image.json").read_text())["rootfs"]
        servers = [p for p in psutil.process_iter(["name", "uids"]) if p.info["name"] == "redis-server"
                   and p.info["uids"].real == 993]
        assert len(servers) == 2
        for server in servers:
            assert os.readlink(f"/proc/{server.pid}/root") == rootfs
            assert server.exe().startswith(f"{rootfs}/usr/bin/redis")  # Debian's, inside the image
            parents = [p.cmdline() for p in server.parents()]
            assert any("awslambdaric" in " ".join(c) for c in parents)
    finally:
        labkit.deployment_down(name)
    buildah = subprocess.run(["buildah", "containers", "--format", "{{.ContainerName}}"], capture_output=True,
                             text=True)
    assert f"boxer-{name}" not in buildah.stdout.split()  # `boxer down` let go of the image


DENIED = ("pidfd_open", "close_range", "splice", "family:netlink", "SO_REUSEPORT")


def test_without_pidfd_close_range_netlink_and_reuseport_the_agent_falls_back_and_serves(opened, tmp_path):
    """The sandbox answers ENOSYS (EAFNOSUPPORT, ENOPROTOOPT) for what boxer uses: the agent
    probes at start, logs each fallback, and the instance still serves, through the relay."""
    import asyncio

    from boxer.backends.emulators.lambda_local import LocalLambdaBackend
    from boxer.lab import lab_down, lab_up

    name = f"sc{os.getpid() % 100000}"
    lab = lab_up(name, hosts=3)
    image_file = tmp_path / "image.json"
    image_file.write_text(json.dumps(opened.to_dict()))
    try:
        backend = LocalLambdaBackend(lab, timeout=120, image_file=image_file, deny=DENIED, log_dir=tmp_path,
                                   spare_hosts=1)
        spec = labkit.issued_spec(lab, name="kv-1", service="kv", index=1,
                                  command=("redis-server", "--port", "6379", "--save", "", "--protected-mode", "no"))

        async def scenario() -> str:
            handle = await backend.launch(spec)
            answer = ""
            deadline = time.monotonic() + 45
            while answer != "PONG" and time.monotonic() < deadline:
                proc = await asyncio.create_subprocess_exec(
                    *lab.command("h3", [*BOXER, "run", "--name", "cli", "--", "redis-cli", "-h", "kv", "ping"]),
                    env=lab.env("h3"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
                out, _ = await proc.communicate()
                answer = out.decode().strip()
                if answer != "PONG":
                    await asyncio.sleep(0.3)
            await backend.stop(handle)
            await backend.close()
            return answer

        assert asyncio.run(scenario()) == "PONG"
        log = "".join(p.read_text(errors="replace") for p in tmp_path.glob("kv-1.*.log"))
        for feature, fallback in (("pidfd_open", "a thread waits for the app"),
                                  ("sock_diag", "/proc/net/tcp"), ("SO_REUSEPORT", "through the relay")):
            assert f"{feature} unavailable here" in log and fallback in log, log[-3000:]
    finally:
        lab_down(name)


def test_the_coordinator_command_terraform_runs_works_from_the_image(opened, tmp_path):
    """terraform's coordinator unit runs the function image with its own entry point and
    arguments (templates/coordinator-user-data.sh.tftpl): that command, from the built image,
    serves (on loopback here, with the secret where the sandbox can hold it)."""
    import re
    import shlex
    import socket as socketlib

    from boxer.backends.emulators.sandbox import SandboxConfig, sandbox_argv

    template = (ROOT / "terraform" / "templates" / "coordinator-user-data.sh.tftpl").read_text()
    (exec_start,) = [line for line in re.findall(r"^ExecStart=(.*?[^\\])$", template.replace("\\\n", " "), re.M)
                     if " boxer coordinator " in line]  # the other unit is the controller's
    words = shlex.split(exec_start.replace("${image}", "IMAGE").replace("${port}", "7000"))
    entrypoint = words[words.index("--entrypoint") + 1]
    args = words[words.index("IMAGE") + 1:]
    assert args[:3] == ["-m", "boxer", "coordinator"]
    with socketlib.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secret = tmp_path / "secret"
    secret.write_text(os.urandom(32).hex())
    args = [a.replace("0.0.0.0:7000", f"127.0.0.1:{port}").replace("/run/boxer/secret", "/tmp/boxer/secret")
            for a in args]
    config = SandboxConfig(root=opened.rootfs, argv=[entrypoint, *args], workdir="/", uid=0, gid=0, nofile=4096,
                           copies=[(str(secret), "/tmp/boxer/secret")])
    proc = subprocess.Popen(sandbox_argv(config), env={"PATH": "/usr/bin:/bin"}, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socketlib.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the coordinator from the image never listened"
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.fixture(scope="session")
def controller_image() -> str:
    """The Dockerfile's `controller` target, built unless its hash tag exists."""
    proc = subprocess.run([sys.executable, str(ROOT / "lambda_image" / "build.py"), "--controller"],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()[-1]


def test_the_controller_command_terraform_runs_works_from_the_controller_image(controller_image, tmp_path):
    """terraform's controller unit (templates/coordinator-user-data.sh.tftpl) runs the controller
    image with /opt/boxer/bin/python and the controller host's arguments: that command, from the
    built image, with a certificate made by the user data's own openssl line, answers a client
    that checks the certificate and presents the token (no deployment yet)."""
    import re
    import shlex
    import socket as socketlib

    from test_terraform import render_user_data, units

    from boxer.backends.emulators.image import close_image, open_image
    from boxer.backends.emulators.sandbox import SandboxConfig, sandbox_argv
    from boxer.controller.api.client import ControlClient, ControlError

    script = render_user_data()
    words = shlex.split(units(script)["boxer-controller"]["ExecStart"][0])
    entrypoint = words[words.index("--entrypoint") + 1]
    assert entrypoint == "/opt/boxer/bin/python"
    (make_cert,) = re.findall(r"^\s*(openssl req .*)$", script, re.M)
    control = tmp_path / "control"
    control.mkdir()
    subprocess.run(shlex.split(make_cert.replace("/etc/boxer/control", str(control))), check=True,
                   capture_output=True)
    token = os.urandom(24).hex()
    (control / "token").write_text(token + "\n")
    (control / "outputs.json").write_text("{}")
    with socketlib.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [a.replace("/etc/boxer/control", "/tmp/control").replace("/var/lib/boxer", "/tmp/state")
             .replace("0.0.0.0:7443", f"127.0.0.1:{port}") for a in words[words.index("--entrypoint") + 3:]]
    opened = open_image(controller_image, f"c{os.getpid() % 100000}")
    try:
        config = SandboxConfig(root=opened.rootfs, argv=[entrypoint, *args], workdir="/", uid=0, gid=0, nofile=4096,
                               copies=[(str(control / f), f"/tmp/control/{f}")
                                       for f in ("tls.crt", "tls.key", "token", "outputs.json")])
        proc = subprocess.Popen(sandbox_argv(config), stderr=subprocess.PIPE,
                                env={"PATH": "/usr/bin:/bin", "BOXER_DEPLOY_STATE_ROOT": "/tmp/state/deploy"})
        try:
            cert = (control / "tls.crt").read_bytes()
            deadline = time.monotonic() + 30
            with ControlClient.at(f"127.0.0.1:{port}", ca=cert, token=token, server_name="boxer-controller") as client:
                while True:
                    try:
                        client.status(timeout=2)
                    except ControlError as exc:
                        if "no deployment runs on the controller" in str(exc):
                            break
                        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                        assert time.monotonic() < deadline, f"the controller from the image never answered: {exc}"
                        time.sleep(0.3)
        finally:
            proc.terminate()
            proc.communicate(timeout=20)
    finally:
        close_image(opened)
