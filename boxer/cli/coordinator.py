"""`boxer coordinator` and `boxer relay`: the click layer over the coordinator's servers."""

from __future__ import annotations

import os

import click

from boxer import _aio as aio
from boxer.cli._common import endpoint_option, fail, setup_logging
from boxer.nat_traversal.auth import SecretError, load_secret
from boxer.nat_traversal.defaults import DEFAULT_PORT, DEFAULT_PREFIX, relay_port_of
from boxer.nat_traversal.limits import Limits, RelayLimits, describe, with_overrides


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
@click.option("--limit", "limit_settings", multiple=True, metavar="NAME=VALUE",
              help="Change one of the bounds on what anyone may make the coordinator or its relay hold "
              f"(repeatable; docs/security.md explains each). Defaults: {describe(Limits())}, "
              f"{describe(RelayLimits(), 'relay.')}.")
@click.option("-v", "--verbose", count=True, help="More logging on stderr.")
def coordinator_command(listen, secret_file, prefix, ready_file, relay_port, relay_mode, metrics, heartbeat,
                        quiet_after, limit_settings, verbose) -> None:
    """Run the coordinator: membership, names, endpoint discovery and hole-punch brokering.

    It holds no data of its own (agents re-register after a restart) and application bytes never
    pass through it."""
    import ipaddress

    from boxer.nat_traversal.broker import Timeouts
    from boxer.nat_traversal.coordinator import serve

    setup_logging(verbose + 1, "coordinator")
    host, port = endpoint_option(listen, "--listen")
    limits, relay_limits = _limits(limit_settings)
    try:
        secret = load_secret(secret_file, os.environ.get("BOXER_SECRET"))
        network = ipaddress.IPv4Network(prefix)
    except SecretError as exc:
        raise SystemExit(fail(str(exc), 2)) from None
    except ValueError as exc:
        raise SystemExit(fail(f"--prefix: {exc}", 2)) from None
    if network.num_addresses < 4:
        raise SystemExit(fail(f"--prefix {prefix} is too small for any instance", 2))
    metrics_at = endpoint_option(metrics, "--metrics") if metrics else None
    if heartbeat and quiet_after < 2 * heartbeat:
        raise SystemExit(fail(f"--quiet-after {quiet_after:g} is less than two heartbeats ({heartbeat:g} s each): "
                               "every late beat would report an instance quiet", 2))
    if heartbeat and heartbeat < 0.01:
        raise SystemExit(fail("--heartbeat must be 0 (off) or at least 0.01 s", 2))
    timeouts = Timeouts(beat=heartbeat or None, quiet=quiet_after)
    aio.run(serve(host, port, secret, str(network), ready_file, relay_port, relay_mode == "embedded", metrics_at,
                  timeouts, limits, relay_limits))


def _limits(settings: tuple[str, ...]) -> tuple[Limits, RelayLimits]:
    try:
        return with_overrides(Limits(), RelayLimits(), list(settings))
    except ValueError as exc:
        raise SystemExit(fail(str(exc), 2)) from None


@click.command("relay")
@click.option("--listen", default=f"0.0.0.0:{relay_port_of(DEFAULT_PORT)}", show_default=True, metavar="HOST:PORT",
              help="Address to listen on (the coordinator's --relay-port).")
@click.option("--secret-file", envvar="BOXER_SECRET_FILE", type=click.Path(dir_okay=False),
              help="File holding the deployment secret (hex) [env BOXER_SECRET_FILE].")
@click.option("--limit", "limit_settings", multiple=True, metavar="relay.NAME=VALUE",
              help=f"Change one of the relay's bounds (repeatable). Defaults: {describe(RelayLimits(), 'relay.')}.")
@click.option("-v", "--verbose", count=True, help="More logging on stderr.")
def relay_command(listen, secret_file, limit_settings, verbose) -> None:
    """Run the relay on its own: it joins the two halves of connections that cannot be punched
    (symmetric NATs, filtering) with splice(2), and answers NAT probes. Pair it with
    `boxer coordinator --relay external`."""
    from boxer.nat_traversal.coordinator import serve_relay

    setup_logging(verbose + 1, "relay")
    host, port = endpoint_option(listen, "--listen")
    _, relay_limits = _limits(limit_settings)
    try:
        secret = load_secret(secret_file, os.environ.get("BOXER_SECRET"))
    except SecretError as exc:
        raise SystemExit(fail(str(exc), 2)) from None
    aio.run(serve_relay(host, port, secret, relay_limits))
