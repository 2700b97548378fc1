"""The controller process of one deployment: `python -m boxer.controller.daemon --name NAME`.

`boxer up` starts it (controller/bringup.py) after writing the deployment record
(controller/record.py, deployment.json); the CLI then talks to it through the control API
(controller/api: gRPC on the deployment's Unix socket, optionally TCP with TLS): for the lab backends (`local`,
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

from boxer.controller.paths import DeployPaths, write_atomic
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
                zygote: tuple[int, int, int] | None = None, tcp: Any = None) -> int:
    info = DeploymentRecord.load(paths)
    if info is None:
        log.error("no deployment record in %s: start deployments with `boxer up`", paths.deployment)
        return 2
    runtime = await make_runtime(paths, info, tick, metrics_fd, zygote)
    if runtime is None:
        return 2
    kind = info.backend
    coordinator = runtime.coordinator
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from boxer.controller.api.server import ControlService, serve

    service = ControlService(runtime, make_applier(paths, runtime, kind), stop.set, paths.log, paths.instances)
    try:
        servers = await serve(service, paths.control_socket, tcp)
    except (OSError, RuntimeError) as exc:
        log.error("cannot serve the control API: %s", exc)
        return 2
    log.info("controller of %s up: backend %s, coordinator %s:%d", paths.name, kind,
             *coordinator)
    try:
        await runtime.run(stop)
    finally:
        # A Down answered just before: its reply goes out, then the servers close.
        await asyncio.gather(*(server.stop(1.0) for server in servers))
        paths.control_socket.unlink(missing_ok=True)
    log.info("controller of %s stopped", paths.name)
    return 0


async def make_runtime(paths: DeployPaths, info: DeploymentRecord, tick: float, metrics_fd: int | None = None,
                 zygote: tuple[int, int, int] | None = None, resume: Any = None) -> Any:
    """The deployment's backend and its ControllerRuntime, from its record and the file it runs;
    None (said in the log) when the backend cannot be made. `resume`: the roster a crashed
    controller left (controller/resume.py), to adopt its instances from."""
    kind = info.backend
    # The backend first: the lab's agent zygote then warms up while the validator (pydantic)
    # and the runtime are imported, instead of holding up the first instances afterwards.
    made = await _lambda_backend(info) if kind == "lambda" else _lab_backend(info, paths, kind, zygote)
    if made is None:
        return None
    backend, coordinator, secret, facts = made

    from boxer.controller.runtime import ControllerRuntime
    from boxer.controller.validate import load_deployment

    applied = paths.applied_file if paths.applied_file.exists() else Path(info.file)
    deployment = load_deployment(applied, backend=kind)
    metrics_sock = None
    if metrics_fd is not None:
        metrics_sock = socket.socket(fileno=metrics_fd)
        metrics_sock.setblocking(False)
    return ControllerRuntime(
        deployment, backend, coordinator=coordinator, secret=secret, paths=paths, tick=tick,
        metrics_sock=metrics_sock, register_timeout=info.register_timeout, resume=resume,
        info={"name": paths.name, "backend": kind, "file": info.file, "pid": os.getpid(),
              **facts},
    )


def make_applier(paths: DeployPaths, runtime: Any, kind: str) -> Any:
    """The control API's Apply: an edited deployment file, applied to the running deployment if
    everything that changed may change live (boxer.controller.reapply), else refused whole."""

    def apply(content: bytes, path: str, max_concurrency: int | None,
              register_timeout: float | None) -> tuple[list[str], list[str]]:
        from boxer.controller.api.server import ApplyRefused
        from boxer.controller.errors import DeploymentFileError
        from boxer.controller.reapply import plan_reapply
        from boxer.controller.validate import parse_deployment

        try:
            edited = parse_deployment(content.decode("utf-8"), path or "<deployment>", backend=kind)
        except UnicodeDecodeError as exc:
            raise ApplyRefused(f"{path}: not UTF-8 text: {exc}") from None
        except DeploymentFileError as exc:
            reason = "; ".join(map(str, exc.issues))
            log.error("apply refused: %s", reason)
            raise ApplyRefused(reason) from None
        plan = plan_reapply(runtime.deployment, edited)
        if not plan.ok:
            log.error("apply refused: %s cannot change while the deployment runs", ", ".join(plan.refused))
            raise ApplyRefused(f"these cannot change while it runs: {', '.join(plan.refused)}", list(plan.refused))
        runtime.apply(edited, plan.rollouts)
        _apply_backend_settings(runtime, max_concurrency, register_timeout)
        write_atomic(paths.applied_file, content)  # what runs now, for a restart and the next apply
        record = DeploymentRecord.load(paths)
        if record is not None:
            changes: dict[str, Any] = {"generation": record.generation + 1}
            if path:
                changes["file"] = path
            if max_concurrency is not None:
                changes["max_concurrency"] = max_concurrency
            if register_timeout is not None:
                changes["register_timeout"] = register_timeout
            record.replace(**changes).save(paths)
        log.info("applied: %s", "; ".join(plan.changes) or "no change")
        return list(plan.changes), list(plan.rollouts)

    return apply


def _apply_backend_settings(runtime: Any, max_concurrency: int | None, register_timeout: float | None) -> None:
    """What the caller worked out for the backend from the edited `lambda:` block: the
    concurrency it may use (after the function's and the account's limits), the registration
    timeout."""
    set_limit = getattr(runtime.backend, "set_max_concurrency", None)
    if set_limit is not None and max_concurrency:
        set_limit(int(max_concurrency))
    if register_timeout is not None:
        runtime.set_register_timeout(float(register_timeout))


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
    if kind == "lambda-local":  # vm instances through host daemons on the public hosts, as on EC2
        options["host_daemons"] = True
    if kind == "lambda-local" and info.image:  # --image: bring-up mounted it and wrote what the sandboxes need
        options["image_file"] = paths.root / "image.json"
    backend: Any = get_backend(kind, lab=lab, log_dir=paths.instances, cwd=info.dir, spare_hosts=1, **options)
    return (backend, (host, int(port)), load_secret(str(lab.secret_file), None),
            {"lab": lab.name, "hosts": backend.describe()})


async def _lambda_backend(info: DeploymentRecord) -> Any:
    """`lambda`: instances are invocations of the function in outputs.json, and `vm` ones go to
    the daemons of the vm hosts (the Auto Scaling group the outputs name); the coordinator is
    the one terraform made, the secret is read from SSM (aiobotocore, standard credential chain):
    no lab, no root."""
    from boxer.agent.control import parse_endpoint
    from boxer.backends import get_backend
    from boxer.backends.aws_lambda.preflight import SetupError, load_facts, read_deployment_secret_async
    from boxer.backends.vmhost.protocol import host_token

    outputs = info.outputs
    if outputs is None:
        log.error("the deployment record names no terraform outputs: `boxer down`, then `boxer up` again")
        return None
    try:
        facts = load_facts(outputs)
        secret = await read_deployment_secret_async(facts, outputs=outputs)
    except SetupError as exc:
        log.error("%s", exc)
        return None
    vm_token = host_token(secret)
    if facts.vm_host_token_parameter_name:  # terraform's own token: the hosts hold no secret
        try:
            vm_token = await read_deployment_secret_async(facts, outputs=outputs,
                                                          parameter=facts.vm_host_token_parameter_name)
        except SetupError as exc:
            log.error("the vm hosts' token: %s", exc)
            return None
    backend = get_backend("lambda", facts=facts, max_concurrency=int(info.max_concurrency or 100),
                          vm_token=vm_token)
    return (backend, parse_endpoint(facts.coordinator_address), secret,
            {"lab": None, "function": facts.function_name, "region": facts.region,
             "outputs": str(outputs)})


def main(argv: list[str] | None = None) -> int:
    # The controller forks for every subprocess it starts (lab hosts' commands, the agent zygote,
    # sandboxes) while its gRPC server runs; gRPC's fork handlers then run in each child between
    # fork and exec and may abort it ("Check failure"; seen killing a controller host's zygote).
    # The children exec at once and never use gRPC, so they need no fork support: read at import.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    parser = argparse.ArgumentParser(prog="python -m boxer.controller.daemon")
    parser.add_argument("--name", help="the deployment `boxer up` prepared (its record) to run")
    # Or wait for deployments sent through the control API (Up): a controller host, beside a
    # coordinator on another machine (controller/host.py).
    parser.add_argument("--serve", action="store_true", help="run the deployments sent here (Up), one at a time")
    parser.add_argument("--backend", choices=("lambda", "local", "lambda-local"), help="--serve: where they run")
    parser.add_argument("--lab", help="--serve with a lab backend: the lab instances run in")
    parser.add_argument("--outputs", metavar="JSON", help="--serve with lambda: terraform's outputs, as here")
    parser.add_argument("--workdir", metavar="DIR", default="/",
                        help="--serve with a lab backend: the instances' working directory")
    parser.add_argument("--control-socket", metavar="PATH",
                        help="--serve: the control API's Unix socket [default: <state root>/host/sock]")
    parser.add_argument("--metrics-fd", type=int)
    parser.add_argument("--tick", type=float, default=0.25)
    parser.add_argument("--zygote", metavar="PID:ANSWERS_FD:REQUESTS_FD",
                        help="an agent zygote `boxer up` started, to adopt (local backend)")
    # The control API is always on the deployment's Unix socket; these add TCP for a remote
    # caller (a controller beside a coordinator on another machine): TLS and a credential.
    parser.add_argument("--control-listen", metavar="HOST:PORT", help="also serve the control API here")
    parser.add_argument("--control-cert", metavar="PEM", help="TLS certificate chain for --control-listen")
    parser.add_argument("--control-key", metavar="PEM", help="its private key")
    parser.add_argument("--control-token-file", metavar="FILE",
                        help="the credential each call must present (Bearer), one line")
    args = parser.parse_args(argv)
    if args.serve == bool(args.name):
        parser.error("give --name NAME (a deployment `boxer up` prepared) or --serve, not both")
    if args.serve and not args.backend:
        parser.error("--serve needs --backend (lambda with --outputs, or local/lambda-local with --lab)")
    if args.serve and args.backend == "lambda" and not args.outputs:
        parser.error("--serve --backend lambda needs --outputs (terraform output -json, as this machine reaches it)")
    if args.serve and args.backend != "lambda" and not args.lab:
        parser.error(f"--serve --backend {args.backend} needs --lab (the lab its instances run in)")
    tcp = None
    if args.control_listen:
        if not (args.control_cert and args.control_key and args.control_token_file):
            parser.error("--control-listen needs --control-cert, --control-key and --control-token-file")
        from boxer.controller.api.server import TcpListener

        token = Path(args.control_token_file).read_text().strip()
        if len(token) < 16:
            parser.error(f"{args.control_token_file}: the credential must be at least 16 characters")
        tcp = TcpListener(args.control_listen, Path(args.control_cert).read_bytes(),
                          Path(args.control_key).read_bytes(), token)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.Formatter.converter = time.gmtime
    from boxer import _aio

    if args.serve:
        from boxer.controller.host import HostConfig, serve_deployments
        from boxer.controller.paths import default_state_root

        config = HostConfig(backend=args.backend, lab=args.lab, outputs=Path(args.outputs) if args.outputs else None,
                            workdir=Path(args.workdir), tick=args.tick)
        socket_path = Path(args.control_socket) if args.control_socket else default_state_root() / "host" / "sock"
        return _aio.run(serve_deployments(config, socket_path, tcp, _JsonLines()))  # type: ignore[arg-type]
    zygote = tuple(int(part) for part in args.zygote.split(":")) if args.zygote else None
    return _aio.run(_main(DeployPaths(args.name), args.metrics_fd, args.tick, zygote, tcp))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
