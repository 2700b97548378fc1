"""Bring a deployment up: its state folder, its lab (or the Lambda function's facts), the lab's
agent zygote, and the controller process (`boxer.controller.daemon`) that runs it.

For the lab backends the controller runs beside the lab's coordinator, inside the coordinator's
namespace (only lab namespaces reach its address); for `lambda` right here, with the caller's
environment (AWS credentials, region, endpoints). The deployment record (controller/record.py)
is written before the controller starts, which reads it, and again with the controller's pid.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxer._python import module_argv
from boxer.controller.deployments import paths_for
from boxer.controller.errors import DeploymentError
from boxer.controller.instance_logs import INDEX as INSTANCE_INDEX
from boxer.controller.lab_room import make_lab
from boxer.controller.lambda_target import LambdaTarget
from boxer.controller.paths import DeployPaths, write_json_atomic
from boxer.controller.record import DAEMON_MODULE, DeploymentRecord

__all__ = ["BringUp", "ControlListen", "bring_up", "controller_argv", "default_name"]

Say = Callable[[str], None]
log = logging.getLogger(__name__)


def default_name(file: Path, declared: str | None) -> str:
    """`name` in the file, else the file's stem (its folder's name for a deploy.yaml)."""
    if declared:
        return declared
    stem = re.sub(r"[^a-z0-9-]+", "-", file.resolve().parent.name.lower()
                  if file.stem == "deploy" else file.stem.lower()).strip("-")
    return stem[:63] or "deployment"


@dataclass(frozen=True)
class ControlListen:
    """`boxer up --control-listen`: the controller serves its control API on TCP too, with TLS
    and a token (the files' paths go on its command line, never their content)."""

    address: str
    cert: Path
    key: Path
    token_file: Path

    def argv(self) -> list[str]:
        return ["--control-listen", self.address, "--control-cert", str(self.cert),
                "--control-key", str(self.key), "--control-token-file", str(self.token_file)]


@dataclass
class BringUp:
    """A controller just started: its files, its process (our child) and the record."""

    paths: DeployPaths
    proc: subprocess.Popen[bytes]
    name: str
    record: DeploymentRecord


def bring_up(file: Path, deployment: Any, name: str, say: Say, *, metrics_port: int | None = None,
             tick: float = 0.25, backend: str = "local", register_timeout: float | None = None,
             target: LambdaTarget | None = None, image: str | None = None,
             control: ControlListen | None = None) -> BringUp:
    """Start deployment `name` from `file` (already validated as `deployment`). Raises
    DeploymentError, with nothing left running, when it cannot. `image` (lambda-local): run
    every invocation from that image (buildah's local storage), mounted here. `control`: the
    controller also serves its control API there (for the lab backends, from inside the lab's
    coordinator namespace: an address of that namespace)."""
    paths = paths_for(name)
    before = DeploymentRecord.load(paths)
    if before is not None and before.controller_alive:
        raise DeploymentError(f"deployment {name!r} is already up: `boxer down --name {name}` first")
    if before is not None and before.lab:
        from boxer.lab import lab_down

        lab_down(before.lab)  # what a crashed run left behind
    _fresh_state(paths, file)
    record = DeploymentRecord(
        name=name, file=str(file.resolve()), dir=str(file.resolve().parent), backend=backend,
        created_at=time.time(), metrics_port=metrics_port, register_timeout=register_timeout,
        **({} if target is None else {"outputs": target.outputs, "function": target.function,
                                      "region": target.region, "coordinator": target.coordinator,
                                      "max_concurrency": target.max_concurrency}))
    lab = None
    zygote = _early_zygote(backend, paths)
    if backend == "lambda":
        assert target is not None, "the lambda backend is brought up after its preflight"
        say(f"lambda function {target.function} ({target.region}), coordinator {target.coordinator}")
    else:
        opened = _open_image(image, name, paths, say) if image is not None else None
        try:
            lab = make_lab(deployment, name, say)
        except BaseException:
            _drop_zygote(zygote)
            _close_image(opened)
            raise
        record = record.replace(lab=lab.name)
        if opened is not None:
            record = record.replace(image={"image": opened.image, "container": opened.container})
    record.save(paths)
    try:
        proc = _spawn_controller(paths, name, tick, lab, zygote, metrics_port, control)
    except OSError as exc:
        _drop_zygote(zygote)
        if lab is not None:
            from boxer.lab import lab_down

            lab_down(lab.name)
        raise DeploymentError(f"cannot start the controller: {exc}") from None
    _hand_over_zygote(zygote)
    record = record.replace(controller_pid=proc.pid)
    record.save(paths)
    return BringUp(paths, proc, name, record)


def _open_image(image: str, name: str, paths: DeployPaths, say: Say) -> Any:
    """The image's root filesystem mounted, its entry point and environment read, all written
    to image.json for the controller's sandboxes (take-down lets go of it)."""
    from boxer.backends.emulators.image import ImageError, open_image

    try:
        opened = open_image(image, name)
    except ImageError as exc:
        raise DeploymentError(str(exc)) from None
    write_json_atomic(paths.root / "image.json", opened.to_dict())
    say(f"image {image}: {' '.join(opened.runtime_argv)} from {opened.rootfs}")
    return opened


def _close_image(opened: Any) -> None:
    if opened is not None:
        from boxer.backends.emulators.image import close_image

        close_image(opened)


def _fresh_state(paths: DeployPaths, file: Path) -> None:
    paths.make()
    shutil.copyfile(file, paths.applied_file)  # what runs, whatever happens to FILE later
    for left in ("deployment.next.yaml", "reapplied.json"):  # an older boxer's apply by files
        (paths.root / left).unlink(missing_ok=True)
    paths.timeline.write_text("")  # a new run, a new timeline
    (paths.root / "load.jsonl").unlink(missing_ok=True)  # and no load steps of an earlier run
    paths.status.unlink(missing_ok=True)
    # `boxer logs` shows this run's instances (an earlier run's output stays in its files).
    (paths.instances / INSTANCE_INDEX).unlink(missing_ok=True)


def _spawn_controller(paths: DeployPaths, name: str, tick: float, lab: Any,
                      zygote: subprocess.Popen[bytes] | None,
                      metrics_port: int | None, control: ControlListen | None = None) -> subprocess.Popen[bytes]:
    argv = controller_argv(name, tick, control)
    pass_fds: tuple[int, ...] = ()
    if zygote is not None:
        assert zygote.stdin is not None and zygote.stdout is not None
        answers, requests = zygote.stdout.fileno(), zygote.stdin.fileno()
        argv += ["--zygote", f"{zygote.pid}:{answers}:{requests}"]
        pass_fds += (answers, requests)
    metrics_sock = None
    try:
        if metrics_port is not None:
            # Bound here, in the machine's own namespace, so the metrics are on this host's
            # loopback while the controller itself runs inside the lab's coordinator namespace.
            metrics_sock = socket.socket()
            metrics_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            metrics_sock.bind(("127.0.0.1", metrics_port))
            metrics_sock.listen(16)
            argv += ["--metrics-fd", str(metrics_sock.fileno())]
            pass_fds += (metrics_sock.fileno(),)
        command = argv if lab is None else lab.command("coord", argv)
        env = dict(os.environ) if lab is None else lab.env("coord")
        with open(paths.log, "ab") as log_file:
            return subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, pass_fds=pass_fds,
                start_new_session=True,  # Ctrl-C reaches `boxer up`, which stops it in order
            )
    finally:
        if metrics_sock is not None:
            metrics_sock.close()


def controller_argv(name: str, tick: float, control: ControlListen | None = None) -> list[str]:
    """The controller's command line (before the zygote's and the metrics' descriptors)."""
    return module_argv(DAEMON_MODULE, "--name", name, "--tick", str(tick), *(control.argv() if control else ()))


def _early_zygote(backend: str, paths: DeployPaths) -> subprocess.Popen[bytes] | None:
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
        log.warning("no agent zygote (%s): the controller starts its own", exc.strerror)
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
