"""`boxer logs`: a service's or an instance's output, with the time of each line, the instance's
name, and its starts and exits between the lines (as `docker compose logs` and `kubectl logs`).

Thin: a running deployment's controller streams the lines (the control API's Logs, which reads
controller/instance_logs.py); a stopped one's are read from what it left (the same module).
How a line reads is format_line here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from boxer.cli import _remote

__all__ = ["format_line", "logs_command"]


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def format_line(line: Any, width: int) -> str:
    """`2026-12-02T13:05:01.123Z web-1  | output` or, for what the controller did or saw,
    `... web-1  * exited with status 127`."""
    mark = "*" if line.event else "|"
    return f"{_when(line.time)} {line.source:<{width}} {mark} {line.text}"


def json_line(line: Any) -> str:
    """One JSON object a line (docs/cli.md): time (seconds since the epoch, UTC), instance,
    service, kind ("output" or "event"), text."""
    return json.dumps({"time": None if line.time is None else round(line.time, 3), "instance": line.source,
                       "service": line.service or None, "kind": "event" if line.event else "output",
                       "text": line.text}, separators=(",", ":"))


def _controller_lines(lines: Iterable[Any]) -> Iterator[Any]:
    """The controller's own log (JSON lines) as LogLines: its time, level and message."""
    from boxer.controller.api.client import LogLine

    for line in lines:
        try:
            entry = json.loads(line.text)
            yield LogLine("controller", f"{str(entry.get('level', '')).upper():<7} {entry.get('message', '')}",
                          float(entry["t"]), "", False)
        except (ValueError, KeyError, TypeError, AttributeError):
            yield LogLine("controller", line.text, None, "", False)


@click.command("logs")
@click.argument("target", metavar="SERVICE|INSTANCE", required=False)
@click.option("-f", "--follow", is_flag=True,
              help="Then follow: new lines, and new instances of the service, until Ctrl-C.")
@click.option("--since", metavar="DURATION|TIME",
              help="Only lines from then on: a duration before now (90s, 5m, 1h30m), a clock time "
                   "today (14:05[:30]) or an ISO date and time.")
@click.option("--tail", type=click.IntRange(0), default=0, metavar="N",
              help="Only the last N lines of each instance (0: all).")
@click.option("--name", help="Deployment [default: the current one, also after `boxer down`].")
@click.option("--controller-log", "controller_log", is_flag=True, help="The deployment's controller's own log instead.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one object a line (time, instance, service, kind, text) for scripts.")
@_remote.controller_options
def logs_command(target: str | None, follow: bool, since: str | None, tail: int, name: str | None,
                 controller_log: bool, output: str, controller: str | None, controller_ca: Path | None,
                 controller_token_file: Path | None, controller_server_name: str | None) -> None:
    """The output of a service's instances (every one it had, restarts included) or of one
    instance, each line with its time and the instance's name, and the instance's starts,
    exits and stops between the lines. On the lab, a line's time is when the controller saw it
    (within a tick, 0.25 s); on the lambda backend, CloudWatch Logs' time.

    \b
    Examples:
      boxer logs web                 # every instance of web, in time order
      boxer logs web-2 --tail 20     # the last 20 lines of one instance
      boxer logs -f --since 5m web   # the last five minutes, then new lines until Ctrl-C
      boxer logs -o json web | jq -r 'select(.kind == "event") | .text'

    Exit status 0; 1 when SERVICE|INSTANCE names neither (the message lists those that exist)
    or no deployment is meant; 130 on Ctrl-C."""
    from boxer.cli.deploy import DeployError, _call, _resolve_name
    from boxer.controller.api.client import ControlClient
    from boxer.controller.deployments import paths_for
    from boxer.controller.record import DeploymentRecord

    since_at = _since(since)
    remote = _remote.chosen(name, controller, controller_ca, controller_token_file, controller_server_name)
    if remote is not None:  # a deployment on a controller host: through the control API only
        if not target and not controller_log:
            raise DeployError("name a service or an instance: `boxer status` lists them")
        running, lines = True, _through_controller(remote.client(), target or "", tail, follow, since_at, remote=True)
    else:
        name = _resolve_name(name, running_only=False)
        paths = _call(paths_for, name)
        if not target and not controller_log:
            raise DeployError(f"name a service or an instance: {_choices(paths)}")
        record = DeploymentRecord.load(paths)
        running = record is not None and record.controller_alive
        lines = (_through_controller(ControlClient.local(paths), target or "", tail, follow, since_at)
                 if running else None)
        if lines is None:
            lines = _from_files(paths, target, controller_log, tail, since_at)
    assert lines is not None  # a controller host's stream, or one of this machine's (or its files)
    if controller_log:
        lines = _controller_lines(lines)
    width = 8
    try:
        for line in lines:
            if output == "json":
                click.echo(json_line(line))
            else:
                width = max(width, len(line.source))
                click.echo(format_line(line, width))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:  # `boxer logs web | head`: the reader had enough
        sys.stderr.close()
        raise SystemExit(0) from None
    if follow and not running:
        click.echo(f"boxer: deployment {name} is stopped: no more lines will come", err=True)


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    from boxer.controller.report import ReportError, parse_bound

    now = time.time()
    try:
        return parse_bound(text, now, now)
    except ReportError:
        raise click.BadParameter(f"cannot read {text!r}: give a duration before now (90s, 5m, 1h30m), a clock "
                                 "time today (14:05 or 14:05:30) or an ISO date and time",
                                 param_hint="'--since'") from None


