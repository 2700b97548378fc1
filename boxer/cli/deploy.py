"""`boxer up / status / top / down / report`: a whole deployment from its file.

A thin click layer. `up` validates the file; for the lab backends (`local`, `lambda-local`) it
makes a lab sized for it and starts the controller (`boxer.controller.daemon`) beside the coordinator;
for `lambda` it checks the terraform outputs, the secret in SSM, the function and the
coordinator (one clear line on the first problem, nothing started) and runs the controller
here. It shows progress until the services are up, then stays in the foreground (Ctrl-C =
down) unless --detach. The controller writes status.json and timeline.jsonl under
/run/boxer/deploy/<name>/ (see controller/paths.py); `status`, `top` and `report` only read
those files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

DEBUG_ENV = "BOXER_DEBUG"  # set it to see tracebacks instead of one-line errors
UP_TIMEOUT = 60.0  # seconds `boxer up` waits for the services' first instances


class DeployError(click.ClickException):
    """A user error: shown as one line, no traceback (unless BOXER_DEBUG is set)."""

    def show(self, file: Any = None) -> None:
        click.echo(f"boxer: {self.message}", err=True)


def _paths(name: str) -> Any:
    from boxer.controller.paths import DeployPaths

    try:
        return DeployPaths(name)
    except ValueError as exc:
        raise DeployError(str(exc)) from None


def _default_name(file: Path, declared: str | None) -> str:
    if declared:
        return declared
    stem = re.sub(r"[^a-z0-9-]+", "-", file.resolve().parent.name.lower()
                  if file.stem == "deploy" else file.stem.lower()).strip("-")
    return stem[:63] or "deployment"


def _lab_name(name: str) -> str:
    """Lab names are 1-10 of a-z0-9: squeeze the deployment's name into that."""
    squeezed = re.sub(r"[^a-z0-9]", "", name)
    return (squeezed[:8] or "deploy") + "d"  # `d` marks a deployment's lab in `boxer lab ls`


def _controller_alive(info: dict[str, Any] | None) -> bool:
    pid = (info or {}).get("controller_pid")
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"boxer.controller.daemon" in cmdline  # a recycled pid is not ours


def _resolve_name(name: str | None) -> str:
    from boxer.controller.paths import list_deployments, read_json

    if name:
        return name
    running = [n for n in list_deployments()
               if _controller_alive(read_json(_paths(n).deployment))]
    if len(running) == 1:
        return running[0]
    if not running:
        known = list_deployments()
        if len(known) == 1:
            return known[0]
        raise DeployError("no deployment is running: start one with `boxer up FILE`")
    raise DeployError(f"several deployments run ({', '.join(running)}): pick one with --name")


# -- up --------------------------------------------------------------------------------------

@click.command("up")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="Deployment name [default: `name` in FILE, else the file's name].")
@click.option("--backend", type=click.Choice(["local", "lambda", "lambda-local"]),
              help="Where instances run [default: `backend` in FILE, i.e. local].")
@click.option("--detach", is_flag=True, help="Return once up; `boxer down` stops it.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Serve Prometheus metrics on 127.0.0.1:PORT (/metrics).")
@click.option("--tick", type=click.FloatRange(0.05, 5.0), default=0.25, show_default=True,
              metavar="SECONDS", help="How often the controller decides.")
@click.option("--outputs", type=click.Path(dir_okay=False, path_type=Path),
              help="lambda backend: the `terraform output -json` file [default: "
                   "$BOXER_TF_OUTPUTS, else `lambda.outputs` in FILE].")
@click.option("--register-timeout", type=click.FloatRange(1, 900), metavar="SECONDS",
              help="An instance that has not registered with the coordinator this long after "
                   "its launch has failed [default: lambda.registerTimeoutSeconds, 30].")
