"""`boxer up / status / top / down / report`: a whole deployment from its file.

Thin click commands: what they do lives in the controller (boxer.controller): bring-up in
bringup.py, applying an edited file to a running deployment in apply.py, take-down in
takedown.py, the deployment record in record.py, finding deployments and their status in
deployments.py; the Lambda function's preflight in lambda_target.py. How status reads on a
terminal is status_view.py here. A running controller is asked through the control API
(controller/api: progress, status, apply, down); `report` reads the timeline it writes under
/run/boxer/deploy/<name>/ (see controller/paths.py), and `status` its status.json once it is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import click

from boxer.cli import _remote
from boxer.cli.status_view import NOTHING_RUNS, progress_line, status_json, status_text, stopped_text

__all__ = ["COMMANDS", "DeployError", "status_text"]

DEBUG_ENV = "BOXER_DEBUG"  # set it to see tracebacks instead of one-line errors
UP_TIMEOUT = 60.0  # seconds `boxer up` waits for the services' first instances
T = TypeVar("T")


class DeployError(click.ClickException):
    """A user error: shown as one line, no traceback (unless BOXER_DEBUG is set)."""

    def show(self, file: Any = None) -> None:
        click.echo(f"boxer: {self.message}", err=True)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """The controller's DeploymentError, shown as boxer's one-line error."""
    from boxer.controller.errors import DeploymentError

    try:
        yield
    except DeploymentError as exc:
        raise DeployError(str(exc)) from None


def _call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    with _one_line_errors():
        return function(*args, **kwargs)


def _resolve_name(name: str | None, *, running_only: bool = True) -> str:
    """The deployment a command means: --name; else the current one (set by `boxer up`, changed
    by `boxer use`) if it is still known (and running, unless `running_only` is false: report
    and logs read what a stopped one left); else the only one running. When that does not tell,
    a one-line error lists them and says how to pick (exit 1)."""
    from boxer.cli import _context
    from boxer.controller.deployments import paths_for
    from boxer.controller.paths import list_deployments
    from boxer.controller.record import DeploymentRecord

    known = list_deployments()
    if name:
        if name not in known:
            raise DeployError(f"no deployment named {name!r}: {_listing(known)}")
        return name
    records = {n: DeploymentRecord.load(_call(paths_for, n)) for n in known}
    running = [n for n, r in records.items() if r is not None and r.controller_alive]
    current = _context.current("deployment")
    if current in known and (not running_only or current in running):
        return current
    if len(running) == 1:
        return running[0]
    if not running_only and len(known) == 1:
        return known[0]
    if not running_only and not known:
        raise DeployError("no deployment has run on this machine (or `boxer rm` removed what it left): "
                          "start one with `boxer up FILE`")
    if not running:
        raise DeployError(f"no deployment is running: {_listing(known)}; start one with `boxer up FILE`"
                          if known else "no deployment is running: start one with `boxer up FILE`")
    raise DeployError(f"several deployments run ({', '.join(running)}) and none is current: pick one "
                      f"with --name {running[0]}, or make it current with `boxer use {running[0]}`")


def _listing(known: list[str]) -> str:
    """The deployments this machine knows, for an error message."""
    if not known:
        return "there are none (`boxer up FILE` starts one)"
    return f"known here: {', '.join(known)} (`boxer ls` shows them)"


# -- up --------------------------------------------------------------------------------------

@click.command("up")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="Deployment name [default: `name` in FILE, else the file's name].")
@click.option("--backend", type=click.Choice(["local", "lambda", "lambda-local"]),
              help="Where instances run [default: `backend` in FILE, i.e. local].")
@click.option("--detach", is_flag=True,
              help="Return within seconds, once every service listens or is known to fail (exit "
                   "status 1 then, naming each and why); `boxer down` stops it.")
@click.option("--wait", is_flag=True,
              help="Like --detach, but wait until every service listens (exit status 1 if one is "
                   "crash-looping, or at --timeout), as `docker compose up --wait`.")
@click.option("--timeout", "wait_timeout", type=click.FloatRange(1, 3600), default=UP_TIMEOUT,
              show_default=True, metavar="SECONDS", help="With --wait: how long to wait.")
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
@click.option("--image", metavar="IMAGE",
              help="lambda-local backend: run each invocation from this image (buildah's local "
                   "storage, e.g. built by lambda_image/build.py) as Lambda runs it: its entry "
                   "point, read-only root, /tmp, uid 993.")
@click.option("--control-listen", metavar="HOST:PORT",
              help="The controller started here serves its control API on TCP too (TLS, a token), for "
                   "clients on other machines: with --control-cert, --control-key, --control-token-file.")
@click.option("--control-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="PEM",
              help="With --control-listen: its TLS certificate chain.")
@click.option("--control-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="PEM",
              help="With --control-listen: its private key.")
@click.option("--control-token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="FILE", help="With --control-listen: the token every call must present (one line).")
@_remote.controller_options
def up_command(file: Path, name: str | None, backend: str | None, detach: bool, wait: bool,
               wait_timeout: float, metrics_port: int | None, tick: float, outputs: Path | None,
               register_timeout: float | None, image: str | None, control_listen: str | None,
               control_cert: Path | None, control_key: Path | None, control_token_file: Path | None,
               controller: str | None, controller_ca: Path | None, controller_token_file: Path | None,
               controller_server_name: str | None) -> None:
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
      boxer up --wait --timeout 120 deploy.yaml   # returns once every service listens
      boxer up deploy.yaml --backend lambda --outputs outputs.json   # AWS, controller here
      boxer up --detach deploy.yaml --controller 203.0.113.7:7443 --controller-ca ca.pem \
          --controller-token-file token --controller-server-name boxer-controller
                                                # AWS, controller beside the coordinator
      boxer up deploy.yaml     # again, after raising minInstances: applied while it runs
    """
    from boxer.controller.bringup import bring_up, default_name
    from boxer.controller.deployments import paths_for
    from boxer.controller.errors import DeploymentFileError
    from boxer.controller.record import DeploymentRecord
    from boxer.controller.validate import load_deployment

    try:
        deployment = load_deployment(file, backend=backend)
    except DeploymentFileError as exc:
        click.echo(f"{file}: {len(exc.issues)} problem{'' if len(exc.issues) == 1 else 's'}", err=True)
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        raise SystemExit(1) from None
    here = _running_file(file)
    remote = None if here is not None and not controller else _remote.chosen(
        name or default_name(file, deployment.name), controller, controller_ca, controller_token_file,
        controller_server_name)
    if remote is not None:
        given = {"--outputs": outputs, "--image": image, "--metrics-port": metrics_port,
                 "--control-listen": control_listen}
        for option, value in given.items():
            if value is not None:
                raise DeployError(f"{option} is for a controller started here; the controller at "
                                  f"{remote.address} has its own settings (docs/aws.md)")
        _up_there(remote, file, deployment, name or default_name(file, deployment.name), backend,
                  detach=detach, wait=wait, wait_timeout=wait_timeout, register_timeout=register_timeout)
        return
    control = _control_listener(control_listen, control_cert, control_key, control_token_file)
    name = name or here or default_name(file, deployment.name)
    running = DeploymentRecord.load(_call(paths_for, name))
    if running is not None and running.controller_alive:
        _make_current(name, running.lab)
        try:
            _apply(file, deployment, name)
        except KeyboardInterrupt:  # the change is the controller's now: stopping the wait undoes nothing
            click.echo(f"\ninterrupted: the edited file is applied and the deployment runs on; see `boxer status "
                       f"--name {name}`", err=True)
            raise SystemExit(130) from None
        return
    backend = deployment.backend.value
    if image is not None and backend != "lambda-local":
        raise DeployError(f"--image runs instances from a container image on the lambda-local "
                          f"backend, not {backend}: add --backend lambda-local (on AWS the "
                          "function's image is terraform's image_tag)")
    target = None
    if backend == "lambda":
        from boxer.controller.lambda_target import preflight

        target = _call(preflight, file, deployment, outputs, click.echo)
        if register_timeout is None:
            register_timeout = target.register_timeout
    elif os.geteuid() != 0:
        raise DeployError(f"the {backend} backend runs instances in a lab, which needs root "
                          "(network namespaces, iptables)")
    started, since = time.monotonic(), time.time()
    up = _call(bring_up, file, deployment, name, click.echo, metrics_port=metrics_port, tick=tick,
               backend=backend, register_timeout=register_timeout, target=target, image=image,
               control=control)
    made = DeploymentRecord.load(up.paths)
    _make_current(name, made.lab if made else None)
    try:
        verdict = _show_progress(up.paths, deployment, started, up.proc, since=since, wait=wait,
                                 timeout=wait_timeout if wait else UP_TIMEOUT)
        if not (detach or wait):
            click.echo("controller running; Ctrl-C takes the deployment down")
            _wait_foreground(up.proc, name)
            return
        click.echo(f"detached; {name} is the current deployment: `boxer status`, `boxer logs SERVICE`,"
                   " `boxer down`")
        # We exit without waiting for it (init adopts it); tell Popen so, or it would warn.
        up.proc.returncode = 0
        if verdict is not None and not verdict.all_ready:
            click.echo(f"boxer: {'; '.join(verdict.problems())}", err=True)
            raise SystemExit(1)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: taking the deployment down", err=True)
        _down(name)
        raise SystemExit(130) from None


