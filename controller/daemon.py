"""The controller process of one deployment: `python -m controller.daemon --name NAME`.

`boxer up` starts it beside the coordinator (inside the lab's coordinator namespace, where the
coordinator's address is reachable) after writing deployment.json; SIGTERM or SIGINT stop it,
and it stops every instance it started before exiting. Logs are JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import sys
import time
from pathlib import Path

from controller.paths import DeployPaths, read_json

log = logging.getLogger("controller.daemon")


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"t": round(record.created, 3), "level": record.levelname.lower(),
                "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


async def _main(paths: DeployPaths, metrics_fd: int | None, tick: float) -> int:
    from boxer.backends.local import LabLambdaBackend, LocalBackend
    from boxer.lab import load_lab
    from controller.runtime import ControllerRuntime
    from controller.validate import load_deployment
    from nat_traversal.auth import load_secret

    info = read_json(paths.deployment)
    if not info:
        log.error("no %s: start deployments with `boxer up`", paths.deployment)
        return 2
    deployment = load_deployment(Path(info["file"]))
    lab = load_lab(info["lab"])
    host, _, port = lab.coordinator.rpartition(":")
    kind = info.get("backend", "local")
    backend_class = LabLambdaBackend if kind == "lambda-local" else LocalBackend
    backend = backend_class(lab, log_dir=paths.instances, cwd=info["dir"], spare_hosts=1)
    metrics_sock = None
    if metrics_fd is not None:
        metrics_sock = socket.socket(fileno=metrics_fd)
        metrics_sock.setblocking(False)
    runtime = ControllerRuntime(
        deployment, backend, coordinator=(host, int(port)),
        secret=load_secret(str(lab.secret_file), None), paths=paths, tick=tick,
        metrics_sock=metrics_sock,
        info={"name": paths.name, "lab": lab.name, "backend": kind, "file": info["file"],
              "pid": None, "hosts": backend.describe()},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("controller of %s up: lab %s, coordinator %s", paths.name, lab.name, lab.coordinator)
    await runtime.run(stop)
    log.info("controller of %s stopped", paths.name)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.daemon")
    parser.add_argument("--name", required=True)
    parser.add_argument("--metrics-fd", type=int)
    parser.add_argument("--tick", type=float, default=0.25)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.Formatter.converter = time.gmtime
    from boxer import _aio

    return _aio.run(_main(DeployPaths(args.name), args.metrics_fd, args.tick))


if __name__ == "__main__":
    sys.exit(main())
