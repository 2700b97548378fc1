"""`boxer probe-nat`: what kind of NAT is this instance behind? Run it on Lambda, or in the lab."""

from __future__ import annotations

import asyncio
import json

import click

from boxer import _aio as aio
from boxer.agent.control import parse_endpoint


@click.command("probe-nat")
@click.option("--coordinator", envvar="BOXER_COORDINATOR", required=True, metavar="HOST:PORT",
              help="The coordinator [env BOXER_COORDINATOR].")
@click.option("--relay-port", type=int, help="The coordinator's relay port [default: its port + 1].")
@click.option("--idle", "idle", multiple=True, type=click.IntRange(1, 3600), metavar="SECONDS",
              help="Also check that a TCP mapping idle this long still works (repeatable; checks run "
                   "in parallel, so the probe takes the longest of them).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def probe_nat_command(coordinator, relay_port, idle, output) -> None:
    """Measure this host's NAT against the coordinator: port mapping (endpoint-independent, which
    hole punching needs, or symmetric), filtering (does it let in what we never sent to), port
    preservation, and how long idle mappings live.

    \b
    Examples:
      boxer lab exec h1 -- boxer probe-nat
      boxer probe-nat --coordinator 203.0.113.7:7000 --idle 60 --idle 300 -o json
    """
    from boxer.agent.natprobe import idle_mapping_survives, probe_filtering, probe_mapping

    host, port = parse_endpoint(coordinator)
    relay = relay_port or port + 1

    async def measure() -> dict:
        probe = await probe_mapping((host, port), relay)
        filtering = await probe_filtering((host, relay))
        survived = await asyncio.gather(*(idle_mapping_survives((host, relay), s) for s in idle))
        return {**probe.as_dict(), "filtering": filtering,
                "idle_checks": {str(s): ok for s, ok in zip(idle, survived, strict=False)}}

    try:
        result = aio.run(measure())
    except (OSError, asyncio.TimeoutError) as exc:
        raise click.ClickException(f"cannot probe against {host}:{port} / relay port {relay}: {exc}") from None
    if output == "json":
        click.echo(json.dumps(result, indent=2))
        return
    punchable = "yes" if result["mapping"] == "eim" else "no: connections will use the relay"
    rows = [
        ("mapping", {"eim": "endpoint-independent", "symmetric": "symmetric (new port per destination)"}
         [result["mapping"]]),
        ("hole punching works", punchable),
        ("filtering", result["filtering"]),
        ("port preserved", "yes" if result["port_preserved"] else "no"),
        ("local port", str(result["local_port"])),
        ("public endpoint (main port)", result["endpoint_main"]),
        ("public endpoint (relay port)", result["endpoint_relay"]),
    ]
    rows += [(f"idle {s} s mapping survives", "yes" if ok else "no") for s, ok in result["idle_checks"].items()]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")