def up_command(file: Path, name: str | None, backend: str | None, detach: bool,
               metrics_port: int | None, tick: float, outputs: Path | None,
               register_timeout: float | None) -> None:
    """Bring up the deployment in FILE and run its controller.

    On a deployment that is already up, apply the edited FILE to it instead: instance counts,
    `autoscale`, `restartPolicy`, `partition` and `lambda.maxConcurrency` change at the
    controller's next tick; a new command or env is rolled out (each instance replaced once its
    successor listens); a service added starts; a new placement or a service removed is
    refused, naming the fields.

    \b
    Examples:
      boxer up examples/web-autoscale/deploy.yaml          # foreground; Ctrl-C takes it down
      boxer up --detach deploy.yaml && boxer status
      boxer up deploy.yaml --backend lambda --outputs outputs.json   # AWS (docs/aws.md)
      boxer up deploy.yaml     # again, after raising minInstances: applied while it runs
    """
    from boxer.controller.errors import DeploymentFileError
    from boxer.controller.validate import load_deployment

    try:
        deployment = load_deployment(file, backend=backend)
    except DeploymentFileError as exc:
        click.echo(f"{file}: {len(exc.issues)} problem(s)", err=True)
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        raise SystemExit(1) from None
    name = name or _default_name(file, deployment.name)
    from boxer.controller.paths import read_json

    if _controller_alive(read_json(_paths(name).deployment)):
        _reapply(file, deployment, name)
        return
    backend = deployment.backend.value
    lambda_record: dict[str, Any] | None = None
    if backend == "lambda":
        lambda_record = _lambda_preflight(file, deployment, outputs)
        if register_timeout is None:
            register_timeout = lambda_record.pop("register_timeout")
    elif os.geteuid() != 0:
        raise DeployError(f"the {backend} backend runs instances in a lab, which needs root "
                          "(network namespaces, iptables)")
    started = time.monotonic()
    up = _bring_up(file, deployment, name, metrics_port, tick, detach, backend,
                   register_timeout=register_timeout, lambda_record=lambda_record)
    try:
        ready = _show_progress(up.paths, deployment, started, up.proc)
        if not detach:
            click.echo("controller running; Ctrl-C takes the deployment down")
            _wait_foreground(up)
            return
        if not ready:
            click.echo("boxer: not every service came up in time; see `boxer status` and "
                       f"{up.paths.root}/", err=True)
        click.echo(f"detached: `boxer status --name {name}`, `boxer down --name {name}`")
        # We exit without waiting for it (init adopts it); tell Popen so, or it would warn.
        up.proc.returncode = 0
    except KeyboardInterrupt:
        click.echo("\ninterrupted: taking the deployment down", err=True)
        _down(name)
        raise SystemExit(130) from None


def _lambda_preflight(file: Path, deployment: Any, outputs: Path | None) -> dict[str, Any]:
    """Everything `--backend lambda` needs, checked before anything starts: the outputs file,
    the secret in SSM (standard credential chain), the function, the coordinator. The secret
    is only used to open a test session; the controller reads it again itself."""
    from boxer.backends.aws_lambda.preflight import SetupError, load_facts, outputs_path, preflight
    from boxer.controller.spec import LambdaSettings

    settings = deployment.lambda_ or LambdaSettings()
    try:
        path = outputs_path(outputs, os.environ, settings.outputs, file.resolve().parent)
        facts = load_facts(path)
        preflight(facts, path)
    except SetupError as exc:
        raise DeployError(str(exc)) from None
    slots = _concurrency_slots(settings, facts)
    return {"outputs": str(path.resolve()), "function": facts.function_name,
            "region": facts.region, "coordinator": facts.coordinator_address,
            "max_concurrency": slots,
            "register_timeout": settings.register_timeout_seconds}


@dataclass
class _Up:
    paths: Any
    proc: subprocess.Popen[bytes]
    name: str