def _control_listener(listen: str | None, cert: Path | None, key: Path | None,
                      token_file: Path | None) -> Any:
    """--control-listen and its three files, all or none: the controller's TCP listener."""
    from boxer.controller.bringup import ControlListen

    given = {"--control-cert": cert, "--control-key": key, "--control-token-file": token_file}
    if listen is None:
        extra = [option for option, value in given.items() if value is not None]
        if extra:
            raise DeployError(f"{', '.join(extra)} go with --control-listen HOST:PORT")
        return None
    missing = [option for option, value in given.items() if value is None]
    if missing:
        raise DeployError(f"--control-listen needs {', '.join(missing)} too: TLS and a token guard the port")
    from boxer.cli._common import endpoint_option

    endpoint_option(listen, "--control-listen")
    assert cert is not None and key is not None and token_file is not None
    return ControlListen(listen, cert.resolve(), key.resolve(), token_file.resolve())


def _up_there(remote: Any, file: Path, deployment: Any, name: str, backend: str | None, *, detach: bool,
              wait: bool, wait_timeout: float, register_timeout: float | None) -> None:
    """`boxer up` against a controller host: the file goes there (Up, or Apply when it runs
    it already) and the deployment runs there, whether or not this command stays."""
    from boxer.controller.remote import send_file

    started, since = time.monotonic(), time.time()
    timeout = wait_timeout if wait else UP_TIMEOUT
    with remote.client() as client:
        sent = _call(send_file, client, file, name, backend=backend, register_timeout=register_timeout,
                     timeout=None)
        _remote.remember(remote, name)
        if not sent.started:
            _show_applied(sent.applied, sent.statuses, deployment, name, file, None)
            return
        click.echo(f"deployment {name} sent to the controller at {remote.address}")
        for note in sent.applied.changes:
            click.echo(note)
        verdict = _show_progress(None, deployment, started, None, since=since, wait=wait, timeout=timeout,
                                 statuses=sent.statuses, gone=lambda: False)
        if detach or wait:
            click.echo(f"detached; {name} runs on the controller at {remote.address} and is the current "
                       "deployment: `boxer status`, `boxer down`")
            if verdict is not None and not verdict.all_ready:
                click.echo(f"boxer: {'; '.join(verdict.problems())}", err=True)
                raise SystemExit(1)
            return
        click.echo(f"running on the controller at {remote.address}; Ctrl-C takes the deployment down "
                   "(--detach leaves it running)")
        _sigterm_is_ctrl_c()
        try:
            with _one_line_errors():
                for _ in client.watch():
                    pass
            click.echo(f"deployment {name} was taken down on the controller at {remote.address}")
        except KeyboardInterrupt:
            click.echo("\ntaking the deployment down ...", err=True)
            from boxer.controller.remote import take_down_there

            click.echo(_call(take_down_there, client, name))


