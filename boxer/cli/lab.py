"""`boxer lab up|exec|show|down`: the click layer over `boxer.lab`."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from boxer.cli import _context
from boxer.cli._common import OneLineError, fail
from boxer.lab._conditions import MAX_MAPPING_TIMEOUT, MAX_RTT_MS, LinkConditions
from boxer.lab._lab import Lab, lab_down, lab_up, list_labs, load_lab
from boxer.lab._plan import DEFAULT_NAME, MAX_HOSTS, MAX_PUBLIC
from boxer.lab.errors import LabError, LabNotFoundError, NotRootError

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(fn: F) -> F:
    """Show a LabError as one message (no traceback) unless BOXER_DEBUG is set."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LabError as exc:
            if os.environ.get("BOXER_DEBUG"):
                raise
            raise OneLineError(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def _count(n: int, one: str, many: str | None = None) -> str:
    """`1 host`, `2 hosts`."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def _setup_logging(verbose: int) -> None:
    logging.basicConfig(
        level=logging.WARNING - 10 * verbose,
        stream=sys.stderr,
        format="boxer lab %(levelname)s %(name)s: %(message)s",
    )


_new_name_option = click.option(
    "--name", default=DEFAULT_NAME, show_default=True, envvar="BOXER_LAB",
    help="Lab name: 1-10 of a-z, 0-9 [env BOXER_LAB].")
_name_option = click.option(
    "--name", envvar="BOXER_LAB",
    help="Lab name [env BOXER_LAB; default: the current lab (set by `boxer lab up` and "
         "`boxer up`), else the only one on this machine].")


def resolve_lab(name: str | None) -> str:
    """The lab a command means: --name, else the current one, else the only one there is.
    When none of these tells, the error names the labs that exist and how to pick one."""
    if name:
        return name
    labs = list_labs()
    current = _context.current("lab")
    if current and current in labs:
        return current
    if len(labs) == 1:
        return labs[0]
    if DEFAULT_NAME in labs:
        return DEFAULT_NAME
    if not labs:
        raise LabNotFoundError(DEFAULT_NAME, existing=[])
    raise LabError(f"several labs on this machine ({', '.join(labs)}) and none is current: "
                   f"pass --name NAME, e.g. --name {labs[0]}")


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise NotRootError(f"{what} needs root (network namespaces): run it as root, e.g. with sudo")
_verbose_option = click.option("-v", "--verbose", count=True, help="More logging on stderr.")


@click.group()
def lab() -> None:
    """The local cloud: instance hosts behind real NAT routers (network namespaces).

    Each host h<i> sits behind its own router that masquerades it to a public address and
    silently drops unsolicited inbound traffic, like AWS Lambda. Public hosts p<k> (--public)
    sit on the internet segment without NAT, like VMs. The coordinator runs on the public
    segment at 198.18.0.1:7000. Needs root. Details: docs/lab.md.
    """


def _link_options(fn: F) -> F:
    for option in reversed([
        click.option("--rtt", type=click.FloatRange(0, MAX_RTT_MS), default=0.0, metavar="MS",
                     help="Round-trip time between any two endpoints (half of it added on "
                          "each endpoint's egress)."),
        click.option("--jitter", type=click.FloatRange(0, MAX_RTT_MS), default=0.0,
                     metavar="MS", help="The RTT varies uniformly by up to +-MS."),
        click.option("--loss", type=click.FloatRange(0, 100), default=0.0, metavar="PCT",
                     help="Percent of packets lost on every one-way trip."),
    ]):
        fn = option(fn)
    return fn


@lab.command("up")
@_new_name_option
@click.option(
    "--hosts",
    type=click.IntRange(1, MAX_HOSTS),
    default=2,
    show_default=True,
    help="Number of NATed instance hosts.",
)
@click.option(
    "--nat",
    default="eim",
    show_default=True,
    metavar="SPEC",
    help="NAT type of the hosts: eim (endpoint-independent mapping, port kept, like Lambda) "
         "or symmetric (a new random port per connection). Per host: a comma-separated list "
         "of TYPE (the default) and HOST=TYPE items, e.g. 'eim,h2=symmetric'.",
)
@click.option(
    "--public",
    type=click.IntRange(0, MAX_PUBLIC),
    default=0,
    show_default=True,
    metavar="K",
    help="Public hosts p1..pK: a public address, no NAT, reachable inbound (the VM tier).",
)
@_link_options
@click.option(
    "--mapping-timeout",
    type=click.IntRange(1, MAX_MAPPING_TIMEOUT),
    default=None,
    metavar="SECONDS",
    help="Idle NAT mappings (TCP established, UDP) expire after SECONDS, and stay expired.",
)
@_verbose_option
@_user_errors
def up_command(
    name: str,
    hosts: int,
    nat: str,
    public: int,
    rtt: float,
    jitter: float,
    loss: float,
    mapping_timeout: int | None,
    verbose: int,
) -> None:
    """Create a lab and start its coordinator."""
    _setup_logging(verbose)
    created = lab_up(name, hosts, nat=nat, public=public, rtt=rtt, jitter=jitter, loss=loss,
                     mapping_timeout=mapping_timeout)
    coordinator = created.processes[0].pid if created.processes else None
    click.echo(
        f"lab {created.name} up: {_count(len(created.hosts), 'host')}"
        + (f", {len(created.public_hosts)} public" if created.public_hosts else "")
        + f" in {created.setup_seconds:.2f} s; "
        f"coordinator {created.coordinator} (pid {coordinator}, log {created.coordinator_log})"
    )
    _context.set_current("lab", created.name)
    click.echo(f"lab {created.name} is now the current lab; try: boxer lab exec h1 -- ip addr")


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@_name_option
@click.argument("host")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@_user_errors
def exec_command(name: str | None, host: str, command: Sequence[str]) -> None:
    """Run COMMAND inside HOST (h<i>, p<k> or coord) with BOXER_COORDINATOR, BOXER_SECRET_FILE,
    BOXER_LAB and BOXER_LAB_HOST set.

    The exit status is COMMAND's; 127 when COMMAND is not found, 126 when it cannot be run.

    \b
    Example: boxer lab exec h1 -- boxer run --name kv -- redis-server
    """
    _require_root("boxer lab exec")
    current = load_lab(resolve_lab(name))
    argv = current.command(host, command)
    env = current.env(host)
    # `ip netns exec` says "exec of ... failed" and exits 1 or 255; a shell says 127/126, and
    # scripts test for those. The host shares our file system, so its PATH is ours to search.
    program = command[0]
    found = shutil.which(program, path=env.get("PATH")) if "/" not in program else program
    if found is None or not os.path.exists(found):
        raise SystemExit(fail(f"{program}: command not found on {host}'s PATH ({env.get('PATH')});"
                              " install it or give its full path", 127))
    if not os.access(found, os.X_OK) or os.path.isdir(found):
        raise SystemExit(fail(f"{program}: cannot run it (not an executable file); "
                              f"check `ls -l {found}`", 126))
    sys.stdout.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        raise click.ClickException(f"cannot run {argv[0]}: {exc.strerror}") from None


@dataclass(frozen=True)
class _Column:
    title: str
    value: Callable[[dict[str, Any]], str]


_HOST_COLUMNS = (
    _Column("HOST", lambda h: h["name"]),
    _Column("ADDRESS", lambda h: h["address"]),
    _Column("PUBLIC", lambda h: h["public_address"]),
    _Column("NETNS", lambda h: h["netns"]),
    _Column("ROUTER", lambda h: h["router_netns"] or "-"),
    _Column("NAT", lambda h: h["nat"] or "none"),
    _Column("LINK", lambda h: LinkConditions.from_description(h["link"]).summary()),
)


def _table(columns: Sequence[_Column], rows: Sequence[dict[str, Any]]) -> str:
    cells = [[c.title for c in columns]] + [[c.value(row) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip()
        for line in cells
    )


def _show_table(current: Lab) -> str:
    info = current.describe()
    head = [
        f"lab          {info['name']}",
        f"coordinator  {info['coordinator']} (netns {info['coordinator_netns']})",
        f"internet     198.18.0.0/16 (netns {info['internet_netns']})",
        f"secret       {info['secret_file']}",
        "coord link   "
        + LinkConditions.from_description(info["coordinator_link"]).summary(),
        "mappings     "
        + (f"expire after {info['mapping_timeout']} s idle" if info["mapping_timeout"]
           else "kernel defaults (TCP established 5 days, UDP 30/120 s)"),
        "",
    ]
    return "\n".join(head) + _table(_HOST_COLUMNS, info["hosts"])


@lab.command("show")
@_name_option
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@_user_errors
def show_command(name: str | None, output: str) -> None:
    """Show a lab's hosts and addresses."""
    current = load_lab(resolve_lab(name))
    if output == "json":
        click.echo(json.dumps(current.describe(), indent=2))
    else:
        click.echo(_show_table(current))


@lab.command("link")
@_name_option
@click.argument("host")
@_link_options
@_user_errors
def link_command(name: str | None, host: str, rtt: float, jitter: float, loss: float) -> None:
    """Set HOST's link conditions now (h<i>, p<k> or coord); no options makes it clean.
    Open connections are affected at once."""
    name = resolve_lab(name)
    link = load_lab(name).set_link(host, rtt=rtt, jitter=jitter, loss=loss)
    click.echo(f"lab {name}: {host} link {link.summary()}")


def _deployment_using(lab_name: str) -> str | None:
    """The running deployment whose instances live in `lab_name`, if any."""
    from boxer.controller.deployments import deployment_in_lab

    return deployment_in_lab(lab_name)


@lab.command("down")
@_name_option
@click.option("--all", "all_labs", is_flag=True, help="Remove every lab on this machine.")
@click.option("--force", is_flag=True, help="Also a lab a running deployment uses (its controller "
              "and instances stop without a drain).")
@_verbose_option
@_user_errors
def down_command(name: str | None, all_labs: bool, force: bool, verbose: int) -> None:
    """Remove a lab: its processes, namespaces and state. Safe to repeat, works after a crash.

    Without --name: the current lab, else `default`. A lab that a running deployment uses is
    refused (exit 1) unless --force: `boxer down` takes the deployment and its lab down in order.
    """
    _setup_logging(verbose)
    names = list_labs() if all_labs else [name or _context.current("lab") or DEFAULT_NAME]
    if not force:
        for lab_name in names:
            deployment = _deployment_using(lab_name)
            if deployment:
                raise LabError(f"lab {lab_name} runs deployment {deployment!r}: take it down with "
                               f"`boxer down --name {deployment}` (or pass --force)")
    reports = [lab_down(lab_name) for lab_name in names]
    if _context.current("lab") in names:
        _context.set_current("lab", None)
    for report in reports:
        if report.found:
            click.echo(
                f"lab {report.name} down: {_count(len(report.namespaces), 'namespace')}, "
                f"{_count(len(report.killed), 'process', 'processes')} stopped"
            )
        else:
            click.echo(f"lab {report.name}: nothing to remove")
    if all_labs and not reports:
        click.echo("no labs on this machine")