def _bring_up(file: Path, deployment: Any, name: str, metrics_port: int | None, tick: float,
              detach: bool, backend: str = "local", *, register_timeout: float | None = None,
              lambda_record: dict[str, Any] | None = None) -> _Up:
    from boxer.controller.paths import read_json, write_json_atomic

    paths = _paths(name)
    info = read_json(paths.deployment)
    if _controller_alive(info):
        raise DeployError(f"deployment {name!r} is already up: `boxer down --name {name}` first")
    if info and info.get("lab"):
        from boxer.lab import lab_down

        lab_down(info["lab"])  # what a crashed run left behind
    paths.make()
    shutil.copyfile(file, paths.applied_file)  # what runs, whatever happens to FILE later
    paths.next_file.unlink(missing_ok=True)
    paths.reapplied.unlink(missing_ok=True)
    paths.timeline.write_text("")  # a new run, a new timeline
    (paths.root / "load.jsonl").unlink(missing_ok=True)  # and no load steps of an earlier run
    paths.status.unlink(missing_ok=True)
    record: dict[str, Any] = {
        "name": name, "file": str(file.resolve()), "dir": str(file.resolve().parent),
        "lab": None, "backend": backend, "created_at": time.time(),
        "metrics_port": metrics_port, "controller_pid": None,
        "register_timeout": register_timeout, **(lambda_record or {})}
    lab = None
    zygote = _early_zygote(backend, paths)
    if backend == "lambda":
        assert lambda_record is not None
        click.echo(f"lambda function {lambda_record['function']} ({lambda_record['region']}), "
                   f"coordinator {lambda_record['coordinator']}")
    else:
        try:
            lab = _make_lab(deployment, name)
        except BaseException:
            _drop_zygote(zygote)
            raise
        record["lab"] = lab.name
    write_json_atomic(paths.deployment, record)
    metrics_sock = None
    try:
        argv = [sys.executable, "-m", "boxer.controller.daemon", "--name", name, "--tick", str(tick)]
        pass_fds: tuple[int, ...] = ()
        if zygote is not None:
            answers, requests = zygote.stdout.fileno(), zygote.stdin.fileno()
            argv += ["--zygote", f"{zygote.pid}:{answers}:{requests}"]
            pass_fds += (answers, requests)
        if metrics_port is not None:
            # Bound here, in the machine's own namespace, so the metrics are on this host's
            # loopback while the controller itself runs inside the lab's coordinator namespace.
            metrics_sock = socket.socket()
            metrics_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            metrics_sock.bind(("127.0.0.1", metrics_port))
            metrics_sock.listen(16)
            argv += ["--metrics-fd", str(metrics_sock.fileno())]
            pass_fds += (metrics_sock.fileno(),)
        # lambda: right here, with our environment (AWS credentials, region, endpoints);
        # the lab backends: beside the lab's coordinator, which only lab namespaces reach.
        command = argv if lab is None else lab.command("coord", argv)
        env = dict(os.environ) if lab is None else lab.env("coord")
        with open(paths.log, "ab") as log_file:
            proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, pass_fds=pass_fds,
                start_new_session=True,  # Ctrl-C reaches `boxer up`, which stops it in order
            )
    except OSError as exc:
        _drop_zygote(zygote)
        if lab is not None:
            from boxer.lab import lab_down

            lab_down(lab.name)
        raise DeployError(f"cannot start the controller: {exc}") from None
    finally:
        if metrics_sock is not None:
            metrics_sock.close()
    _hand_over_zygote(zygote)
    record["controller_pid"] = proc.pid
    write_json_atomic(paths.deployment, record)
    return _Up(paths, proc, name)


REAPPLY_ANSWER_TIMEOUT = 10.0  # seconds the controller has to answer a reapply


