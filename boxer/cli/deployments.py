"""`boxer ls`, `boxer use`, `boxer rm`: the deployments this machine knows, which one is current,
and removing what stopped ones left.

Thin click commands over boxer.controller's records (controller/record.py) and the current
context (boxer/cli/_context.py)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from typing import Any

import click

from boxer.cli import _context
from boxer.cli.deploy import DeployError

__all__ = ["ls_command", "rm_command", "use_command"]


@dataclass(frozen=True)
class Known:
    """One deployment as `boxer ls` lists it."""

    name: str
    running: bool
    backend: str
    where: str
    file: str
    since: float | None  # running: when it came up; stopped: when it went down
    current: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": "running" if self.running else "stopped",
                "backend": self.backend, "where": self.where, "file": self.file,
                "since": None if self.since is None else round(self.since, 3), "current": self.current}


def known_deployments() -> list[Known]:
    from boxer.controller.deployments import paths_for
    from boxer.controller.paths import list_deployments
    from boxer.controller.record import DeploymentRecord

    current = _context.current("deployment")
    found = []
    for name in list_deployments():
        record = DeploymentRecord.load(paths_for(name))
        if record is None:
            found.append(Known(name, False, "?", "-", "-", None, name == current))
            continue
        running = record.controller_alive
        where = (f"lambda {record.function} ({record.region})" if record.backend == "lambda"
                 else f"lab {record.lab}" if record.lab else "-")
        since = record.created_at if running else (record.down_at or record.created_at)
        found.append(Known(name, running, record.backend, where, record.file, since, name == current))
    return found


def ago(then: float | None, now: float) -> str:
    """`3m ago`, `2h05m ago`: how long since `then`, whole units only."""
    if then is None:
        return "-"
    seconds = max(0, int(now - then))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m ago"
    return f"{seconds // 86400}d ago"


def ls_text(found: list[Known], now: float) -> str:
    if not found:
        return "No deployments on this machine. Start one with `boxer up FILE`."
    rows = [["CURRENT", "NAME", "STATE", "BACKEND", "WHERE", "SINCE", "FILE"]]
    for k in found:
        rows.append(["*" if k.current else "", k.name, "running" if k.running else "stopped", k.backend,
                     k.where, ago(k.since, now), k.file])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


@click.command("ls")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--prune", is_flag=True, help="Remove what every stopped deployment left (as `boxer rm`).")
def ls_command(output: str, prune: bool) -> None:
    """The deployments this machine knows: running and stopped, where they run, since when,
    from which file. `*` marks the current one (what commands without --name act on)."""
    found = known_deployments()
    if prune:
        for known in found:
            if not known.running:
                click.echo(_remove(known.name))
        found = known_deployments()
    if output == "json":
        click.echo(json.dumps([k.to_json() for k in found], indent=2))
    else:
        click.echo(ls_text(found, time.time()))


@click.command("use")
@click.argument("name")
def use_command(name: str) -> None:
    """Make NAME the current deployment: status, top, down, logs and report act on it without
    --name (its lab becomes the current lab too)."""
    from boxer.controller.deployments import paths_for
    from boxer.controller.paths import list_deployments
    from boxer.controller.record import DeploymentRecord

    known = list_deployments()
    from boxer.cli import _remote

    if name not in known and _remote.is_remote_deployment(name):
        _context.set_current("deployment", name)
        click.echo(f"current deployment: {name} (on the controller at {_context.current('controller')})")
        return
    if name not in known:
        listing = ", ".join(known) if known else "none"
        raise DeployError(f"no deployment named {name!r} (known here: {listing}); `boxer ls` lists them")
    _context.set_current("deployment", name)
    record = DeploymentRecord.load(paths_for(name))
    if record is not None and record.lab:
        _context.set_current("lab", record.lab)
    click.echo(f"current deployment: {name}" + (f" (lab {record.lab})" if record and record.lab else ""))


@click.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def rm_command(names: tuple[str, ...]) -> None:
    """Remove what stopped deployments left: their record, status, timeline and logs under
    /run/boxer/deploy/NAME/ (and a lab a crash left). A running one is refused: `boxer down`
    it first. A deployment sent to a controller host: the context forgets that controller, so
    commands (and `boxer up FILE`) act on this machine again; its state stays with the host."""
    known = {k.name: k for k in known_deployments()}
    from boxer.cli import _remote

    for name in names:
        if name not in known and _remote.is_remote_deployment(name):
            continue  # the context's: forgotten below, unless its controller still runs it
        if name not in known:
            raise DeployError(f"no deployment named {name!r} (known here: {', '.join(known) or 'none'})")
        if known[name].running:
            raise DeployError(f"deployment {name!r} is running: take it down with `boxer down --name {name}`"
                              " first")
    for name in names:
        click.echo(_forget_remote(name) if name not in known else _remove(name))


def _forget_remote(name: str) -> str:
    """`boxer rm` of a deployment sent to a controller host: the context forgets where it ran
    (as `docker context rm`), so `boxer up FILE` starts it on this machine again unless told
    --controller. Its state stays with the host. Refused while that controller runs it; a
    controller that does not answer is forgotten all the same (nothing of it is lost)."""
    from boxer.cli import _remote
    from boxer.controller.remote import status_there

    remote = _remote.chosen(name)
    assert remote is not None
    try:
        with remote.client() as client:
            running = status_there(client)
    except Exception as exc:  # unreachable, refused: nothing to ask, forget it anyway
        why = f" (it did not answer: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    else:
        if running is not None and running.get("name") == name:
            raise DeployError(f"deployment {name!r} is running on the controller at {remote.address}: take it "
                              f"down with `boxer down --name {name}` first")
        why = ""
    _remote.forget()
    if _context.current("deployment") == name:
        _context.set_current("deployment", None)
    return f"forgot deployment {name} on the controller at {remote.address}{why}"


def _remove(name: str) -> str:
    from boxer.controller.deployments import paths_for
    from boxer.controller.record import DeploymentRecord

    paths = paths_for(name)
    record = DeploymentRecord.load(paths)
    if record is not None and record.lab:
        from boxer.lab import lab_down

        lab_down(record.lab)  # debris of a crash; nothing when `boxer down` ran
    shutil.rmtree(paths.root, ignore_errors=True)
    if _context.current("deployment") == name:
        _context.set_current("deployment", None)
    return f"removed deployment {name} ({paths.root})"
