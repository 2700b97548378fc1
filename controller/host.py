"""A controller host: a controller process that waits for deployments sent to it through the
control API (Up) instead of running the one `boxer up` prepared on its own machine.

    python -m boxer.controller.daemon --serve --backend lambda --outputs /etc/boxer/outputs.json \\
        --control-listen 0.0.0.0:7443 --control-cert C --control-key K --control-token-file T
    python -m boxer.controller.daemon --serve --backend local --lab demo --control-socket PATH

On AWS it runs beside the coordinator (terraform's coordinator VM, as a systemd unit), so that a
deployment goes on scaling when the laptop that sent it closes its lid; in the lab it runs in the
lab's coordinator namespace. It runs one deployment at a time: Up writes the deployment's state
(record, the file as sent) under this machine's state root, exactly as `boxer up` does locally,
and starts its ControllerRuntime in this process; Down stops it, and the host waits for the next.

A crash of the host (SIGKILL, an OOM kill, a bug; systemd's Restart=always starts it again)
does not end the deployment: while it runs, <state root>/host/current.json names it, and the
runtime keeps its roster (controller/resume.py) beside its record and the file it runs (Apply
rewrites both). A host that starts and finds current.json resumes that deployment before it
serves: it adopts the instances the coordinator still lists instead of launching them again.
Down removes current.json. SIGTERM (systemd's restart or stop, `docker stop`, a reboot) stops
the controller only, as it stops Kubernetes' controller-manager: the instances run on, the
roster and current.json stay, and the next start resumes the deployment as after a crash; only
Down (`boxer down`) ends a deployment.
The file is all that travels: paths in it that name the caller's files (`lambda.outputs`, an app
beside the file) mean nothing here, so the host uses its own terraform outputs or lab, and the
instances of a lab backend work in the host's folder (`--workdir`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxer.controller.errors import DeploymentError, DeploymentFileError
from boxer.controller.paths import DeployPaths, read_json, write_atomic, write_json_atomic
from boxer.controller.record import DeploymentRecord
from boxer.controller.takedown import mark_down

__all__ = ["HostConfig", "serve_deployments"]

log = logging.getLogger("boxer.controller.host")


@dataclass(frozen=True)
class HostConfig:
    backend: str  # what every deployment sent here runs on: lambda, local, lambda-local
    lab: str | None = None  # the lab backends: the lab (made beforehand) instances run in
    outputs: Path | None = None  # lambda: terraform's outputs, as this machine reaches them
    workdir: Path = Path("/")  # the lab backends: the instances' working directory
    tick: float = 0.25


class _Refused(Exception):
    pass


async def serve_deployments(config: HostConfig, socket_path: Path, tcp: Any, formatter: logging.Formatter) -> int:
    """Serve the control API and run the deployments sent to it until SIGTERM or SIGINT, which
    stop the controller and leave a running deployment to the next start (its instances run on,
    current.json and the roster stay: the next host adopts them as after a crash)."""
    from boxer.controller.api.server import HostedControl, serve

    leave = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, leave.set)
    running: list[tuple[Any, asyncio.Event, asyncio.Task[None]]] = []

    async def up(request: Any, notes: list[str]) -> Any:
        from boxer.controller.api.server import ApplyRefused

        try:
            service, stop, run = await _start(config, request, notes, formatter)
        except (_Refused, DeploymentError) as exc:
            log.error("up refused: %s", exc)
            raise ApplyRefused(str(exc)) from None

        running.append((service, stop, loop.create_task(_supervised(service, run))))
        return service

    async def _supervised(service: Any, run: Any) -> None:
        try:
            await run
        except Exception:
            log.exception("deployment %s ended with an error", service.runtime.status().get("name"))
        finally:
            service.ended.set()  # its streams (Watch, Apply, Up) end
            hosted.current = None
            running.clear()

    hosted = HostedControl(up)
    left = _left_running(config)
    if left is not None:
        try:
            service, stop, run = await _resume(config, left, formatter)
        except (_Refused, DeploymentError) as exc:
            log.error("cannot resume deployment %s: %s; waiting for a deployment", left.name, exc)
            _forget_current()
        else:
            hosted.current = service
            running.append((service, stop, loop.create_task(_supervised(service, run))))
    try:
        servers = await serve(hosted, socket_path, tcp)
    except (OSError, RuntimeError) as exc:
        log.error("cannot serve the control API: %s", exc)
        return 2
    if hosted.current is None:
        log.info("controller host up: backend %s%s; waiting for a deployment", config.backend,
                 f", lab {config.lab}" if config.lab else "")
    else:
        log.info("controller host up: backend %s%s; running deployment %s again", config.backend,
                 f", lab {config.lab}" if config.lab else "", left.name if left else "")
    try:
        await leave.wait()
        for service, stop, task in list(running):
            service.runtime.leaving = True  # the controller goes, the deployment stays
            stop.set()
            await task
    finally:
        await asyncio.gather(*(server.stop(1.0) for server in servers))
        socket_path.unlink(missing_ok=True)
    log.info("controller host stopped")
    return 0


async def _start(config: HostConfig, request: Any, notes: list[str],
                 formatter: logging.Formatter) -> tuple[Any, asyncio.Event, Any]:
    """Validate what Up sent, write the deployment's state, make its runtime; its service, the
    event that stops it, and the coroutine that runs it (to the end of its take-down)."""
    from boxer.controller.bringup import default_name
    from boxer.controller.deployments import paths_for
    from boxer.controller.validate import parse_deployment

    kind = request.backend or config.backend
    if kind != config.backend:
        raise _Refused(f"this controller runs the {config.backend} backend, not {kind}: "
                       f"leave out --backend, or use --backend {config.backend}")
    try:
        text = request.file.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Refused(f"{request.path}: not UTF-8 text: {exc}") from None
    shown = request.path or "<deployment>"
    try:
        deployment = parse_deployment(text, shown, backend=kind)
    except DeploymentFileError as exc:
        raise _Refused("; ".join(map(str, exc.issues))) from None
    basename = Path(request.path).name if request.path else "deploy.yaml"
    name = request.name or default_name(Path("/", request.folder or "deployment", basename), deployment.name)
    paths = paths_for(name)
    before = DeploymentRecord.load(paths)
    if before is not None and before.controller_alive and before.controller_pid != os.getpid():
        raise _Refused(f"deployment {name!r} already runs on this machine under another controller")
    _fresh_state(paths, request.file)
    record = DeploymentRecord(name=name, file=shown, dir=str(config.workdir), backend=kind,
                              created_at=time.time(), lab=config.lab, controller_pid=os.getpid(),
                              register_timeout=request.register_timeout
                              if request.HasField("register_timeout") else None)
    if kind == "lambda":
        from boxer.controller.lambda_target import preflight

        if deployment.lambda_ is not None and deployment.lambda_.outputs:
            notes.append(f"lambda.outputs ({deployment.lambda_.outputs}) names a file of the caller's: "
                         f"this controller uses its own terraform outputs ({config.outputs})")
        target = await asyncio.to_thread(preflight, paths.applied_file, deployment, config.outputs, notes.append)
        record = record.replace(outputs=target.outputs, function=target.function, region=target.region,
                                coordinator=target.coordinator, max_concurrency=target.max_concurrency,
                                register_timeout=record.register_timeout or target.register_timeout)
    elif config.lab is not None:
        from boxer.controller.lab_room import check_room

        check_room(deployment, config.lab, name)
    record.save(paths)
    _write_current(name)
    return await _run_here(config, paths, record, formatter, None)


async def _run_here(config: HostConfig, paths: DeployPaths, record: DeploymentRecord,
                    formatter: logging.Formatter, resume: Any) -> tuple[Any, asyncio.Event, Any]:
    """The runtime of the deployment whose state is in `paths`, its service and stop event, and
    the coroutine that runs it; `resume`: the roster to adopt instances from."""
    name, kind = paths.name, record.backend
    handler = logging.FileHandler(paths.log)
    handler.setFormatter(formatter)
    logging.getLogger().addHandler(handler)  # the deployment's own log, for Logs and `boxer logs`
    from boxer.controller.daemon import make_applier, make_runtime

    try:
        runtime = await make_runtime(paths, record, config.tick, resume=resume)
    except BaseException:
        logging.getLogger().removeHandler(handler)
        raise
    if runtime is None:
        logging.getLogger().removeHandler(handler)
        raise _Refused(f"cannot start deployment {name!r}: see the controller's log")
    from boxer.controller.api.server import ControlService

    stop = asyncio.Event()
    applier = _here(make_applier(paths, runtime, kind), paths, runtime, kind, config.lab)
    service = ControlService(runtime, applier, stop.set, paths.log, paths.instances)
    log.info("deployment %s %s from %s: backend %s, coordinator %s:%d", name, "resumed" if resume else "up",
             record.file, kind, *runtime.coordinator)

    async def run() -> None:
        try:
            await runtime.run(stop)
        finally:
            if runtime.leaving:  # SIGTERM: the next start resumes it from the roster
                _let_go(paths)
                log.info("deployment %s left running for the next controller", name)
            else:
                mark_down(paths)
                _forget_current()  # down: nothing to resume
                paths.roster.unlink(missing_ok=True)
                log.info("deployment %s down", name)
            logging.getLogger().removeHandler(handler)
            handler.close()

    return service, stop, run()


def _here(apply: Any, paths: DeployPaths, runtime: Any, kind: str, lab: str | None) -> Any:
    """The applier, with what a caller on the controller's machine checks first done here: that
    the edited file fits the lab, and on the lambda backend the concurrency its `lambda:` block
    may use, looked up with this machine's AWS role (the caller has the file, not the outputs)."""

    def applied(content: bytes, path: str, max_concurrency: int | None,
                register_timeout: float | None) -> tuple[list[str], list[str]]:
        from boxer.controller.api.server import ApplyRefused
        from boxer.controller.validate import parse_deployment

        try:
            edited = parse_deployment(content.decode("utf-8"), path or "<deployment>", backend=kind)
        except (UnicodeDecodeError, DeploymentFileError):
            edited = None  # the applier refuses it, saying why
        record = DeploymentRecord.load(paths)
        try:
            if edited is not None and lab is not None:
                from boxer.controller.lab_room import check_room

                check_room(edited, lab, paths.name)
            if edited is not None and record is not None and kind == "lambda" and max_concurrency is None:
                from boxer.controller.lambda_target import settings_again

                found = settings_again(runtime.deployment, edited, record, lambda line: log.info("%s", line))
                max_concurrency = found.get("max_concurrency")
                register_timeout = register_timeout if register_timeout is not None else found.get("register_timeout")
        except DeploymentError as exc:
            raise ApplyRefused(str(exc)) from None
        result: tuple[list[str], list[str]] = apply(content, path, max_concurrency, register_timeout)
        return result

    return applied