def _reapply(file: Path, deployment: Any, name: str) -> None:
    """`boxer up FILE` on a deployment that is up: hand the edited file to its controller
    (SIGHUP), which applies what can change live (boxer.controller.reapply), then show progress."""
    from boxer.controller.paths import read_json, write_json_atomic
    from boxer.controller.reapply import plan_reapply
    from boxer.controller.validate import load_deployment

    paths = _paths(name)
    info = read_json(paths.deployment) or {}
    if not paths.applied_file.exists():
        raise DeployError(f"deployment {name!r} was started by an older boxer that cannot apply "
                          f"changes while it runs: `boxer down --name {name}` first")
    running = load_deployment(paths.applied_file, backend=info.get("backend"))
    plan = plan_reapply(running, deployment)
    if not plan.ok:
        raise DeployError(
            f"deployment {name!r} is up, and these cannot change while it runs: "
            f"{', '.join(plan.refused)}. `boxer down --name {name}`, then `boxer up {file}`")
    if not plan.changes:
        click.echo(f"deployment {name!r} is up and already runs {file}: nothing to apply")
        return
    if info.get("lab"):
        _check_lab_room(deployment, info["lab"], name)
    backend_settings = {}
    if info.get("backend") == "lambda":
        backend_settings = _lambda_settings_again(running, deployment, info)
    generation = int(info.get("generation", 0)) + 1
    shutil.copyfile(file, paths.next_file)
    write_json_atomic(paths.deployment, {**info, **backend_settings, "generation": generation})
    started = time.monotonic()
    os.kill(int(info["controller_pid"]), signal.SIGHUP)
    answer = None
    while time.monotonic() - started < REAPPLY_ANSWER_TIMEOUT:
        answer = read_json(paths.reapplied)
        if answer and answer.get("generation") == generation:
            break
        time.sleep(0.05)
    else:
        raise DeployError(f"the controller of {name!r} did not answer within "
                          f"{REAPPLY_ANSWER_TIMEOUT:g} s; see {paths.log}")
    if answer.get("error") or answer.get("refused"):
        raise DeployError(f"the controller refused the change: "
                          f"{answer.get('error') or ', '.join(answer['refused'])}")
    write_json_atomic(paths.deployment, {**(read_json(paths.deployment) or info),
                                         "file": str(file.resolve())})
    for change in answer.get("changes", []):
        click.echo(f"applied {change}")
    for service in answer.get("rollouts", []):
        click.echo(f"rolling out {service}: its instances are replaced, each once its successor "
                   "listens")
    if not _show_progress(paths, deployment, started, None):
        click.echo("boxer: not every service came up in time; see `boxer status` and "
                   f"{paths.root}/", err=True)


def _concurrency_slots(settings: Any, facts: Any) -> int:
    """`lambda.maxConcurrency`, lowered to what AWS lets the function run at once (its
    reserved concurrency, else the account's unreserved share); says so when it was."""
    from boxer.backends.aws_lambda.preflight import SetupError, concurrency_limit, effective_concurrency

    try:
        limit, source = concurrency_limit(facts)
        slots, note = effective_concurrency(settings.max_concurrency, limit, source,
                                            facts.function_name)
    except SetupError as exc:
        raise DeployError(str(exc)) from None
    if note:
        click.echo(note)
    return slots


def _lambda_settings_again(running: Any, edited: Any, info: dict[str, Any]) -> dict[str, Any]:
    """The edits to a running deployment's `lambda:` block, for its controller: the concurrency
    it may use, looked up again as at `boxer up` (the function's reserved concurrency or the
    account's unreserved share may have changed since), and the registration timeout."""
    from boxer.backends.aws_lambda.preflight import SetupError, load_facts
    from boxer.controller.spec import LambdaSettings

    before, after = running.lambda_ or LambdaSettings(), edited.lambda_ or LambdaSettings()
    found: dict[str, Any] = {}
    if after.register_timeout_seconds != before.register_timeout_seconds:
        found["register_timeout"] = after.register_timeout_seconds
    if after.max_concurrency != before.max_concurrency:
        try:
            facts = load_facts(info["outputs"])
        except SetupError as exc:
            raise DeployError(str(exc)) from None
        found["max_concurrency"] = _concurrency_slots(after, facts)
    return found


