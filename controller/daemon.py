"""The controller process of one deployment: `python -m boxer.controller.daemon --name NAME`.

`boxer up` starts it (controller/bringup.py) after writing the deployment record
(controller/record.py, deployment.json): for the lab backends (`local`,
`lambda-local`) beside the coordinator, inside the lab's coordinator namespace where the
coordinator's address is reachable; for `lambda` right where `boxer up` runs (the user's
machine), with the coordinator, function and secret parameter named by terraform's outputs.
SIGTERM or SIGINT stop it, and it stops every instance it started before exiting. Logs are JSON
lines on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from boxer.controller.paths import DeployPaths, write_json_atomic
from boxer.controller.record import DeploymentRecord

log = logging.getLogger("boxer.controller.daemon")


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"t": round(record.created, 3), "level": record.levelname.lower(),
                "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


async def _main(paths: DeployPaths, metrics_fd: int | None, tick: float,
                zygote: tuple[int, int, int] | None = None) -> int:
    info = DeploymentRecord.load(paths)
    if info is None:
        log.error("no deployment record in %s: start deployments with `boxer up`", paths.deployment)
        return 2
    kind = info.backend
    # The backend first: the lab's agent zygote then warms up while the validator (pydantic)
    # and the runtime are imported, instead of holding up the first instances afterwards.
    made = _lambda_backend(info) if kind == "lambda" else _lab_backend(info, paths, kind, zygote)
    if made is None:
        return 2
    backend, coordinator, secret, facts = made

    from boxer.controller.runtime import ControllerRuntime
    from boxer.controller.validate import load_deployment

    applied = paths.applied_file if paths.applied_file.exists() else Path(info.file)
    deployment = load_deployment(applied, backend=kind)
    metrics_sock = None
    if metrics_fd is not None:
        metrics_sock = socket.socket(fileno=metrics_fd)
        metrics_sock.setblocking(False)
    runtime = ControllerRuntime(
        deployment, backend, coordinator=coordinator, secret=secret, paths=paths, tick=tick,
        metrics_sock=metrics_sock, register_timeout=info.register_timeout,
        info={"name": paths.name, "backend": kind, "file": info.file, "pid": None,
              **facts},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reapply, paths, runtime, kind)
    log.info("controller of %s up: backend %s, coordinator %s:%d", paths.name, kind,
             *coordinator)
    await runtime.run(stop)
    log.info("controller of %s stopped", paths.name)
    return 0


def _reapply(paths: DeployPaths, runtime: Any, kind: str) -> None:
    """SIGHUP: `boxer up` left an edited deployment file at paths.next_file. Apply what can be
    applied to a running deployment (boxer.controller.reapply), or nothing; answer in paths.reapplied."""
    from boxer.controller.errors import DeploymentFileError
    from boxer.controller.reapply import plan_reapply
    from boxer.controller.validate import load_deployment

    record = DeploymentRecord.load(paths)
    answer: dict[str, Any] = {"generation": record.generation if record else 0}
    try:
        edited = load_deployment(paths.next_file, backend=kind)
    except (DeploymentFileError, OSError) as exc:
        issues = getattr(exc, "issues", None)
        answer["error"] = "; ".join(map(str, issues)) if issues else str(exc)
        log.error("reapply refused: %s", answer["error"])
    else:
        plan = plan_reapply(runtime.deployment, edited)
        answer.update(changes=list(plan.changes), refused=list(plan.refused),
                      rollouts=list(plan.rollouts))
        if plan.ok:
            runtime.apply(edited, plan.rollouts)
            if record is not None:
                _apply_backend_settings(runtime, record)
            os.replace(paths.next_file, paths.applied_file)
            log.info("reapplied: %s", "; ".join(plan.changes) or "no change")
        else:
            log.error("reapply refused: %s cannot change while the deployment runs",
                      ", ".join(plan.refused))
    paths.next_file.unlink(missing_ok=True)
    write_json_atomic(paths.reapplied, answer)


def _apply_backend_settings(runtime: Any, info: DeploymentRecord) -> None:
    """What `boxer up` worked out for the backend from the edited `lambda:` block (the
    concurrency it may use, after the function's and the account's limits) and wrote beside
    the deployment before signalling us."""
    set_limit = getattr(runtime.backend, "set_max_concurrency", None)
    if set_limit is not None and info.max_concurrency:
        set_limit(int(info.max_concurrency))
    if info.register_timeout is not None:
        runtime.set_register_timeout(float(info.register_timeout))


def _lab_backend(info: DeploymentRecord, paths: DeployPaths, kind: str,
                 zygote: tuple[int, int, int] | None = None) -> Any:
    """`local` and `lambda-local`: instances in the hosts of the deployment's lab, whose
    coordinator (and its secret file) the lab made."""
    from boxer.backends import get_backend
    from boxer.lab import load_lab
    from boxer.nat_traversal.auth import load_secret

    assert info.lab is not None, f"a {kind} deployment runs in a lab"
    lab = load_lab(info.lab)
    host, _, port = lab.coordinator.rpartition(":")
    options: dict[str, Any] = {"adopt_zygote": zygote} if zygote is not None else {}
    if kind == "lambda-local" and info.image:  # --image: bring-up mounted it and wrote what the sandboxes need
        options["image_file"] = paths.root / "image.json"
    backend: Any = get_backend(kind, lab=lab, log_dir=paths.instances, cwd=info.dir, spare_hosts=1, **options)
    return (backend, (host, int(port)), load_secret(str(lab.secret_file), None),
            {"lab": lab.name, "hosts": backend.describe()})


def _lambda_backend(info: DeploymentRecord) -> Any:
    """`lambda`: instances are invocations of the function in outputs.json; the coordinator
    is the one terraform made, the secret is read from SSM (standard credential chain), here
    on the user's machine: no lab, no root."""
    from boxer.agent.control import parse_endpoint
    from boxer.backends import get_backend
    from boxer.backends.aws_lambda.preflight import SetupError, load_facts, read_deployment_secret

    outputs = info.outputs
    if outputs is None:
        log.error("the deployment record names no terraform outputs: `boxer down`, then `boxer up` again")
        return None
    try:
        facts = load_facts(outputs)
        secret = read_deployment_secret(facts, outputs=outputs)
    except SetupError as exc:
        log.error("%s", exc)
        return None
    backend = get_backend("lambda", facts=facts, max_concurrency=int(info.max_concurrency or 100))
    return (backend, parse_endpoint(facts.coordinator_address), secret,
            {"lab": None, "function": facts.function_name, "region": facts.region,
             "outputs": str(outputs)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boxer.controller.daemon")
    parser.add_argument("--name", required=True)
    parser.add_argument("--metrics-fd", type=int)
    parser.add_argument("--tick", type=float, default=0.25)
    parser.add_argument("--zygote", metavar="PID:ANSWERS_FD:REQUESTS_FD",
                        help="an agent zygote `boxer up` started, to adopt (local backend)")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.Formatter.converter = time.gmtime
    from boxer import _aio

    zygote = tuple(int(part) for part in args.zygote.split(":")) if args.zygote else None
    return _aio.run(_main(DeployPaths(args.name), args.metrics_fd, args.tick, zygote))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