def _running_file(file: Path) -> str | None:
    """The running deployment that runs FILE (brought up or last applied from it): `boxer up
    FILE` again applies to it, whatever name it was given with --name."""
    from boxer.controller.deployments import paths_for
    from boxer.controller.paths import list_deployments
    from boxer.controller.record import DeploymentRecord

    wanted = file.resolve()
    for name in list_deployments():
        record = DeploymentRecord.load(_call(paths_for, name))
        if record is not None and record.controller_alive and Path(record.file) == wanted:
            return name
    return None


def _make_current(name: str, lab: str | None) -> None:
    """`boxer up` makes its deployment (and its lab) the current one, as kubectl's context."""
    from boxer.cli import _context

    _context.set_current("deployment", name)
    if lab:
        _context.set_current("lab", lab)


def _apply(file: Path, deployment: Any, name: str) -> None:
    """`boxer up FILE` on a deployment that is up: its controller applies what can change live
    (boxer.controller.apply), then show progress."""
    from boxer.controller.apply import apply_file
    from boxer.controller.deployments import paths_for

    applied, statuses = _call(apply_file, file, deployment, name, click.echo, timeout=UP_TIMEOUT)
    _show_applied(applied, statuses, deployment, name, file, _call(paths_for, name))


def _show_applied(applied: Any, statuses: Iterator[dict[str, Any]], deployment: Any, name: str, file: Path,
                  paths: Any) -> None:
    """What an apply changed, then its progress. `paths`: the deployment's files here (None: it
    runs on a controller host)."""
    started, since = time.monotonic(), time.time()
    if not applied.changes:
        click.echo(f"deployment {name!r} is up and already runs {file}: nothing to apply")
        return
    for change in applied.changes:
        click.echo(f"applied {change}")
    for service in applied.rollouts:
        click.echo(f"rolling out {service}: its instances are replaced, each once its successor "
                   "listens")
    if not _show_progress(paths, deployment, started, None, statuses=statuses,
                          gone=None if paths is not None else lambda: False, crashing_since=since):
        click.echo("boxer: not every service came up in time; see `boxer status`"
                   + (f" and {paths.root}/" if paths is not None else ""), err=True)