def _check_lab_room(deployment: Any, lab_name: str, name: str) -> None:
    """A lab is built for the deployment's maxInstances; a reapply must fit in it."""
    from boxer.lab import LabError, load_lab

    try:
        lab = load_lab(lab_name)
    except LabError as exc:
        raise DeployError(f"cannot read lab {lab_name} of deployment {name!r}: {exc}") from None
    hosts, public = _lab_size_for(deployment)
    if hosts > len(lab.hosts) or public > len(lab.public_hosts):
        raise DeployError(
            f"lab {lab_name} was built with {len(lab.hosts)} NATed and {len(lab.public_hosts)} "
            f"public hosts; the edited maxInstances need {hosts} and {public}. "
            f"`boxer down --name {name}`, then `boxer up` again builds a lab that size")


def _lab_size_for(deployment: Any) -> tuple[int, int]:
    from boxer.backends.local import lab_size

    return lab_size([
        (svc.placement.value, svc.effective_max_instances, svc.base_capacity,
         svc.lifetime_seconds is not None)
        for svc in deployment.services.values()
    ])


def _early_zygote(backend: str, paths: Any) -> subprocess.Popen[bytes] | None:
    """The `local` backend's agent zygote (boxer.backends.zygote), started now, before the lab
    is built, so that its imports (~0.3 s of CPU) are done by the first launch; the controller
    adopts it. None where the backend does not fork from one."""
    from boxer.backends.local import ZYGOTE_ENV
    from boxer.backends.zygote import start_for_adoption

    if backend != "local" or os.environ.get(ZYGOTE_ENV, "1") == "0":
        return None
    try:
        return start_for_adoption(sys.executable, os.environ, str(paths.instances / "zygote.log"))
    except OSError as exc:
        click.echo(f"boxer: no agent zygote ({exc.strerror}): the controller starts its own", err=True)
        return None


def _hand_over_zygote(zygote: subprocess.Popen[bytes] | None) -> None:
    """The controller holds the zygote's pipes now: close ours (it exits when the controller
    closes its stdin), and do not wait for it (init reaps it once we are gone)."""
    if zygote is None:
        return
    assert zygote.stdin is not None and zygote.stdout is not None
    zygote.stdin.close()
    zygote.stdout.close()
    zygote.returncode = 0  # tell Popen not to warn that it still runs


def _drop_zygote(zygote: subprocess.Popen[bytes] | None) -> None:
    if zygote is None:
        return
    assert zygote.stdin is not None and zygote.stdout is not None
    zygote.stdin.close()  # it exits at the end of its stdin
    zygote.stdout.close()
    try:
        zygote.wait(5)
    except subprocess.TimeoutExpired:
        zygote.kill()
        zygote.wait()


def _make_lab(deployment: Any, name: str) -> Any:
    from boxer.lab import LabError, lab_up

    hosts, public = _lab_size_for(deployment)
    lab_name = _lab_name(name)
    click.echo(f"lab {lab_name}: {hosts} NATed hosts (function), {public} public hosts (vm)")
    try:
        return lab_up(lab_name, hosts, public=public)
    except LabError as exc:
        raise DeployError(f"cannot create lab {lab_name}: {exc}") from None


