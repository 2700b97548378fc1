"""`boxer lambda-local serve`: a local Lambda Invoke API, so `boxer up --backend lambda` (the
real boto3 client and LambdaBackend) can run without AWS. See boxer/backends/emulators/invoke_api.py."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import click


@click.group("lambda-local")
def lambda_local() -> None:
    """A local stand-in for AWS Lambda (Invoke API, Runtime API, awslambdaric, the handler)."""


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


@lambda_local.command("serve")
@click.option("--function", "function_name", required=True,
              help="Function name Invoke answers to (outputs.json's function_name).")
@click.option("--listen", default="127.0.0.1:9001", show_default=True, metavar="HOST:PORT",
              help="Where the Invoke API listens (port 0: any free port).")
@click.option("--lab", "lab_name", help="Run each sandbox in a host of this lab (behind its NAT).")
@click.option("--hosts", help="Lab hosts for sandboxes, e.g. h1,h2 (one invocation each at a "
              "time) [default: every NATed host of the lab].")
@click.option("--concurrency", type=click.IntRange(1, 1000), default=4, show_default=True,
              help="Without --lab: how many sandboxes may run at once, as plain processes here.")
@click.option("--timeout", type=click.FloatRange(1, 900), default=900, show_default=True,
              help="The function timeout, seconds.")
@click.option("--region", default="us-east-1", show_default=True,
              help="AWS_REGION inside the sandboxes (and in ARNs).")
@click.option("--env", "env_items", multiple=True, metavar="KEY=VALUE",
              help="The function's environment variables (repeatable).")
@click.option("--throttle-first", type=click.IntRange(0), default=0, show_default=True,
              help="Answer the first N Invoke calls 429 TooManyRequestsException.")
@click.option("--latency", type=click.FloatRange(0, 10), default=0.0, show_default=True, metavar="SECONDS",
              help="Wait this long before answering each Invoke (the round trip to Lambda's endpoint).")
@click.option("--drop", is_flag=True,
              help="Accept events (202) and run nothing: instances that never register.")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write each invocation's log to DIR/FUNCTION/REQUEST-ID.log.")
def serve_command(function_name: str, listen: str, lab_name: str | None, hosts: str | None,
                  concurrency: int, timeout: float, region: str, env_items: tuple[str, ...],
                  throttle_first: int, latency: float, drop: bool, log_dir: Path | None) -> None:
    """Serve Lambda's Invoke API for one function until Ctrl-C or SIGTERM.

    Point boto3 at it with AWS_ENDPOINT_URL_LAMBDA=http://HOST:PORT; the first line printed
    says exactly that. It serves only calls signed with the AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY it was started with (an invocation runs code as this user): give it and
    its callers the same random pair.

    \b
    Example (docs/aws.md, "Without an AWS account"):
      boxer lambda-local serve --function boxer-demo --lab demo --hosts h1,h2
    """
    from boxer.backends.emulators.invoke_api import InvokeApiServer, LocalFunction

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    env = {}
    for item in env_items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--env")
        env[key] = value
    if lab_name:
        from boxer.lab import LabError, load_lab

        try:
            lab = load_lab(lab_name)
            names = hosts.split(",") if hosts else [h.name for h in lab.hosts]
            slots = [tuple(lab.command(name.strip(), ["x"])[:-1]) for name in names]
        except LabError as exc:
            raise click.ClickException(str(exc)) from None
    elif hosts:
        raise click.BadParameter("--hosts needs --lab", param_hint="--hosts")
    else:
        slots = [()] * concurrency
    host, port = _listen(listen)
    try:
        function = LocalFunction(function_name, timeout=timeout, slots=slots, env=env, drop=drop)
        server = InvokeApiServer([function], host, port, region=region,
                                 throttle_first=throttle_first, latency=latency, log_dir=log_dir)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"cannot serve the Invoke API on {listen}: {exc}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        click.echo(f"AWS_ENDPOINT_URL_LAMBDA={server.endpoint_url}  # function {function_name}, "
                   f"{len(slots)} sandbox slot(s){', drops events' if drop else ''}")
        sys.stdout.flush()
        stop.wait()
        click.echo("stopping: ending running sandboxes", err=True)
