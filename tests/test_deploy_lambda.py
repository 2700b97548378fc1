"""`boxer up --backend lambda` end to end, without AWS: the real boto3 client and LambdaBackend
call a local Lambda Invoke API (`boxer lambda-local serve`, via AWS_ENDPOINT_URL_LAMBDA), which
runs each event under the real awslambdaric and our handler in a NATed lab host; the secret
comes from moto's SSM (AWS_ENDPOINT_URL_SSM).

    h1      the function's sandbox (one slot): Runtime API, awslambdaric, handler, boxer run
    h2      "the user's machine": `boxer up` and the controller, as an unprivileged user, with
            the Invoke API on its own loopback; it reaches the coordinator through its NAT
    h3      a client under `boxer run`
    coord   the coordinator, and moto's SSM on the lab's public segment (every host reaches it,
            as every host reaches AWS)
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import labkit
import pytest
from labkit import BOXER, boxer_run, wait_for

pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    pytest.skip("deployment lab tests need root (network namespaces, iptables)",
                allow_module_level=True)
for _module, _why in (("awslambdaric", "awslambdaric is not installed (pip install '.[test]')"),
                      ("flask", "moto's server needs flask (pip install '.[test]')")):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(_why, allow_module_level=True)

REGION = "eu-west-1"
FUNCTION = "boxer-lt"
PARAMETER = "/boxer/lt/secret"
STANDIN = Path(__file__).parent / "apps" / "aws_standin.py"
NOBODY = 65534

DEPLOY = """
name: {name}
backend: lambda
lambda:
  outputs: outputs.json
  maxConcurrency: {concurrency}
  registerTimeoutSeconds: {register_timeout}
services:
  kv:
    command: [redis-server, --port, "6379", --save, "", --protected-mode, "no"]
    placement: function
    restartPolicy: {restart}
    minInstances: 1
    maxInstances: 1
    maxLifetimeSeconds: 300
"""


def _read_line(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    """The first line `proc` prints, within `timeout` s."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"{what} printed nothing within {timeout:g} s"
    line = proc.stdout.readline().strip()
    assert line, f"{what} exited ({proc.wait()}) before it was ready"
    return line