def _last_log_error(path: Path) -> str | None:
    """The message of the last error line in the controller's log (JSON lines)."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
            return str(entry.get("message"))
    return None


def _service_line(status: dict[str, Any] | None, deployment: Any) -> tuple[str, bool]:
    """One progress line, and whether every service has its wanted instances ready."""
    if not status:
        return "starting the controller ...", False
    parts, done = [], True
    instances = status.get("instances", [])
    for name, svc in status.get("services", {}).items():
        ready = sum(1 for i in instances if i["service"] == name and i["state"] == "ready")
        want = max(svc.get("desired", 0), deployment.services[name].min_instances)
        outdated = int(svc.get("outdated", 0))
        done = done and ready >= want and outdated == 0
        parts.append(f"{name} {ready}/{want}" + (f" ({outdated} to roll out)" if outdated else ""))
    if not status.get("connected"):
        done = False
        parts.append(f"(coordinator: {status.get('error') or 'connecting'})")
    return "  ".join(parts), done


def _show_progress(paths: Any, deployment: Any, started: float,
                   proc: subprocess.Popen[bytes] | None) -> bool:
    """Redraw the services' ready counts until every one has what it wants. `proc`: the
    controller we started, or None for one already running (reapply)."""
    from boxer.controller.paths import read_json

    def exited() -> bool:
        if proc is not None:
            return proc.poll() is not None
        return not _controller_alive(read_json(paths.deployment))

    tty = sys.stdout.isatty()
    last = None
    while True:
        status = read_json(paths.status)
        line, done = _service_line(status, deployment)
        elapsed = time.monotonic() - started
        text = f"[{elapsed:5.1f} s] {line}"
        if tty:
            click.echo("\r" + text.ljust(78), nl=False)
        elif line != last:
            click.echo(text)
        last = line
        if done or exited() or elapsed > UP_TIMEOUT:
            break
        time.sleep(0.1)
    if tty:
        click.echo()
    if proc is None and exited():
        raise DeployError(f"the controller exited; see {paths.log}")
    if proc is not None and proc.poll() is not None and proc.returncode != 0:
        why = _last_log_error(paths.log)
        raise DeployError(f"the controller exited with status {proc.returncode}"
                          f"{': ' + why if why else ''}; see {paths.log}")
    status = read_json(paths.status)
    if status:
        _print_status(status, wide=False)
    return done


def _wait_foreground(up: _Up) -> None:
    # SIGTERM to `boxer up` is a Ctrl-C too: take the deployment down in order.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        up.proc.wait()
    except KeyboardInterrupt:
        click.echo("\ntaking the deployment down ...", err=True)
    _down(up.name)


# -- down ------------------------------------------------------------------------------------

@click.command("down")
@click.option("--name", help="Deployment to stop [default: the only one running].")
def down_command(name: str | None) -> None:
    """Stop every instance of a deployment, its controller, and remove its lab.

    The timeline stays, so `boxer report` still works afterwards."""
    name = _resolve_name(name)
    summary = _down(name)
    click.echo(summary)


def _down(name: str) -> str:
    from boxer.controller.paths import read_json, write_json_atomic
    from boxer.lab import lab_down

    paths = _paths(name)
    info = read_json(paths.deployment)
    if info is None:
        raise DeployError(f"no deployment called {name!r}")
    pid = info.get("controller_pid")
    stopped = False
    if pid and _controller_alive(info):
        os.kill(pid, signal.SIGTERM)  # it stops its instances first
        deadline = time.monotonic() + 20
        while _controller_alive(info) and time.monotonic() < deadline:
            time.sleep(0.05)
            _reap(pid)
        if _controller_alive(info):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)
        stopped = True
    report = lab_down(info["lab"]) if info.get("lab") else None
    info["controller_pid"] = None
    info["down_at"] = time.time()
    write_json_atomic(paths.deployment, info)
    status = read_json(paths.status)
    if status:
        status["running"] = False
        status["instances"] = []
        write_json_atomic(paths.status, status)
    parts = [f"deployment {name} down"]
    if stopped:
        parts.append("controller stopped")
    if report is not None:
        parts.append(f"lab {report.name}: {len(report.namespaces)} namespaces removed")
    return "; ".join(parts)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # our child when down runs from `boxer up` itself
    except ChildProcessError:
        pass


# -- status and top --------------------------------------------------------------------------

def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[dict[str, Any]], str]
    wide: bool = False  # only with -o wide
    right: bool = False


# The instance table, declared as data: name, how to get the value, shown when.
INSTANCE_COLUMNS = (
    Column("SERVICE", lambda r: r["service"]),
    Column("NAME", lambda r: r["name"]),
    Column("STATE", lambda r: r["state"]),
    Column("PLACEMENT", lambda r: r["placement"]),
    Column("ADDRESS", lambda r: r["address"] or "-"),
    Column("CONNS", lambda r: str(r["connections"]), right=True),
    Column("CPU", lambda r: f"{r['cpu']:.0f}%", right=True),
    Column("AGE", lambda r: _age(r["age"]), right=True),
    Column("LIFETIME", lambda r: _age(r["lifetime_left"]), right=True),
    Column("READY-IN", lambda r: "-" if r["ready_after"] is None else f"{r['ready_after']:.2f}s",
           wide=True, right=True),
    Column("DIRECT", lambda r: str(r["direct"]), wide=True, right=True),
    Column("RELAYED", lambda r: str(r["relayed"]), wide=True, right=True),
    Column("RSS", lambda r: f"{r['rss'] / 2**20:.0f}Mi", wide=True, right=True),
    Column("INSTANCE-ID", lambda r: r["instance_id"], wide=True),
    Column("HOST", lambda r: r["host"] or "-", wide=True),
    Column("REV", lambda r: str(r.get("revision", 1)), wide=True, right=True),
)

SERVICE_COLUMNS = (
    Column("SERVICE", lambda s: s["name"]),
    Column("PLACEMENT", lambda s: s["placement"]),
    Column("READY", lambda s: f"{s['ready']}/{s['desired']}", right=True),
    Column("MIN..MAX", lambda s: f"{s['min']}..{s['max']}", right=True),
    Column("LOAD", lambda s: f"{s['load']:g}", right=True),
    Column("ADDRESS", lambda s: s.get("address") or "-"),
    Column("WAITING", lambda s: "yes" if s.get("pending") else "-", wide=True),
    Column("REVISION", lambda s: _revision(s), wide=True),
)


def _revision(service: dict[str, Any]) -> str:
    """The service's revision, and how many instances of earlier ones still run (a rollout)."""
    revision = str(service.get("revision", 1))
    outdated = int(service.get("outdated", 0))
    return f"{revision} ({outdated} to roll out)" if outdated else revision