def _through_controller(client: Any, target: str, tail: int, follow: bool, since: float | None,
                        remote: bool = False) -> Iterator[Any] | None:
    """The controller's stream; None when the local one does not answer (starting, or gone
    since), so the files are read instead."""
    from boxer.cli.deploy import DeployError
    from boxer.controller.api.client import ControlError

    stream = client.logs(target, tail=tail, follow=follow, since=since)
    try:
        first = next(stream, None)
    except ControlError as exc:
        client.close()
        if not remote and exc.code is not None and exc.code.name == "UNAVAILABLE":
            return None
        raise DeployError(str(exc)) from None

    def rest() -> Iterator[Any]:
        try:
            if first is not None:
                yield first
            try:
                yield from stream
            except ControlError as exc:
                raise DeployError(str(exc)) from None
        finally:
            stream.close()
            client.close()

    return rest()


def _from_files(paths: Any, target: str | None, controller: bool, tail: int, since: float | None) -> Iterator[Any]:
    """What a stopped deployment left: its instances' logs, or its controller's."""
    from boxer.cli.deploy import DeployError
    from boxer.controller.api.client import LogLine
    from boxer.controller.deployments import declared_services
    from boxer.controller.instance_logs import LogReader, LogSourceError, UnknownLogTarget, lambda_source

    if controller:
        try:
            text = paths.log.read_text(errors="replace").splitlines()
        except OSError:
            text = []
        return iter([LogLine("controller", t) for t in (text[-tail:] if tail else text)])
    assert target is not None

    async def read() -> list[Any]:
        source = lambda_source()
        try:
            reader = LogReader(paths.instances, declared_services(paths), cloudwatch=source.entries)
            service, instance = reader.resolve(target)
            return await reader.entries(service, instance, since=since, tail=tail, final=True)
        finally:
            await source.close()

    try:
        entries = asyncio.run(read())
    except (UnknownLogTarget, LogSourceError) as exc:
        raise DeployError(str(exc.args[0])) from None
    return iter([LogLine(e.instance, e.text, e.time, e.service, e.event) for e in entries])


def _choices(paths: Any) -> str:
    from boxer.controller.deployments import declared_services
    from boxer.controller.instance_logs import LogReader

    reader = LogReader(paths.instances, declared_services(paths))
    reader.refresh()
    services = ", ".join(sorted(reader.services())) or "none yet"
    instances = ", ".join(reader.instances()) or "none yet"
    return f"services {services}; instances {instances} (`boxer logs SERVICE`)"