def _fresh_state(paths: DeployPaths, content: bytes) -> None:
    paths.make()
    write_atomic(paths.applied_file, content)  # what runs: the file as sent (whole, for a resume)
    paths.timeline.write_text("")
    paths.status.unlink(missing_ok=True)
    paths.roster.unlink(missing_ok=True)  # a new run: nothing of an earlier one to adopt


# -- resuming after a crash -----------------------------------------------------------------

def _current_file() -> Path:
    from boxer.controller.paths import default_state_root

    return default_state_root() / "host" / "current.json"


def _write_current(name: str) -> None:
    _current_file().parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(_current_file(), {"name": name})


def _forget_current() -> None:
    _current_file().unlink(missing_ok=True)


def _left_running(config: HostConfig) -> DeploymentRecord | None:
    """The deployment a crashed host of this machine was running, if there is one to resume:
    named by current.json, its record not marked down, of this host's backend (and lab)."""
    from boxer.controller.deployments import paths_for

    current = read_json(_current_file())
    if not isinstance(current, dict) or not isinstance(current.get("name"), str):
        return None
    try:
        paths = paths_for(current["name"])
    except DeploymentError:
        _forget_current()
        return None
    record = DeploymentRecord.load(paths)
    why = None
    if record is None:
        why = "its record is gone"
    elif record.down_at is not None:
        why = "it is down"
    elif (record.backend, record.lab) != (config.backend, config.lab):
        why = f"it ran on {record.backend}{f' in lab {record.lab}' if record.lab else ''}, this host " \
              f"runs {config.backend}{f' in lab {config.lab}' if config.lab else ''}"
    elif record.controller_alive and record.controller_pid != os.getpid():
        why = f"its controller (pid {record.controller_pid}) still runs"
    elif not paths.applied_file.exists():
        why = "the file it ran is gone"
    if why is not None:
        log.warning("not resuming deployment %s: %s", current["name"], why)
        if record is None or record.down_at is not None:
            _forget_current()
        return None
    return record


async def _resume(config: HostConfig, record: DeploymentRecord,
                  formatter: logging.Formatter) -> tuple[Any, asyncio.Event, Any]:
    """Run the deployment a crashed host left, from its state: the file it ran (as last applied),
    its record, and its roster, whose instances are adopted, not launched again."""
    from boxer.controller.deployments import paths_for
    from boxer.controller.resume import load_roster

    paths = paths_for(record.name)
    roster = load_roster(paths.roster)
    if roster is None:
        log.warning("deployment %s: no roster to resume from; its instances start afresh", record.name)
    record = record.replace(controller_pid=os.getpid())
    record.save(paths)
    return await _run_here(config, paths, record, formatter, roster)


def _let_go(paths: DeployPaths) -> None:
    """The controller left, the deployment runs on: the record names no controller (none runs
    it until the next start), and is not marked down."""
    record = DeploymentRecord.load(paths)
    if record is not None and record.controller_pid == os.getpid():
        record.replace(controller_pid=None).save(paths)