def _show_progress(paths: Any, deployment: Any, started: float,
                   proc: subprocess.Popen[bytes] | None, since: float | None = None,
                   wait: bool = False, timeout: float = UP_TIMEOUT,
                   statuses: Iterator[dict[str, Any] | None] | None = None,
                   gone: Callable[[], bool] | None = None, crashing_since: float | None = None) -> Any:
    """Redraw the services' ready counts until every one has what it wants. `proc`: the
    controller we started, or None for one already running (an apply, whose `statuses` the
    controller streams). Statuses come through the control API, one per tick. With `since` (a
    new deployment), also stop once every service is listening or known to fail (or, `wait`,
    once one is crash-looping) and return that verdict (boxer.controller.readiness). `gone`: how
    to tell the controller went, when it is not on this machine (its stream then fails).
    `crashing_since` (an apply): stop with a one-line error once an instance that failed since
    then is crash-looping (a rollout to a misspelled command would never finish)."""
    from boxer.controller.api.client import ControlError, watch_when_up
    from boxer.controller.deployments import last_log_error
    from boxer.controller.readiness import crash_loops, judge_bring_up
    from boxer.controller.record import DeploymentRecord

    looping: dict[str, str] = {}
    wants = {name: svc.min_instances for name, svc in deployment.services.items()}

    def exited() -> bool:
        if gone is not None:
            return gone()
        if proc is not None:
            return proc.poll() is not None
        record = DeploymentRecord.load(paths)
        return record is None or not record.controller_alive

    if statuses is None:
        statuses = watch_when_up(paths, started + timeout, lambda: not exited())
    tty = sys.stdout.isatty()
    last = None
    status = None
    done = False
    try:
        for status in statuses:
            line, done = progress_line(status, deployment)
            text = f"[{time.monotonic() - started:5.1f} s] {line}"
            if tty:
                click.echo("\r" + text.ljust(78), nl=False)
            elif line != last:
                click.echo(text)
            last = line
            if since is not None:
                verdict = judge_bring_up(status, wants, since)
                done = verdict.all_ready or (verdict.crash_looping() if wait else verdict.settled)
            if crashing_since is not None:
                looping = crash_loops(status, crashing_since)
            if done or looping or exited() or time.monotonic() - started > timeout:
                break
    except ControlError as exc:
        if not exited():  # a controller that went is said below
            click.echo(f"\nboxer: {exc}", err=True)
    finally:
        close = getattr(statuses, "close", None)
        if close is not None:
            close()
    if tty:
        click.echo()
    if proc is None and exited():
        raise DeployError(f"the controller exited; see {paths.log}")
    if proc is not None and proc.poll() is not None and proc.returncode != 0:
        why = last_log_error(paths.log)
        raise DeployError(f"the controller exited with status {proc.returncode}"
                          f"{': ' + why if why else ''}; see {paths.log}")
    if status:
        click.echo(status_text(status, wide=False))
    if looping:
        service = next(iter(looping))
        raise DeployError(f"{'; '.join(f'{s} fails since the change: {why}' for s, why in looping.items())}. The "
                          f"change is applied: fix the file and `boxer up` it again (`boxer logs {service}` "
                          "shows why)")
    if since is not None:
        return judge_bring_up(status, wants, since)
    return done