def render_table(columns: tuple[Column, ...], rows: list[dict[str, Any]], wide: bool) -> str:
    shown = [c for c in columns if wide or not c.wide]
    cells = [[c.header for c in shown]] + [[c.value(r) for c in shown] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(shown))]
    lines = []
    for row in cells:
        parts = [cell.rjust(w) if c.right else cell.ljust(w)
                 for cell, w, c in zip(row, widths, shown, strict=False)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _service_rows(status: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, svc in status.get("services", {}).items():
        ready = sum(1 for i in status.get("instances", [])
                    if i["service"] == name and i["state"] == "ready")
        rows.append({"name": name, **svc, "ready": ready})
    return rows


def status_text(status: dict[str, Any] | None, wide: bool) -> str:
    if not status or not status.get("running", True):
        return "No deployment is running. Start one with `boxer up FILE`."
    where = (f"lambda function {status.get('function')} ({status.get('region')})"
             if status.get("backend") == "lambda" else f"lab {status.get('lab')}")
    head = (f"deployment {status.get('name')}  {where}  coordinator "
            f"{status.get('coordinator')} ({'connected' if status.get('connected') else 'not connected'})")
    parts = [head, "", render_table(SERVICE_COLUMNS, _service_rows(status), wide), ""]
    instances = status.get("instances", [])
    if instances:
        parts.append(render_table(INSTANCE_COLUMNS, instances, wide))
    else:
        parts.append("No instances run (services at zero start on their first connect).")
    backend_line = _backend_line(status.get("backend_status"))
    if backend_line:
        parts += ["", backend_line]
    rolling = [f"{name} (revision {svc.get('revision', 1)}: {svc['outdated']} of an earlier one left)"
               for name, svc in status.get("services", {}).items() if svc.get("outdated")]
    if rolling:
        parts += ["", f"rolling out: {', '.join(rolling)}"]
    partition = status.get("partition") or {}
    if partition.get("mode", "normal") != "normal":
        parts += ["", f"partition guard: {partition['mode']}, {partition.get('quiet', 0)} of "
                      f"{partition.get('instances', 0)} instances quiet, {partition.get('held', 0)} "
                      f"kept for now: {partition.get('reason') or ''}".rstrip(": ")]
    failures = status.get("failures") or []
    if failures:
        now = status.get("updated_at") or time.time()
        parts += ["", "recent failures:"]
        parts += [f"  {f['name']:<16} {_age(now - f['at']):>6} ago  {f['reason']}"
                  for f in failures[-5:]]
    if status.get("error"):
        parts += ["", f"last problem: {status['error']}"]
    return "\n".join(parts)


def _backend_line(figures: dict[str, Any] | None) -> str | None:
    """The backend's own figures: for lambda, concurrency slots and throttling."""
    if not figures or "concurrency" not in figures:
        return None
    slots = figures["concurrency"]
    return (f"{figures.get('backend', 'backend')} concurrency: {slots['in_use']}/{slots['limit']}"
            f" in use, {slots['waiting']} waiting; throttled {figures.get('throttled_total', 0)}"
            " (retried with backoff)")


def _print_status(status: dict[str, Any] | None, wide: bool) -> None:
    click.echo(status_text(status, wide))


def _load_status(name: str | None) -> dict[str, Any] | None:
    from boxer.controller.paths import read_json

    try:
        name = _resolve_name(name)
    except DeployError:
        return None
    info = read_json(_paths(name).deployment)
    status = read_json(_paths(name).status)
    if status is not None and not _controller_alive(info):
        status["running"] = False
    return status


@click.command("status")
@click.option("--name", help="Deployment [default: the only one running].")
@click.option("-o", "--output", type=click.Choice(["text", "wide", "json"]), default="text",
              show_default=True, help="wide adds path counts, instance id and host; json for scripts.")
@click.option("-w", "--watch", is_flag=True, help="Redraw every second until Ctrl-C.")
def status_command(name: str | None, output: str, watch: bool) -> None:
    """Services and instances of a running deployment: state, placement, address, connections,
    CPU, age and lifetime left."""
    while True:
        status = _load_status(name)
        if output == "json":
            click.echo(json.dumps(status if status and status.get("running", True)
                                  else {"running": False, "services": {}, "instances": []},
                                  indent=2))
        else:
            if watch:
                click.clear()
            _print_status(status, wide=output == "wide")
        if not watch:
            return
        try:
            time.sleep(1.0)
        except KeyboardInterrupt:
            return


@click.command("top")
@click.option("--name", help="Deployment [default: the only one running].")
@click.option("--interval", type=click.FloatRange(0.1, 10), default=0.5, show_default=True)
def top_command(name: str | None, interval: float) -> None:
    """The live view: services and instances redrawn continuously (q or Ctrl-C quits)."""
    try:
        while True:
            status = _load_status(name)
            click.clear()
            click.echo(time.strftime("%H:%M:%S  ") + status_text(status, wide=True))
            time.sleep(interval)
    except KeyboardInterrupt:
        return


# -- report ----------------------------------------------------------------------------------

@click.command("report")
@click.option("--name", help="Deployment [default: the only one].")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG to write [default: <name>-timeline.png].")
@click.option("--timeline", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read this timeline.jsonl instead of the deployment's.")
@click.option("--load", "load_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Load-generator results (JSON lines: t, connections, p50_ms, p99_ms) to "
                   "plot connect/request latency.")
def report_command(name: str | None, out: Path | None, timeline: Path | None,
                   load_file: Path | None) -> None:
    """A PNG timeline of a run: load, instances per placement, start-up and request latency."""
    from boxer.controller.report import ReportError, write_report

    if timeline is None:
        name = _resolve_name(name)
        timeline = _paths(name).timeline
        if load_file is None and (_paths(name).root / "load.jsonl").exists():
            load_file = _paths(name).root / "load.jsonl"
    out = out or Path(f"{name or timeline.stem}-timeline.png")
    try:
        summary = write_report(timeline, out, load_file)
    except ReportError as exc:
        raise DeployError(str(exc)) from None
    click.echo(f"wrote {out}: {summary}")


COMMANDS = (up_command, down_command, status_command, top_command, report_command)