class Aws:
    """Everything a test needs around one lab: moto's SSM, the Invoke API, the env and files."""

    def __init__(self, lab: Any, root: Path) -> None:
        self.lab = lab
        self.root = root  # readable by the unprivileged user; holds deploy files and state
        self.procs: list[subprocess.Popen[str]] = []
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("BOXER_", "AWS_"))}
        self.env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                        AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/dev/null",
                        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                        BOXER_DEPLOY_STATE_ROOT=str(root / "state"))
        self.ssm_url = ""
        self.lambda_url = ""

    def _popen(self, host: str, argv: list[str], log: str) -> subprocess.Popen[str]:
        with open(self.root / log, "w") as log_file:
            proc = subprocess.Popen(self.lab.command(host, argv), env=self.env,
                                    stdout=subprocess.PIPE, stderr=log_file, text=True)
        self.procs.append(proc)
        return proc

    def start_ssm(self, *options: str) -> None:
        proc = self._popen("coord", [sys.executable, str(STANDIN), "--listen",
                                     f"{self.lab.coordinator.rpartition(':')[0]}:0",
                                     "--region", REGION, "--parameter", PARAMETER,
                                     "--value-file", str(self.lab.secret_file), *options], "ssm.log")
        line = _read_line(proc, 30, "moto's SSM")
        assert line.startswith("ready http://"), line
        self.ssm_url = line.split()[1]
        self.env["AWS_ENDPOINT_URL_SSM"] = self.ssm_url
        # moto's one server answers every service: EC2 and Auto Scaling too (the vm tier).
        self.env["AWS_ENDPOINT_URL_EC2"] = self.env["AWS_ENDPOINT_URL_AUTO_SCALING"] = self.ssm_url

    def start_invoke_api(self, *options: str) -> None:
        argv = [*BOXER, "lambda-local", "serve", "--function", FUNCTION, "--listen",
                "127.0.0.1:0", "--lab", self.lab.name, "--hosts", "h1", "--region", REGION,
                "--timeout", "120", "--log-dir", str(self.root / "invocations"), *options]
        proc = self._popen("h2", argv, "invoke-api.log")
        line = _read_line(proc, 30, "boxer lambda-local serve")
        assert line.startswith("AWS_ENDPOINT_URL_LAMBDA=http://127.0.0.1:"), line
        self.lambda_url = line.split()[0].partition("=")[2]
        self.env["AWS_ENDPOINT_URL_LAMBDA"] = self.lambda_url

    def invoke_stats(self) -> dict[str, Any]:
        """The Invoke API's counters (it listens on h2's loopback: ask from inside h2)."""
        code = ("import json; from boxer.backends.emulators.invoke_api import fetch_stats; "
                f"print(json.dumps(fetch_stats({self.lambda_url!r}, region={REGION!r})))")
        out = subprocess.run(self.lab.command("h2", [sys.executable, "-c", code]), env=self.env,
                             capture_output=True, text=True, timeout=30, check=True)
        return json.loads(out.stdout)

    def deploy_file(self, name: str, template: str = DEPLOY, outputs: dict[str, Any] | None = None,
                    **values: Any) -> Path:
        folder = self.root / name
        folder.mkdir(mode=0o755)
        (folder / "outputs.json").write_text(json.dumps({
            "function_name": {"sensitive": False, "type": "string", "value": FUNCTION},
            "coordinator_address": {"sensitive": False, "type": "string",
                                    "value": self.lab.coordinator},
            "secret_parameter_name": {"sensitive": False, "type": "string", "value": PARAMETER},
            "region": {"sensitive": False, "type": "string", "value": REGION},
            **{key: {"sensitive": False, "value": value} for key, value in (outputs or {}).items()},
        }))
        path = folder / "deploy.yaml"
        path.write_text(template.format(name=name, **{"concurrency": 5, "register_timeout": 30,
                                                      "restart": "always", **values}))
        for item in (folder, folder / "outputs.json", path):
            item.chmod(0o755 if item.is_dir() else 0o644)
        return path

    def up_as_user(self, *args: str) -> list[str]:
        """`boxer up ARGS` in h2 as an unprivileged user: the lambda backend needs no root."""
        python, path = _unprivileged_python()
        env = ["env", f"PYTHONPATH={path}"] if path else []
        return self.lab.command("h2", [*SETPRIV, *env, python, "-m", "boxer", "up", *args])

    def boxer(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BOXER, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def status(self, name: str) -> dict[str, Any]:
        return labkit.control_status(name, self.env["BOXER_DEPLOY_STATE_ROOT"])

    def stop(self) -> None:
        from boxer.lab import stop_processes

        stop_processes(self.procs, 20)


@pytest.fixture
def aws(lab_factory: Any) -> Any:
    lab = lab_factory(hosts=3)
    root = Path(tempfile.mkdtemp(prefix="boxer-lt-"))
    root.chmod(0o755)
    (root / "state").mkdir()
    os.chown(root / "state", NOBODY, NOBODY)
    aws = Aws(lab, root)
    try:
        aws.start_ssm()
        yield aws
    finally:
        aws.stop()
        shutil.rmtree(root, ignore_errors=True)


SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
_PROBE = "import os, sys; os.execv(sys.executable, [sys.executable, '-c', 'import boxer, boto3'])"


def _unprivileged_python() -> tuple[str, str | None]:
    """A Python the unprivileged user can run, which can also run itself (`boxer up` starts
    the controller with sys.executable), and the PYTHONPATH it needs. Our venv's interpreter
    may link into a directory only root may enter (a pyenv under /root): then the system's
    Python of the same version, with the venv's packages and this checkout on its path."""
    root = str(Path(__file__).resolve().parents[1])
    site = next(p for p in sys.path if p.endswith("site-packages"))
    # PYTHONPATH directories get no .pth processing, and the editable install maps
    # boxer.controller and boxer.nat_traversal through one (a finder): a sitecustomize on the
    # path adds the venv's site-packages as a site directory, .pth files included.
    shim = Path(tempfile.mkdtemp(prefix="bx-site-"))
    shim.chmod(0o755)
    (shim / "sitecustomize.py").write_text(f"import site\nsite.addsitedir({site!r})\n")
    (shim / "sitecustomize.py").chmod(0o644)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python, path in ((sys.executable, root), (f"/usr/bin/{version}", f"{root}:{shim}")):
        probe = subprocess.run([*SETPRIV, "env", f"PYTHONPATH={path}", python, "-c", _PROBE],
                               capture_output=True, timeout=60)
        if probe.returncode == 0:
            return python, path
    pytest.fail(f"no Python that user {NOBODY} can run: {probe.stderr.decode()[-500:]}")


def _down(aws: Aws, name: str) -> subprocess.CompletedProcess[str]:
    return aws.boxer("down", "--name", name, timeout=90)


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.3) -> Any:
    return wait_for(what, predicate, timeout, interval)