def _sigterm_is_ctrl_c() -> None:
    """SIGTERM to a foreground `boxer up` is a Ctrl-C too: it takes the deployment down in order."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _wait_foreground(proc: subprocess.Popen[bytes], name: str) -> None:
    _sigterm_is_ctrl_c()
    try:
        proc.wait()
    except KeyboardInterrupt:
        click.echo("\ntaking the deployment down ...", err=True)
    _down(name)


# -- down ------------------------------------------------------------------------------------

@click.command("down")
@click.option("--name", help="Deployment to stop [default: the only one running].")
@_remote.controller_options
def down_command(name: str | None, controller: str | None, controller_ca: Path | None,
                 controller_token_file: Path | None, controller_server_name: str | None) -> None:
    """Stop every instance of a deployment, its controller, and remove its lab.

    The timeline stays, so `boxer report` still works afterwards. A deployment sent to a
    controller host (`boxer up --controller`) is taken down there; the host waits for the next."""
    remote = _remote.chosen(name, controller, controller_ca, controller_token_file, controller_server_name)
    if remote is not None:
        from boxer.controller.remote import take_down_there

        with remote.client() as client:
            click.echo(_call(take_down_there, client, name))
        kept = _remote.remembered_at(remote.address)
        if kept is not None:  # as a kubectl context outlives what it ran: forgetting is `boxer rm`
            click.echo(f"the context still sends {kept} to {remote.address} (`boxer up FILE` goes there again);"
                       f" `boxer rm {kept}` forgets it")
        return
    name = _resolve_name(name)
    click.echo(_down(name))


def _down(name: str) -> str:
    from boxer.controller.takedown import take_down

    return _call(take_down, name)


# -- status and top --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Seen:
    """What `status` and `top` found: the deployment meant (None: nothing runs, none meant),
    its last status while its controller runs, and its record."""

    name: str | None
    status: dict[str, Any] | None
    record: Any = None
    controller: str | None = None  # a controller host's address: the deployment runs there

    @property
    def running(self) -> bool:
        if self.controller is not None:
            return self.status is not None
        return self.record is not None and self.record.controller_alive and self.status is not None


def _look_there(remote: Any, name: str | None) -> _Seen:
    """What a controller host says of its deployment, through the control API only."""
    from boxer.controller.remote import status_there

    with remote.client() as client:
        status = _call(status_there, client, 5.0)
    if status is not None and name is not None and status.get("name") != name:
        raise DeployError(f"the controller at {remote.address} runs deployment {status.get('name')!r}, "
                          f"not {name!r}")
    return _Seen(name or (status or {}).get("name"), status, None, remote.address)


def _look(name: str | None, remote: Any = None) -> _Seen:
    from boxer.controller.deployments import load_status, paths_for
    from boxer.controller.paths import list_deployments
    from boxer.controller.record import DeploymentRecord

    remote = remote or _remote.chosen(name)
    if remote is not None:
        return _look_there(remote, name)
    if name is None and not any(
            (r := DeploymentRecord.load(_call(paths_for, n))) is not None and r.controller_alive
            for n in list_deployments()):
        from boxer.cli import _context

        current = _context.current("deployment")
        if current not in list_deployments():
            return _Seen(None, None)  # nothing runs, and no stopped one is current
    name = _resolve_name(name, running_only=False)
    record = DeploymentRecord.load(_call(paths_for, name))
    status = _call(load_status, name) if record is not None and record.controller_alive else None
    return _Seen(name, status, record)


def _seen_text(seen: _Seen, wide: bool) -> str:
    if seen.running:
        return status_text(seen.status, wide=wide)
    if seen.controller is not None:
        return (f"No deployment runs on the controller at {seen.controller}. Start one with "
                "`boxer up FILE --controller ...`.")
    if seen.name is None:
        return NOTHING_RUNS
    record = seen.record
    return stopped_text(seen.name, record.down_at if record else None, record.file if record else None,
                        time.time())


@click.command("status")
@click.option("--name", help="Deployment [default: the current one, else the only one running].")
@click.option("-o", "--output", type=click.Choice(["text", "wide", "json", "json-v1"]), default="text",
              show_default=True, help="text fits 100 columns; wide adds path counts, instance id, host "
                                      "and revision; json is the stable format of docs/cli.md (named as "
                                      "the deployment file names things; json-v1 names its version).")
@click.option("-w", "--watch", is_flag=True, help="Redraw on every change (at most once a second) until Ctrl-C.")
@_remote.controller_options
def status_command(name: str | None, output: str, watch: bool, controller: str | None, controller_ca: Path | None,
                   controller_token_file: Path | None, controller_server_name: str | None) -> None:
    """Services and instances of a deployment: state, restarts, placement, address, connections,
    CPU, age and lifetime left; a stopped one says so.

    Exit status 0, also when nothing runs; 1 when --name names no deployment, or several run and
    none is current (the message lists them)."""
    remote = _remote.chosen(name, controller, controller_ca, controller_token_file, controller_server_name)
    drawn = 0.0
    try:
        for seen in _statuses(name, remote) if watch else [_look(name, remote)]:
            if watch and time.monotonic() - drawn < WATCH_REDRAW:
                continue
            drawn = time.monotonic()
            if output in ("json", "json-v1"):
                record = seen.record
                pid = (seen.status or {}).get("pid") if record is None else record.controller_pid
                click.echo(json.dumps(status_json(seen.status if seen.running else None, name=seen.name,
                                                  controller_pid=pid if seen.running else None),
                                      indent=2))
            else:
                if watch:
                    click.clear()
                click.echo(_seen_text(seen, wide=output == "wide"))
    except KeyboardInterrupt:
        return


WATCH_REDRAW = 1.0  # seconds between redraws of `status --watch` (the controller ticks faster)


def _client_of(seen: _Seen, remote: Any) -> Any:
    """A control API client of the deployment `seen` found: its controller host's, or its
    Unix socket on this machine."""
    from boxer.controller.api.client import ControlClient
    from boxer.controller.deployments import paths_for

    if seen.controller is not None:
        return (remote or _remote.chosen(seen.name)).client()
    assert seen.name is not None
    return ControlClient.local(_call(paths_for, seen.name))


def _statuses(name: str | None, remote: Any) -> Iterator[_Seen]:
    """What `status --watch` draws: the deployment's status after every tick, from the control
    API's Watch stream while its controller runs; once a second what `_look` finds otherwise."""
    from boxer.controller.api.client import ControlError

    while True:
        seen = _look(name, remote)
        yield seen
        if seen.running and seen.name is not None:
            try:
                with _client_of(seen, remote) as client:
                    for status in client.watch():
                        yield replace(seen, status=status)
            except ControlError:
                pass  # gone, or not answering: look again
        time.sleep(WATCH_REDRAW)


