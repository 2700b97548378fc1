"""`boxer run` and `boxer coordinator`: the click layer over the agent and the coordinator."""

from __future__ import annotations

import logging
import os
import re
import sys

import click

from boxer import _aio as aio

from boxer.agent.child import InterposerMissing, interposer_path
from boxer.agent.control import parse_endpoint
from boxer.wrapcheck import UnwrappableError, check_wrappable
from nat_traversal.auth import SecretError, load_secret

DEFAULT_PORT = 7000
DEFAULT_PREFIX = "100.64.0.0/10"  # nat_traversal.broker.DEFAULT_PREFIX, without importing the broker


def setup_logging(verbose: int, who: str) -> None:
    level = logging.WARNING - 10 * verbose
    level = int(os.environ.get("BOXER_LOG_LEVEL", level)) if os.environ.get("BOXER_LOG_LEVEL", "").isdigit() else level
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"boxer {who}[%(process)d] %(levelname)s %(name)s: %(message)s")


def _default_name(argv: list[str]) -> str:
    for var in ("BOXER_INSTANCE_NAME", "BOXER_LAB_HOST"):
        if os.environ.get(var):
            return os.environ[var]
    base = re.sub(r"[^a-z0-9-]", "-", os.path.basename(argv[0]).lower()).strip("-") or "app"
    return f"{base[:50]}-{os.urandom(2).hex()}"


def _endpoint(value: str, what: str) -> tuple[str, int]:
    try:
        return parse_endpoint(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=what) from None


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--name", help="Host name of this instance on the overlay (default: the lab host, or "
              "the program's name with a random suffix). Other instances connect to it by this name.")
@click.option("--service", help="Service this instance belongs to (default: the name without a "
              "trailing -N).")
@click.option("--coordinator", envvar="BOXER_COORDINATOR", metavar="HOST:PORT",
              help="The coordinator's public address [env BOXER_COORDINATOR; set by `boxer lab exec`].")
@click.option("--secret-file", envvar="BOXER_SECRET_FILE", type=click.Path(dir_okay=False),
              help="File holding the deployment secret (hex) [env BOXER_SECRET_FILE].")
@click.option("--lifetime", type=float, metavar="SECONDS",
              help="Stop the application after this long (Lambda's cap is 900 s).")
@click.option("--connect-timeout", type=float, default=5.0, show_default=True, metavar="SECONDS",
              help="How long an overlay connect may take before the app sees ETIMEDOUT.")
@click.option("--instance-id", envvar="BOXER_INSTANCE_ID", metavar="HEX", help="Identity of this instance (8-64 lowercase hex; "
              "default random). Controllers set it to tell a replacement from the instance it replaces.")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-v info, -vv debug).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(name, service, coordinator, secret_file, lifetime, connect_timeout, instance_id, verbose,
                command) -> None:
    """Run COMMAND, unmodified, as a host of the overlay.

    The program listens and connects as on any network; boxer registers it under NAME, answers
    its name lookups for other instances, and turns its connects into direct TCP connections
    punched through both NATs. Its exit status is boxer's.

    \b
    Examples:
      boxer run --name kv -- redis-server --port 6379
      boxer run -- redis-cli -h kv ping
    """
    from boxer.agent.runner import RunError, RunOptions, run_instance

    setup_logging(verbose, "agent")
    argv = list(command)
    try:
        check_wrappable(argv)
        interposer_path()
    except FileNotFoundError as exc:
        raise SystemExit(_fail(str(exc), 127))
    except (UnwrappableError, InterposerMissing) as exc:
        raise SystemExit(_fail(f"refusing to run {argv[0]}: {exc}", 126))
    if not coordinator:
        raise SystemExit(_fail("no coordinator: pass --coordinator HOST:PORT or set BOXER_COORDINATOR "
                               "(inside the lab, `boxer lab exec HOST -- boxer run ...` sets it)", 2))
    try:
        secret = load_secret(secret_file, os.environ.get("BOXER_SECRET"))
    except SecretError as exc:
        raise SystemExit(_fail(str(exc), 2))
    name = (name or _default_name(argv)).lower()
    service = (service or re.sub(r"-\d+$", "", name)).lower()
    opts = RunOptions(argv=argv, name=name, service=service, coordinator=_endpoint(coordinator, "--coordinator"),
                      secret=secret, lifetime=lifetime, connect_timeout=connect_timeout,
                      instance_id=instance_id)
    try:
        status = aio.run(run_instance(opts))
    except RunError as exc:
        raise SystemExit(_fail(str(exc), exc.status))
    except ValueError as exc:  # an invalid name/service, caught by message validation
        raise SystemExit(_fail(str(exc), 2))
    raise SystemExit(status)


