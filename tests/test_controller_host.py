"""The controller beside the coordinator, in the lab: a controller host (`python -m
boxer.controller.daemon --serve`) runs in the lab's coordinator namespace, and the CLI, in another
lab host, reaches it only through the control API (TLS and a token on the coordinator's lab
address): `boxer up --controller` sends the file, the CLI is killed (SIGKILL) in the middle of a
scale-out, the deployment finishes it, a fresh CLI's `boxer status` shows it, `boxer down` ends it.

The CLI runs with a state root and a context of its own (empty folders), the host with another:
nothing the CLI does can read the deployment's files, so what it shows came through the API."""

from __future__ import annotations

import json
import os
import shutil
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
    pytest.skip("controller host lab tests need root (network namespaces, iptables)", allow_module_level=True)
if shutil.which("openssl") is None:
    pytest.skip("openssl is not installed: no certificate for the controller's TLS", allow_module_level=True)

PORT = 7443
SERVER_NAME = "boxer-controller"  # what terraform's certificate is made for (coordinator-user-data)
DEPLOY = """
name: {name}
services:
  kv:
    # Slow to listen, so that the CLI is surely killed while the scale-out is under way.
    command: [sh, -c, "sleep 4; exec redis-server --port 6379 --save '' --protected-mode no"]
    placement: function
    baseCapacity: 1                # the first instance on a vm host, the rest a function burst
    minInstances: {count}
    maxInstances: {count}
"""


def _credentials(folder: Path) -> tuple[Path, Path, Path, Path]:
    key, cert, token = folder / "control.key", folder / "control.crt", folder / "control-token"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={SERVER_NAME}",
                    "-addext", f"subjectAltName=DNS:{SERVER_NAME}"], check=True, capture_output=True)
    token.write_text(os.urandom(24).hex() + "\n")
    wrong = folder / "wrong-token"
    wrong.write_text(os.urandom(24).hex() + "\n")
    return key, cert, token, wrong


@pytest.fixture
def lab():
    from boxer.lab import lab_down, lab_up

    name = f"ch{os.getpid() % 10000}"
    # p1: the vm base; h1-h5: the function burst (3, and a renewal's overlap); h6: the CLI
    made = lab_up(name, 6, public=1)
    try:
        yield made
    finally:
        lab_down(name)


def _end_host(host: subprocess.Popen, host_log, tmp_path: Path) -> None:
    """Ends a test's controller host (SIGTERM: it leaves what still runs to the lab's teardown)
    and prints the end of its log, which is what a failed test needs to be read."""
    host.send_signal(signal.SIGTERM)
    try:
        host.wait(30)
    except subprocess.TimeoutExpired:
        host.kill()
        host.wait()
    host_log.close()
    print((tmp_path / "host.log").read_text()[-3000:])