@click.command("top")
@click.option("--name", help="Deployment [default: the current one, else the only one running].")
@click.option("--interval", type=click.FloatRange(0.1, 10), default=0.5, show_default=True,
              metavar="SECONDS", help="Time between redraws.")
@_remote.controller_options
def top_command(name: str | None, interval: float, controller: str | None, controller_ca: Path | None,
                controller_token_file: Path | None, controller_server_name: str | None) -> None:
    """The live view: services and instances redrawn every INTERVAL, fitted to the terminal
    (the wide columns when they fit). q or Ctrl-C quits.

    When nothing runs it says so once and exits 0; when the deployment stops while shown, it says
    so and exits 0. Not on a terminal, it prints one frame and exits (for scripts and logs)."""
    from boxer.cli._watch import LatestStatus
    from boxer.cli.top import run_top

    watching: list[LatestStatus] = []  # the stream of the deployment shown, while it lasts

    remote = _remote.chosen(name, controller, controller_ca, controller_token_file, controller_server_name)

    def frame(width: int) -> tuple[str, bool]:
        if watching and not watching[0].ended.is_set() and watching[0].status is not None:
            status = watching[0].status
        else:
            while watching:
                watching.pop().close()
            seen = _look(name, remote)
            if not seen.running or seen.name is None:
                return _seen_text(seen, wide=False), False
            status = seen.status
            watching.append(LatestStatus(_client_of(seen, remote), first=status))
        narrow = status_text(status, wide=False)
        wide = status_text(status, wide=True)
        fits = max(len(line) for line in wide.splitlines()) <= width
        return (wide if fits else narrow), True

    try:
        run_top(frame, interval)
    finally:
        while watching:
            watching.pop().close()