def _pids_in(lab: Any, host: str) -> list[str]:
    """Command lines of the processes inside `host`'s namespace."""
    out = subprocess.run(["ip", "netns", "pids", lab.netns(host)], capture_output=True,
                         text=True, check=True).stdout.split()
    lines = []
    for pid in out:
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return lines


def test_up_with_lambda_serves_redis_from_an_invocation_through_the_invoke_api(aws: Aws) -> None:
    name = f"lt{os.getpid() % 100000}"
    aws.start_invoke_api("--throttle-first", "2")
    deploy = aws.deploy_file(name)
    up = subprocess.run(aws.up_as_user("--detach", str(deploy)), env=aws.env,
                        capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        assert f"lambda function {FUNCTION} ({REGION}), coordinator {aws.lab.coordinator}" \
            in up.stdout
        answer = ""
        deadline = time.monotonic() + 45
        while answer != "PONG":
            assert time.monotonic() < deadline, "the Lambda instance never answered"
            proc = aws.lab.run("h3", boxer_run(f"cli{uuid.uuid4().hex[:6]}", "redis-cli", "-h",
                                               "kv", "ping"),
                               capture_output=True, text=True, timeout=30)
            answer = proc.stdout.strip()
            time.sleep(0.3)

        status = aws.status(name)
        assert status["backend"] == "lambda" and status["lab"] is None
        assert (status["function"], status["region"]) == (FUNCTION, REGION)
        assert status["connected"] is True
        (kv,) = status["instances"]
        assert (kv["name"], kv["state"], kv["placement"]) == ("kv-1", "ready", "function")
        uuid.UUID(kv["host"])  # the Invoke request id stands where a lab host would
        backend = status["backend_status"]
        # Invoke was answered 429 twice, then accepted: the backend retried with backoff.
        assert backend["throttled_total"] == 2
        assert backend["concurrency"] == {"limit": 5, "in_use": 1, "waiting": 0}
        assert status["failures"] == []
        text = aws.boxer("status", "--name", name)
        assert "lambda concurrency: 1/5 in use, 0 waiting; throttled 2" in text.stdout, text.stdout
        assert f"lambda function {FUNCTION} ({REGION})" in text.stdout

        stats = aws.invoke_stats()
        assert (stats["throttled"], stats["events"]) == (2, 1)
        assert stats["functions"][FUNCTION]["running"] == 1
        # The instance really runs in an invocation in h1: awslambdaric, handler, agent, app.
        inside = " ".join(_pids_in(aws.lab, "h1"))
        for part in ("awslambdaric", "boxer.backends.aws_lambda.handler.handler", "boxer run", "redis-server"):
            assert part in inside, inside
        # ... and the controller runs as the unprivileged user, in h2, no lab of its own.
        info = json.loads((aws.root / "state" / name / "deployment.json").read_text())
        assert os.stat(f"/proc/{info['controller_pid']}").st_uid == NOBODY
        assert info["lab"] is None and info["outputs"].endswith("outputs.json")

        # `boxer up` again with more concurrency and a longer registration timeout: both
        # apply to the running controller; the instance runs on, untouched.
        deploy.write_text(deploy.read_text().replace("maxConcurrency: 5", "maxConcurrency: 8")
                          .replace("registerTimeoutSeconds: 30", "registerTimeoutSeconds: 45"))
        again = subprocess.run(aws.up_as_user("--detach", str(deploy)), env=aws.env, check=False,
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr + again.stdout
        assert "applied lambda.maxConcurrency: 5 -> 8" in again.stdout, again.stdout
        assert "applied lambda.registerTimeoutSeconds: 30.0 -> 45.0" in again.stdout
        status = aws.status(name)
        assert status["backend_status"]["concurrency"] == {"limit": 8, "in_use": 1, "waiting": 0}
        assert status["register_timeout"] == 45.0
        assert [i["instance_id"] for i in status["instances"]] == [kv["instance_id"]]
    finally:
        down = _down(aws, name)
    assert down.returncode == 0, down.stderr
    assert f"deployment {name} down; controller stopped" in down.stdout
    # The controller stopped the instance through the coordinator: the handler returned, the
    # invocation ended by itself (Lambda has no call to end one), and h1 is empty.
    result = _wait(lambda: aws.invoke_stats()["results"], 30, "the invocation did not end")
    assert result[0]["status"] == "ok", result
    assert result[0]["payload"]["instance"] == "kv-1"
    assert _wait(lambda: not _pids_in(aws.lab, "h1"), 15, "h1 still runs processes")


def test_an_invocation_that_never_registers_fails_with_its_reason_and_is_relaunched(
        aws: Aws) -> None:
    name = f"lv{os.getpid() % 100000}"
    aws.start_invoke_api("--drop")  # 202 for every event, and nothing runs
    # One concurrency slot: the relaunch can only happen if the failure gave the slot back.
    deploy = aws.deploy_file(name, concurrency=1, register_timeout=3, restart="on-failure")
    started = time.monotonic()
    up = subprocess.Popen(aws.up_as_user("--detach", str(deploy)), env=aws.env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = aws.root / "state" / name / "status.json"

    def failures() -> list[dict[str, Any]]:
        try:
            return list(json.loads(state.read_text()).get("failures") or [])
        except (OSError, ValueError):
            return []

    try:
        (first,) = _wait(failures, 20, "no failure was reported", interval=0.1)
        elapsed = time.monotonic() - started
        assert first["name"] == "kv-1" and first["service"] == "kv"
        assert first["reason"].startswith("did not register with the coordinator within 3 s "
                                          "(invocation "), first
        assert first["reason"].endswith(": see the function's log)")
        assert 3.0 <= elapsed < 15.0, elapsed
        # on-failure: relaunched (same name), through the one slot the failure gave back.
        _wait(lambda: aws.invoke_stats()["events"] >= 2, 10, "kv-1 was not relaunched")
        status = aws.status(name)
        assert status["register_timeout"] == 3
        assert status["backend_status"]["concurrency"]["limit"] == 1
        assert status["backend_status"]["concurrency"]["in_use"] <= 1
        # The failed invocation may still be listed while it is being stopped (Lambda cannot
        # end an invocation); exactly one kv-1 is live: its relaunch.
        live = [i["name"] for i in status["instances"] if i["state"] in ("starting", "ready")]
        assert live == ["kv-1"], status["instances"]
        assert status["error"].startswith("kv-1: did not register")
        text = aws.boxer("status", "--name", name).stdout
        assert "recent failures:" in text and "did not register with the coordinator" in text
        assert aws.invoke_stats()["dropped"] >= 2
    finally:
        down = _down(aws, name)
        up.communicate(timeout=90)
    assert down.returncode == 0, down.stderr


def test_a_controller_host_runs_the_lambda_deployment_sent_to_it(aws: Aws) -> None:
    """The lambda backend on a controller host (as on the coordinator's VM): the host runs in h2
    beside the Invoke API with its own outputs and AWS endpoints; `boxer up --controller` (its
    Unix socket here; TLS is tests/test_controller_host.py's), with a state root and context of
    its own and no AWS settings at all, sends only the file. The host runs the preflight, says
    it ignores the file's `lambda.outputs`, starts the invocation; status and down go there."""
    name = f"lh{os.getpid() % 100000}"
    aws.start_invoke_api()
    deploy = aws.deploy_file(name)
    sock = aws.root / "host.sock"
    host = aws._popen("h2", [sys.executable, "-m", "boxer.controller.daemon", "--serve", "--backend", "lambda",
                             "--outputs", str(deploy.parent / "outputs.json"), "--control-socket", str(sock)],
                      "host.log")
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("BOXER_", "AWS_"))}
    cli_env.update(BOXER_DEPLOY_STATE_ROOT=str(aws.root / "cli-state"), BOXER_CONFIG_DIR=str(aws.root / "cli-config"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BOXER, *args], env=cli_env, capture_output=True, text=True, timeout=120)

    _wait(lambda: sock.exists(), 30, "the controller host's socket")
    up = cli("up", "--detach", str(deploy), "--controller", f"unix:{sock}")
    try:
        assert up.returncode == 0, up.stdout + up.stderr + (aws.root / "host.log").read_text()[-3000:]
        assert f"lambda.outputs (outputs.json) names a file of the caller's: this controller uses its own " \
               f"terraform outputs ({deploy.parent / 'outputs.json'})" in up.stdout
        answer = ""
        deadline = time.monotonic() + 45
        while answer != "PONG":
            assert time.monotonic() < deadline, "the Lambda instance never answered"
            proc = aws.lab.run("h3", boxer_run(f"cli{uuid.uuid4().hex[:6]}", "redis-cli", "-h", "kv", "ping"),
                               capture_output=True, text=True, timeout=30)
            answer = proc.stdout.strip()
            time.sleep(0.3)
        seen = cli("status", "-o", "json")
        assert seen.returncode == 0, seen.stderr
        status = json.loads(seen.stdout)
        assert (status["name"], status["backend"], status["function"]) == (name, "lambda", FUNCTION)
        assert [i["state"] for i in status["instances"]] == ["ready"]
        assert not (aws.root / "cli-state").exists()
    finally:
        down = cli("down")
    assert down.returncode == 0 and f"deployment {name} down" in down.stdout, down.stdout + down.stderr
    assert host.poll() is None



def test_a_killed_lambda_controller_host_adopts_its_invocation_instead_of_invoking_again(aws: Aws) -> None:
    """The lambda backend on a controller host, SIGKILLed (by pid) and started again with the
    same command, as systemd's Restart=always does on the coordinator's VM: it resumes the
    deployment from its state root and adopts the running invocation (the same instance id, and
    the Invoke API's signed stats count no second event), then acts on it: Down stops it
    through the coordinator and the invocation ends."""
    name = f"lk{os.getpid() % 100000}"
    aws.start_invoke_api()
    deploy = aws.deploy_file(name)
    sock = aws.root / "host.sock"
    argv = [sys.executable, "-m", "boxer.controller.daemon", "--serve", "--backend", "lambda",
            "--outputs", str(deploy.parent / "outputs.json"), "--control-socket", str(sock)]
    host = aws._popen("h2", argv, "host.log")
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("BOXER_", "AWS_"))}
    cli_env.update(BOXER_DEPLOY_STATE_ROOT=str(aws.root / "cli-state"), BOXER_CONFIG_DIR=str(aws.root / "cli-config"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BOXER, *args], env=cli_env, capture_output=True, text=True, timeout=120)

    def ready_ids() -> set[str]:
        seen = cli("status", "-o", "json")
        if seen.returncode != 0:
            return set()
        return {i["instanceId"] for i in json.loads(seen.stdout)["instances"]
                if i["state"] == "ready" and 6379 in i.get("listeningPorts", [])}

    _wait(lambda: sock.exists(), 30, "the controller host's socket")
    up = cli("up", "--detach", str(deploy), "--controller", f"unix:{sock}")
    try:
        assert up.returncode == 0, up.stdout + up.stderr + (aws.root / "host.log").read_text()[-3000:]
        before = _wait(ready_ids, 45, "the invocation's redis listening")
        assert len(before) == 1 and aws.invoke_stats()["events"] == 1

        os.kill(host.pid, signal.SIGKILL)  # `ip netns exec` execs: the pid is the host's own
        host.wait(10)
        killed_at = time.monotonic()
        sock.unlink(missing_ok=True)
        host = aws._popen("h2", argv, "host-again.log")
        assert _wait(lambda: ready_ids() == before, 45, "the invocation adopted")
        print(f"the invocation shown again {time.monotonic() - killed_at:.2f} s after the SIGKILL")
        time.sleep(2)  # ticks enough for a second invocation, were it to come
        assert aws.invoke_stats()["events"] == 1, "the resumed host invoked again"
        assert ready_ids() == before
        assert "resumed the deployment: 1 running, 0 starting adopted" in (aws.root / "host-again.log").read_text()
    finally:
        down = cli("down")
    assert down.returncode == 0 and "stopped 1 instance(s)" in down.stdout, down.stdout + down.stderr
    _wait(lambda: aws.invoke_stats()["results"], 30, "the adopted invocation to end")
    assert aws.invoke_stats()["events"] == 1
    assert host.poll() is None