@pytest.mark.parametrize("backend", ["local", "lambda-local"])
def test_the_deployment_outlives_its_cli_and_the_cli_sees_it_only_through_the_api(lab, tmp_path, backend):
    """A mixed deployment (a vm base and a function burst) on the local backend, and on
    lambda-local (function instances as local Lambda invocations, the vm one through the public
    host's host daemon, as on AWS)."""
    if backend == "lambda-local":
        import importlib.util

        if importlib.util.find_spec("awslambdaric") is None:
            pytest.skip("awslambdaric is not installed (pip install '.[test]')")
    key, cert, token, wrong = _credentials(tmp_path)
    host_ip = lab.coordinator.rpartition(":")[0]
    work = tmp_path / "work"
    work.mkdir()
    host_env = {**lab.env("coord"), "BOXER_DEPLOY_STATE_ROOT": str(tmp_path / "host-state")}
    host_log = open(tmp_path / "host.log", "wb")  # noqa: SIM115
    host = subprocess.Popen(
        lab.command("coord", [sys.executable, "-m", "boxer.controller.daemon", "--serve", "--backend", backend,
                              "--lab", lab.name, "--workdir", str(work), "--tick", "0.2",
                              "--control-socket", str(tmp_path / "host.sock"),
                              "--control-listen", f"{host_ip}:{PORT}", "--control-cert", str(cert),
                              "--control-key", str(key), "--control-token-file", str(token)]),
        env=host_env, stdout=host_log, stderr=subprocess.STDOUT)
    cli_env = {**os.environ, "BOXER_DEPLOY_STATE_ROOT": str(tmp_path / "cli-state"),
               "BOXER_CONFIG_DIR": str(tmp_path / "cli-config")}
    cli_env.pop("BOXER_CONTROLLER", None)
    reach = ["--controller", f"{host_ip}:{PORT}", "--controller-ca", str(cert),
             "--controller-token-file", str(token), "--controller-server-name", SERVER_NAME]
    name = f"kv{os.getpid() % 10000}"
    deploy = tmp_path / "app" / "deploy.yaml"
    deploy.parent.mkdir()

    def cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(lab.command("h6", [*BOXER, *argv]), env=cli_env, capture_output=True, text=True,
                              timeout=timeout)

    def status() -> dict:
        seen = cli("status", "-o", "json", timeout=30)
        assert seen.returncode == 0, seen.stderr
        return json.loads(seen.stdout)

    def ready(status: dict) -> list[dict]:
        return [i for i in status["instances"] if i["state"] == "ready" and 6379 in i.get("listeningPorts", [])]

    try:
        labkit.wait_for("the controller host to listen", lambda: "waiting for a deployment" in
                        (tmp_path / "host.log").read_text(), timeout=30)
        # Between deployments the host says so; a wrong token is refused, in one line.
        idle = cli("status", *reach)
        assert idle.returncode == 0 and "No deployment runs on the controller at" in idle.stdout, idle
        refused = cli("status", *reach[:4], "--controller-token-file", str(wrong),
                      "--controller-server-name", SERVER_NAME)
        assert refused.returncode == 1 and "refused the credential" in refused.stderr, refused
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr

        deploy.write_text(DEPLOY.format(name=name, count=1))
        up = cli("up", "--wait", str(deploy), *reach, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"deployment {name} sent to the controller at {host_ip}:{PORT}" in up.stdout
        assert len(ready(status())) == 1  # the context remembers where it runs: no options now

        # Scale out to 4, and kill the CLI while it shows the progress.
        deploy.write_text(DEPLOY.format(name=name, count=4))
        applying = subprocess.Popen(lab.command("h6", [*BOXER, "up", str(deploy)]), env=cli_env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        assert applying.stdout is not None
        for line in applying.stdout:
            seen.append(line)
            if "applied services.kv.minInstances: 1 -> 4" in line:
                break
        # `ip netns exec` execs: the pid is the CLI's own, and nothing of it can run on.
        assert b"boxer" in Path(f"/proc/{applying.pid}/cmdline").read_bytes()
        os.kill(applying.pid, signal.SIGKILL)
        applying.wait(10)
        applying.stdout.close()
        assert applying.returncode == -signal.SIGKILL, "".join(seen)
        assert len(ready(status())) < 4, "the scale-out had finished before the CLI was killed"
        killed_at = time.monotonic()

        # The deployment finishes it: four redis listening, as a fresh CLI sees through the API.
        def four() -> dict | None:
            now = status()
            return now if len(ready(now)) == 4 else None

        final = labkit.wait_for("four instances listening", four, timeout=60)
        print(f"scale-out finished {time.monotonic() - killed_at:.1f} s after the CLI was killed")
        assert final["name"] == name and final["services"]["kv"]["desiredInstances"] == 4
        assert sorted(i["placement"] for i in ready(final)) == ["function", "function", "function", "vm"]
        assert {i["host"] for i in ready(final) if i["placement"] == "function"} <= {"h1", "h2", "h3", "h4", "h5"}
        (vm,) = [i for i in ready(final) if i["placement"] == "vm"]
        assert vm["host"].startswith("p"), vm
        text = cli("status")
        assert text.returncode == 0 and text.stdout.count(" ready ") >= 4, text.stdout
        ping = subprocess.run(lab.command("h6", [*BOXER, "run", "--name", "cli", "--", "redis-cli", "-h", "kv",
                                                 "ping"]),
                              env=lab.env("h6"), capture_output=True, text=True, timeout=30)
        assert ping.stdout.strip() == "PONG", ping

        # Nothing of the deployment on the CLI's side: it all lives with the host.
        assert not (tmp_path / "cli-state").exists() or not any((tmp_path / "cli-state").iterdir())
        assert (tmp_path / "host-state" / name / "deployment.json").exists()

        down = cli("down", timeout=90)
        assert down.returncode == 0, down.stderr
        assert f"deployment {name} down" in down.stdout and "stopped 4 instance(s)" in down.stdout, down.stdout
        after = cli("status")
        assert "No deployment runs on the controller at" in after.stdout, after
        record = json.loads((tmp_path / "host-state" / name / "deployment.json").read_text())
        assert record["down_at"] and record["controller_pid"] is None
        assert host.poll() is None, "the host must wait for the next deployment"
    finally:
        _end_host(host, host_log, tmp_path)


def test_up_passes_the_tcp_listener_to_the_controller_it_starts(tmp_path):
    """`boxer up --control-listen` on this machine: the controller it starts (in the lab's
    coordinator namespace) serves the control API on the coordinator's lab address too, and a
    CLI in a lab host, with none of the deployment's files, reads its status there."""
    key, cert, token, _ = _credentials(tmp_path)
    name = f"tl{os.getpid() % 10000}"
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(DEPLOY.format(name=name, count=1).replace("sleep 4; ", ""))
    from boxer.controller.paths import DeployPaths, read_json

    try:
        up = subprocess.run([*BOXER, "up", "--wait", str(deploy), "--control-cert", str(cert)],
                            capture_output=True, text=True, timeout=60)
        assert up.returncode == 1 and up.stderr == (
            "boxer: --control-cert go with --control-listen HOST:PORT\n"), up.stderr
        from boxer.controller.lab_room import lab_name
        from boxer.lab import lab_plan

        coordinator = lab_plan(lab_name(name), 2).coordinator.rpartition(":")[0]
        up = subprocess.run([*BOXER, "up", "--wait", str(deploy), "--control-listen", f"{coordinator}:{PORT}",
                             "--control-cert", str(cert), "--control-key", str(key), "--control-token-file",
                             str(token)], capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        lab = read_json(DeployPaths(name).deployment)["lab"]
        from boxer.lab import load_lab

        made = load_lab(lab)
        last = f"h{len(made.hosts)}"
        env = {**os.environ, "BOXER_DEPLOY_STATE_ROOT": str(tmp_path / "cli-state"),
               "BOXER_CONFIG_DIR": str(tmp_path / "cli-config")}
        seen = subprocess.run(made.command(last, [*BOXER, "status", "-o", "json", "--controller",
                                                  f"{coordinator}:{PORT}", "--controller-ca", str(cert),
                                                  "--controller-token-file", str(token),
                                                  "--controller-server-name", SERVER_NAME]),
                              env=env, capture_output=True, text=True, timeout=30)
        assert seen.returncode == 0, seen.stderr
        status = json.loads(seen.stdout)
        assert status["name"] == name and [i["state"] for i in status["instances"]] == ["ready"]
    finally:
        labkit.deployment_down(name)


RESUME = """
name: {name}
services:
  kv:
    command: [redis-server, --port, "6379", --save, "", --protected-mode, "no"]
    placement: function
    minInstances: {count}
    maxInstances: {count}
"""


def _redis_hosts(lab) -> int:
    """How many of h1-h5 run a redis-server (an instance's app), read from the namespaces."""
    count = 0
    for host in ("h1", "h2", "h3", "h4", "h5"):
        pids = subprocess.run(["ip", "netns", "pids", lab.netns(host)], capture_output=True, text=True).stdout.split()
        names = []
        for pid in pids:
            try:
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
            except OSError:
                pass
        count += "redis-server" in names
    return count


@pytest.fixture
def small_lab():
    from boxer.lab import lab_down, lab_up

    name = f"cr{os.getpid() % 10000}"
    made = lab_up(name, 5)  # h1-h5: three instances and two spares (the lab rule); no public host
    try:
        yield made
    finally:
        lab_down(name)


@pytest.mark.parametrize(("backend", "how"), [("lambda-local", "SIGKILL"), ("local", "SIGKILL"),
                                               ("lambda-local", "SIGTERM")])
def test_a_killed_controller_host_resumes_its_deployment_without_launching_it_again(small_lab, tmp_path, backend,
                                                                                    how):
    """SIGKILL the controller host (lambda-local: its instances are local Lambda invocations;
    local: `boxer run` forked from the agent zygote, which exits with the host; either way each
    in a session of its own, and they run on), start it again with the same command: it adopts
    the two instances the coordinator still lists (no third launch, the same instance ids), then
    goes on deciding: an Apply of minInstances 3 starts exactly one more, and Down stops all
    three and leaves nothing to resume.

    SIGTERM (systemd's restart, `docker stop`, a reboot) is the same for the deployment: the
    host exits 0, having stopped nothing, and the next start adopts the same two; only Down
    ends them."""
    import importlib.util

    if backend == "lambda-local" and importlib.util.find_spec("awslambdaric") is None:
        pytest.skip("awslambdaric is not installed (pip install '.[test]')")
    lab = small_lab
    sock = tmp_path / "host.sock"
    state = tmp_path / "host-state"
    host_env = {**lab.env("coord"), "BOXER_DEPLOY_STATE_ROOT": str(state)}
    argv = lab.command("coord", [sys.executable, "-m", "boxer.controller.daemon", "--serve", "--backend",
                                 backend, "--lab", lab.name, "--workdir", str(tmp_path), "--tick", "0.2",
                                 "--control-socket", str(sock)])
    host_log = open(tmp_path / "host.log", "ab")  # noqa: SIM115

    def start_host() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=host_env, stdout=host_log, stderr=subprocess.STDOUT)

    cli_env = {**os.environ, "BOXER_DEPLOY_STATE_ROOT": str(tmp_path / "cli-state"),
               "BOXER_CONFIG_DIR": str(tmp_path / "cli-config")}
    cli_env.pop("BOXER_CONTROLLER", None)
    name = f"rs{os.getpid() % 10000}"
    deploy = tmp_path / "app" / "deploy.yaml"
    deploy.parent.mkdir()

    def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BOXER, *args], env=cli_env, capture_output=True, text=True, timeout=timeout)

    def ready() -> list[dict]:
        seen = cli("status", "-o", "json", timeout=30)
        if seen.returncode != 0:
            return []
        return [i for i in json.loads(seen.stdout)["instances"]
                if i["state"] == "ready" and 6379 in i.get("listeningPorts", [])]

    def _exactly(count: int, rows: list[dict]) -> list[dict] | None:
        return rows if len(rows) == count else None

    def starts() -> int:  # decide()'s Start decisions in the host's log, over both runs
        return (tmp_path / "host.log").read_text().count('"message": "start kv-')

    host = start_host()
    try:
        labkit.wait_for("the controller host's socket", sock.exists, timeout=30)
        deploy.write_text(RESUME.format(name=name, count=2))
        up = cli("up", "--wait", str(deploy), "--controller", f"unix:{sock}", timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        before = labkit.wait_for("two instances listening", lambda: _exactly(2, ready()),
                                 timeout=60)
        ids = {i["instanceId"] for i in before}
        assert starts() == 2 and (state / "host" / "current.json").exists()

        os.kill(host.pid, getattr(signal, how))  # `ip netns exec` execs: the pid is the host's own
        code = host.wait(30)
        killed_at = time.monotonic()
        if how == "SIGTERM":
            assert code == 0 and not sock.exists()
            assert _redis_hosts(lab) == 2  # both instances run on with no controller
            assert (state / "host" / "current.json").exists() and (state / name / "roster.json").exists()
            assert f"deployment {name} left running for the next controller" in (tmp_path / "host.log").read_text()
        sock.unlink(missing_ok=True)  # what a SIGKILL leaves, so that its return is seen
        host = start_host()
        after = labkit.wait_for("the two instances adopted", lambda: _exactly(2, ready()),
                                timeout=60)
        print(f"status served again with both instances {time.monotonic() - killed_at:.2f} s after the {how}")
        assert {i["instanceId"] for i in after} == ids
        time.sleep(2)  # ten ticks: time enough for a duplicate launch
        assert starts() == 2, "the resumed host launched what ran already"
        assert "resumed the deployment: 2 running, 0 starting adopted" in (tmp_path / "host.log").read_text()
        assert {i["instanceId"] for i in ready()} == ids

        # It goes on deciding: a scale-out to 3 starts one instance, beside the adopted two.
        deploy.write_text(RESUME.format(name=name, count=3))
        applied = cli("up", "--wait", str(deploy), timeout=120)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        three = labkit.wait_for("three instances listening", lambda: _exactly(3, ready()),
                                timeout=60)
        assert ids < {i["instanceId"] for i in three} and starts() == 3

        refused = cli("rm", name)  # the context's deployment runs there: not forgotten
        assert refused.returncode == 1 and f"deployment {name!r} is running on the controller at unix:{sock}" \
            in refused.stderr, refused
        down = cli("down", timeout=90)
        assert down.returncode == 0 and "stopped 3 instance(s)" in down.stdout, down.stdout + down.stderr
        assert f"`boxer rm {name}` forgets it" in down.stdout
        assert not (state / "host" / "current.json").exists() and not (state / name / "roster.json").exists()
        assert host.poll() is None
        forgot = cli("rm", name)  # now the context forgets the controller: commands act here again
        assert forgot.returncode == 0 and forgot.stdout.strip() == f"forgot deployment {name} on the controller " \
            f"at unix:{sock}", forgot
        assert "controller" not in json.loads((tmp_path / "cli-config" / "context.json").read_text())

        def lab_empty() -> bool:  # the adopted two, which no process of the host's parents, too
            return not any(subprocess.run(["ip", "netns", "pids", lab.netns(h)], capture_output=True,
                                          text=True).stdout.split() for h in ("h1", "h2", "h3", "h4", "h5"))

        labkit.wait_for("every instance's processes to end", lab_empty, timeout=20)
    finally:
        _end_host(host, host_log, tmp_path)


VM_RESUME = """
name: {name}
services:
  kv:
    command: [redis-server, --port, "6379", --save, "", --protected-mode, "no"]
    placement: vm
    minInstances: 1
    maxInstances: 1
"""


@pytest.fixture
def vm_lab():
    from boxer.lab import lab_down, lab_up

    name = f"cv{os.getpid() % 10000}"
    made = lab_up(name, 2, public=2)  # p1, p2: the vm hosts, each with its host daemon; h1, h2 idle
    try:
        yield made
    finally:
        lab_down(name)


def _daemons(lab, host: str) -> list[int]:
    """Pids of the `boxer host serve` processes in lab host `host`."""
    pids = subprocess.run(["ip", "netns", "pids", lab.netns(host)], capture_output=True, text=True).stdout.split()
    found = []
    for pid in pids:
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"host" in words and b"serve" in words:
            found.append(int(pid))
    return found


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_resumed_lambda_local_host_uses_the_host_daemons_it_left(vm_lab, tmp_path, how):
    """lambda-local's vm tier: the host daemons on the lab's public hosts are the controller's
    children (each in a session of its own), and outlive it with the vm instance they run. The
    restarted host finds them on their port (they answer its token) and uses them: one daemon
    per host, the same pids, the vm instance adopted (same id, same pid, bound to its daemon),
    and Down stops the instance through its daemon and then the daemons."""
    import importlib.util

    if importlib.util.find_spec("awslambdaric") is None:
        pytest.skip("awslambdaric is not installed (pip install '.[test]')")
    lab = vm_lab
    sock = tmp_path / "host.sock"
    host_env = {**lab.env("coord"), "BOXER_DEPLOY_STATE_ROOT": str(tmp_path / "host-state")}
    argv = lab.command("coord", [sys.executable, "-m", "boxer.controller.daemon", "--serve", "--backend",
                                 "lambda-local", "--lab", lab.name, "--workdir", str(tmp_path), "--tick", "0.2",
                                 "--control-socket", str(sock)])
    host_log = open(tmp_path / "host.log", "ab")  # noqa: SIM115
    cli_env = {**os.environ, "BOXER_DEPLOY_STATE_ROOT": str(tmp_path / "cli-state"),
               "BOXER_CONFIG_DIR": str(tmp_path / "cli-config")}
    cli_env.pop("BOXER_CONTROLLER", None)
    name = f"vr{os.getpid() % 10000}"
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(VM_RESUME.format(name=name))

    def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BOXER, *args], env=cli_env, capture_output=True, text=True, timeout=timeout)

    def ready() -> list[dict]:
        seen = cli("status", "-o", "json", timeout=30)
        if seen.returncode != 0:
            return []
        return [i for i in json.loads(seen.stdout)["instances"]
                if i["state"] == "ready" and 6379 in i.get("listeningPorts", [])]

    host = subprocess.Popen(argv, env=host_env, stdout=host_log, stderr=subprocess.STDOUT)
    try:
        labkit.wait_for("the controller host's socket", sock.exists, timeout=30)
        up = cli("up", "--wait", str(deploy), "--controller", f"unix:{sock}", timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        (before,) = labkit.wait_for("the vm instance listening", lambda: ready() or None, timeout=60)
        daemons = {h: _daemons(lab, h) for h in ("p1", "p2")}
        assert all(len(pids) == 1 for pids in daemons.values()), daemons

        os.kill(host.pid, getattr(signal, how))
        host.wait(30)
        sock.unlink(missing_ok=True)
        assert {h: _daemons(lab, h) for h in ("p1", "p2")} == daemons  # they outlive the controller
        host = subprocess.Popen(argv, env=host_env, stdout=host_log, stderr=subprocess.STDOUT)
        (after,) = labkit.wait_for("the vm instance adopted", lambda: ready() or None, timeout=60)
        assert after["instanceId"] == before["instanceId"] and after["host"] == before["host"]
        labkit.wait_for("the adopted instance bound to its daemon", lambda: "adopted kv-1 on vm host" in
                        (tmp_path / "host.log").read_text(), timeout=20)
        assert {h: _daemons(lab, h) for h in ("p1", "p2")} == daemons, "a second daemon beside the first"
        assert "runs already; using it" in (tmp_path / "host.log").read_text()
        time.sleep(1)
        assert [i["instanceId"] for i in ready()] == [before["instanceId"]]

        down = cli("down", timeout=90)
        assert down.returncode == 0 and "stopped 1 instance(s)" in down.stdout, down.stdout + down.stderr
        labkit.wait_for("the daemons and the instance to end", lambda: not any(
            subprocess.run(["ip", "netns", "pids", lab.netns(h)], capture_output=True, text=True).stdout.split()
            for h in ("p1", "p2")), timeout=20)
        assert host.poll() is None
    finally:
        _end_host(host, host_log, tmp_path)