# -- report ----------------------------------------------------------------------------------

@click.command("report")
@click.option("--name", help="Deployment [default: the current one, also after `boxer down`].")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG to write [default: <name>-timeline.png].")
@click.option("--since", metavar="TIME", help="Start of the window: a duration before the end of the "
              "run (90s, 5m, 1h30m), a clock time (14:05[:30]) or an ISO date and time.")
@click.option("--until", metavar="TIME", help="End of the window, in the same forms.")
@click.option("--timeline", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read this timeline.jsonl instead of the deployment's.")
@click.option("--load", "load_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Load-generator results (JSON lines: t, connections, p50_ms, p99_ms) to "
                   "plot connect/request latency.")
def report_command(name: str | None, out: Path | None, since: str | None, until: str | None,
                   timeline: Path | None, load_file: Path | None) -> None:
    """A PNG timeline of a run, for a postmortem: load against capacity at target, instances
    stacked by service and placement with the desired count, start-up and request latency, and
    marks for edits applied, rollouts, panic, crash-loop back-off and failures.

    Reads only the recorded timeline, so it works while the deployment runs and after
    `boxer down`. Exit status 1 when there is no timeline or the window is empty."""
    from boxer.controller.deployments import paths_for
    from boxer.controller.report import ReportError, write_report

    title = name
    if timeline is None:
        name = _resolve_name(name, running_only=False)
        paths = _call(paths_for, name)
        timeline = paths.timeline
        title = name
        if load_file is None and (paths.root / "load.jsonl").exists():
            load_file = paths.root / "load.jsonl"
    elif title is None and (timeline.parent / "deployment.json").exists():
        title = timeline.parent.name  # a deployment's own folder
    out = out or Path(f"{name or timeline.stem}-timeline.png")
    try:
        summary = write_report(timeline, out, load_file, title=title, since=since, until=until)
    except ReportError as exc:
        raise DeployError(str(exc)) from None
    click.echo(f"wrote {out}: {summary}")


COMMANDS = (up_command, down_command, status_command, top_command, report_command)