MIXED = """
name: {name}
backend: lambda
lambda:
  outputs: outputs.json
  maxConcurrency: 5
services:
  kv:
    command: [redis-server, --port, "6379", --save, "", --protected-mode, "no"]
    placement: function
    baseCapacity: 1
    minInstances: 2
    maxInstances: 2
    maxLifetimeSeconds: 300
"""
VM_GROUP = "boxer-lt-vm-hosts"
VM_TOKEN = "/boxer/lt/vm-host-token"


@pytest.fixture
def aws_vm(lab_factory: Any) -> Any:
    """As `aws`, with a public host p1 standing in for an EC2 vm host: moto's EC2 and Auto
    Scaling hold a group whose one InService instance has p1's address, and p1 runs the host
    daemon as the vm hosts' unit would."""
    lab = lab_factory(hosts=3, public=1)
    root = Path(tempfile.mkdtemp(prefix="boxer-lv-"))
    root.chmod(0o755)
    (root / "state").mkdir()
    os.chown(root / "state", NOBODY, NOBODY)
    aws = Aws(lab, root)
    address = lab.public_host("p1").address
    # The hosts' own token, as terraform makes it (random, not derived): the controller must read it.
    token_file = root / "vm-host-token"
    token_file.write_text(os.urandom(32).hex() + "\n")
    try:
        aws.start_ssm("--vm-group", VM_GROUP, "--vm-host", address, "--also", f"{VM_TOKEN}={token_file}")
        daemon = aws._popen("p1", [*BOXER, "host", "serve", "--listen", f"{address}:7100", "--token-file",
                                   str(token_file), "--name", "p1"], "host-daemon.log")
        line = _read_line(daemon, 30, "boxer host serve")
        assert f"serving on {address}:7100" in line, line
        yield aws
    finally:
        aws.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_up_with_lambda_runs_the_vm_base_on_a_vm_host_found_through_ec2(aws_vm: Aws) -> None:
    """The whole lambda path with a vm tier: the controller (unprivileged, in h2) reads the outputs'
    vm_host_group and the hosts' token from SSM, lists the group through aiobotocore (moto's EC2
    and Auto Scaling), and has the
    daemon on p1 start kv's base instance; the burst instance is an invocation in h1. Clients reach
    kv by name; a killed vm app is replaced on the vm host; down stops it through the daemon."""
    aws = aws_vm
    name = f"lw{os.getpid() % 100000}"
    aws.start_invoke_api()
    deploy = aws.deploy_file(name, template=MIXED, outputs={"vm_host_group": VM_GROUP, "vm_host_port": 7100,
                                                            "vm_host_token_parameter_name": VM_TOKEN})
    up = subprocess.run(aws.up_as_user("--detach", str(deploy)), env=aws.env, capture_output=True, text=True,
                        timeout=120)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        status = _wait(lambda: (s := aws.status(name)) and len(
            [i for i in s["instances"] if i["state"] == "ready"]) == 2 and s, 60, "both kv instances ready")
        by_placement = {i["placement"]: i for i in status["instances"]}
        vm, function = by_placement["vm"], by_placement["function"]
        assert vm["host"] == "p1", vm  # the daemon's name for its host
        uuid.UUID(function["host"])  # an Invoke request id
        on_p1 = " ".join(_pids_in(aws.lab, "p1"))
        assert "boxer host serve" in on_p1 and "boxer run" in on_p1 and "redis-server" in on_p1, on_p1
        assert "redis-server" in " ".join(_pids_in(aws.lab, "h1"))
        assert status["backend_status"]["vm"] == {"hosts": 1, "reachable": 1, "slots": 1, "in_use": 1,
                                                  "launched_total": 1}
        text = aws.boxer("status", "--name", name).stdout
        assert "vm hosts: 1/1 reachable, 1/1 slots in use" in text, text
        answer = ""
        deadline = time.monotonic() + 45
        while answer != "PONG":
            assert time.monotonic() < deadline, "kv never answered"
            proc = aws.lab.run("h3", boxer_run(f"cli{uuid.uuid4().hex[:6]}", "redis-cli", "-h", "kv", "ping"),
                               capture_output=True, text=True, timeout=30)
            answer = proc.stdout.strip()
            time.sleep(0.3)
        # Kill the vm app: the controller hears its exit from the daemon and starts another there.
        app = subprocess.run(["pgrep", "-P", str(vm["pid"])], capture_output=True, text=True).stdout.split()
        assert app, "the vm agent has no app child"
        os.kill(int(app[0]), 9)
        new = _wait(lambda: next((i for i in aws.status(name)["instances"] if i["placement"] == "vm"
                                  and i["state"] == "ready" and i["instance_id"] != vm["instance_id"]), None),
                    45, "a ready vm replacement")
        assert new["host"] == "p1" and new["pid"] != vm["pid"]
    finally:
        down = _down(aws, name)
    assert down.returncode == 0, down.stderr
    # The daemon stopped the vm instance; p1 runs the daemon alone again.
    _wait(lambda: not [c for c in _pids_in(aws.lab, "p1") if "host serve" not in c], 20, "p1 still runs an instance")
