"""`boxer probe-nat`: what kind of NAT is this instance behind? Run it on Lambda, or in the lab."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import click

from boxer import _aio as aio
from boxer.agent.control import parse_endpoint
from boxer.nat_traversal.defaults import relay_port_of


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
    relay = relay_port or relay_port_of(port)

    async def measure() -> dict:
        probe = await probe_mapping((host, port), relay)
        filtering = await probe_filtering((host, relay))
        survived = await asyncio.gather(*(idle_mapping_survives((host, relay), s) for s in idle))
        return {**probe.as_dict(), "filtering": filtering,
                "idle_checks": {str(s): ok for s, ok in zip(idle, survived, strict=False)}}

    try:
        result = aio.run(measure())
    except (OSError, asyncio.TimeoutError) as exc:
        why = ("no answer in time" if isinstance(exc, asyncio.TimeoutError)
               else os.strerror(exc.errno).lower() if exc.errno else str(exc))
        raise click.ClickException(f"cannot probe against {host}:{port} (relay port {relay}): {why}; is a "
                                   "coordinator listening there? (--coordinator HOST:PORT)") from None
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


@click.command("probe-lambda")
@click.option("--outputs", type=click.Path(dir_okay=False, path_type=Path),
              help="AWS: invoke the function named in these terraform outputs (RequestResponse) and "
                   "probe its sandbox and NAT against the deployment's coordinator.")
@click.option("--image", metavar="IMAGE", help="Here: one local invocation of IMAGE (buildah's storage) in "
                                               "the Lambda-like sandbox (needs root).")
@click.option("--lab", "lab_name", help="With --image: run it in a host of this lab, behind its NAT, and probe "
                                        "the NAT against the lab's coordinator.")
@click.option("--host", default="h1", show_default=True, help="With --lab: the lab host.")
@click.option("--deny", default="", metavar="SYSCALL,...",
              help="With --image: what the sandbox refuses (e.g. pidfd_open,family:netlink,SO_REUSEPORT).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def probe_lambda_command(outputs: Path | None, image: str | None, lab_name: str | None, host: str, deny: str,
                         output: str) -> None:
    """What a Lambda sandbox allows, and what boxer relies on, from one invocation: kernel, user,
    capabilities, seccomp, descriptor and process limits, /tmp, each system call and socket
    family the agent and interposer use (and what boxer does without it), whether LD_PRELOAD is
    honoured, and the NAT (as `boxer probe-nat`).

    \b
    Examples:
      boxer probe-lambda --outputs outputs.json                 # the real function, on AWS
      boxer probe-lambda --image localhost/boxer-lambda:TAG --lab demo --deny pidfd_open
    """
    if (outputs is None) == (image is None):
        raise click.UsageError("give --outputs (the function on AWS) or --image (a local invocation)")
    report = _probe_aws(outputs) if outputs is not None else _probe_image(image, lab_name, host, deny)
    if output == "json":
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(probe_table(report))


def probe_table(report: dict) -> str:
    limits = report["limits"]
    rows = [("kernel", f"{report['kernel']} ({report['machine']}), python {report['python']}"),
            ("user", f"uid {report['uid']} gid {report['gid']}"),
            ("capabilities", f"effective {report['capabilities']['effective']}, bounding "
                             f"{report['capabilities']['bounding']}, no_new_privs {report['no_new_privs']}"),
            ("seccomp", str(report["seccomp"])),
            ("descriptors", "/".join(map(str, limits["nofile"])) + " (soft/hard)"),
            ("processes", "/".join(map(str, limits["nproc"])) + " (soft/hard)"),
            ("/tmp", f"{report['tmp']['bytes'] / 2**20:.0f} MiB, writable {report['tmp']['writable']}; "
                     f"root writable {report['root_writable']}"),
            ("LD_PRELOAD", "honoured" if report["ld_preload"]["ok"] else f"NOT honoured: {report['ld_preload']}")]
    for name, feature in report["features"].items():
        rows.append((name, "yes" if feature["ok"] else f"NO ({feature['detail']}): {feature['fallback']}"))
    nat = report.get("nat")
    if nat is None:
        rows.append(("NAT", "not probed (no coordinator)"))
    elif "error" in nat:
        rows.append(("NAT", f"probe failed: {nat['error']}"))
    else:
        rows.append(("NAT mapping", {"eim": "endpoint-independent (hole punching works)",
                                     "symmetric": "symmetric (connections use the relay)"}[nat["mapping"]]))
        rows.append(("NAT filtering", nat["filtering"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def _probe_aws(outputs: Path) -> dict:
    from boxer.backends.aws_lambda.handler import PROBE_KEY
    from boxer.backends.aws_lambda.preflight import SetupError, load_facts

    try:
        facts = load_facts(outputs)
    except SetupError as exc:
        raise click.ClickException(str(exc)) from None
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session().client("lambda", region_name=facts.region)
    event = {PROBE_KEY: {"coordinator": facts.coordinator_address}}
    try:
        reply = client.invoke(FunctionName=facts.function_name, InvocationType="RequestResponse",
                              Payload=json.dumps(event).encode())
    except (BotoCoreError, ClientError) as exc:
        raise click.ClickException(f"cannot invoke {facts.function_name} in {facts.region}: {exc}") from None
    body = json.loads(reply["Payload"].read() or b"null")
    if reply.get("FunctionError"):
        raise click.ClickException(f"the probe failed in the function: {body}")
    return dict(body)


def _probe_image(image: str, lab_name: str | None, host: str, deny: str) -> dict:
    import os
    import subprocess
    import sys
    import tempfile

    from boxer.backends.aws_lambda.handler import PROBE_KEY
    from boxer.backends.emulators.image import ImageError, close_image, open_image

    if os.geteuid() != 0:
        raise click.ClickException("--image runs a local sandbox, which needs root")
    coordinator, prefix = None, []
    if lab_name is not None:
        from boxer.lab import load_lab

        lab = load_lab(lab_name)
        coordinator = lab.coordinator
        prefix = lab.command(host, ["true"])[:-1]  # the argv prefix that enters the host
    try:
        opened = open_image(image, f"probe{os.getpid()}")
    except ImageError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".json") as spec:
            json.dump(opened.to_dict(), spec)
            spec.flush()
            argv = [*prefix, sys.executable, "-m", "boxer.backends.emulators.lambda_local", "--timeout", "60",
                    "--image", spec.name, "--deny", deny]
            event = json.dumps({PROBE_KEY: {"coordinator": coordinator}})
            proc = subprocess.run(argv, input=event, capture_output=True, text=True, timeout=90)
    finally:
        close_image(opened)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise click.ClickException(f"the local invocation gave no result: {proc.stderr[-2000:]}") from None
    if result["status"] != "ok":
        raise click.ClickException(f"the probe invocation ended {result['status']}: {result['payload']}")
    return dict(result["payload"])