def _fail(message: str, status: int) -> int:
    click.echo(f"boxer: {message}", err=True)
    return status


@click.command("coordinator")
@click.option("--listen", default=f"0.0.0.0:{DEFAULT_PORT}", show_default=True, metavar="HOST:PORT",
              help="Address to listen on; agents must reach it without an L7 proxy in between.")
@click.option("--secret-file", envvar="BOXER_SECRET_FILE", type=click.Path(dir_okay=False),
              help="File holding the deployment secret (hex) [env BOXER_SECRET_FILE].")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True,
              help="Overlay prefix instance addresses are allocated from.")
@click.option("--ready-file", type=click.Path(dir_okay=False),
              help="Write the bound HOST:PORT to this file once listening (for scripts).")
@click.option("--relay-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Port of the relay and NAT probes [default: the listen port + 1].")
@click.option("--relay", "relay_mode", type=click.Choice(["embedded", "external"]), default="embedded",
              show_default=True, help="Serve the relay in this process, or leave it to a separate "
              "`boxer relay` on --relay-port (relayed connections then survive a coordinator restart).")
@click.option("--metrics", metavar="HOST:PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics.")
@click.option("--heartbeat", type=click.FloatRange(0, 60), default=0.2, show_default=True, metavar="SECONDS",
              help="Agents send a heartbeat this often (0: none, and no instance is ever reported quiet). "
              "Each costs the coordinator one small read (benchmarks/bench_heartbeat.py measures it).")
@click.option("--quiet-after", type=click.FloatRange(0.05, 60), default=0.8, show_default=True, metavar="SECONDS",
              help="An instance not heard from for this long is reported quiet to the controller, which "
              "replaces it. Keep it several heartbeats long.")
@click.option("-v", "--verbose", count=True, help="More logging on stderr.")
def coordinator_command(listen, secret_file, prefix, ready_file, relay_port, relay_mode, metrics, heartbeat,
                        quiet_after, verbose) -> None:
    """Run the coordinator: membership, names, endpoint discovery and hole-punch brokering.

    It holds no data of its own (agents re-register after a restart) and application bytes never
    pass through it."""
    import ipaddress

    from nat_traversal.broker import Timeouts
    from nat_traversal.coordinator import serve

    setup_logging(verbose + 1, "coordinator")
    host, port = _endpoint(listen, "--listen")
    try:
        secret = load_secret(secret_file, os.environ.get("BOXER_SECRET"))
        network = ipaddress.IPv4Network(prefix)
    except SecretError as exc:
        raise SystemExit(_fail(str(exc), 2))
    except ValueError as exc:
        raise SystemExit(_fail(f"--prefix: {exc}", 2))
    if network.num_addresses < 4:
        raise SystemExit(_fail(f"--prefix {prefix} is too small for any instance", 2))
    metrics_at = _endpoint(metrics, "--metrics") if metrics else None
    if heartbeat and quiet_after < 2 * heartbeat:
        raise SystemExit(_fail(f"--quiet-after {quiet_after:g} is less than two heartbeats ({heartbeat:g} s each): "
                               "every late beat would report an instance quiet", 2))
    if heartbeat and heartbeat < 0.01:
        raise SystemExit(_fail("--heartbeat must be 0 (off) or at least 0.01 s", 2))
    timeouts = Timeouts(beat=heartbeat or None, quiet=quiet_after)
    aio.run(serve(host, port, secret, str(network), ready_file, relay_port, relay_mode == "embedded", metrics_at,
                  timeouts))


@click.command("relay")
@click.option("--listen", default=f"0.0.0.0:{DEFAULT_PORT + 1}", show_default=True, metavar="HOST:PORT",
              help="Address to listen on (the coordinator's --relay-port).")
@click.option("--secret-file", envvar="BOXER_SECRET_FILE", type=click.Path(dir_okay=False),
              help="File holding the deployment secret (hex) [env BOXER_SECRET_FILE].")
@click.option("-v", "--verbose", count=True, help="More logging on stderr.")
def relay_command(listen, secret_file, verbose) -> None:
    """Run the relay on its own: it joins the two halves of connections that cannot be punched
    (symmetric NATs, filtering) with splice(2), and answers NAT probes. Pair it with
    `boxer coordinator --relay external`."""
    from nat_traversal.coordinator import serve_relay

    setup_logging(verbose + 1, "relay")
    host, port = _endpoint(listen, "--listen")
    try:
        secret = load_secret(secret_file, os.environ.get("BOXER_SECRET"))
    except SecretError as exc:
        raise SystemExit(_fail(str(exc), 2))
    aio.run(serve_relay(host, port, secret))
