"""How a deployment's status reads on a terminal: the service and instance tables (declared as
data: a header, how to get the value, shown when), the lines around them, and the one-line
progress `boxer up` redraws. Pure: a status dict (as the controller writes it) in, text out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["INSTANCE_COLUMNS", "NOTHING_RUNS", "SERVICE_COLUMNS", "Column", "progress_line", "render_table",
           "status_json", "status_text", "stopped_text"]


def _age(seconds: float | None) -> str:
    """A duration as a person reads it: 4.2s, 42s, 14m05s, 2h05m, 3d04h (never 14m60s: the
    value is rounded before it is split into units)."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


NARROW_CELL = 24  # a name longer than this is cut in the default view (-o wide shows it whole)


def _cut(text: str, wide: bool) -> str:
    return text if wide or len(text) <= NARROW_CELL else text[:NARROW_CELL - 1] + "~"


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[dict[str, Any]], str]
    wide: bool = False  # only with -o wide
    right: bool = False


# The instance table, declared as data: name, how to get the value, shown when.
INSTANCE_COLUMNS = (
    Column("SERVICE", lambda r: r["service"]),
    Column("NAME", lambda r: r["name"]),
    Column("STATE", lambda r: _state(r)),
    Column("RESTARTS", lambda r: str(r.get("restarts", 0)), right=True),
    Column("PLACEMENT", lambda r: r["placement"]),
    Column("ADDRESS", lambda r: r["address"] or "-"),
    Column("CONNS", lambda r: str(r["connections"]), right=True),
    Column("CPU", lambda r: f"{r['cpu']:.0f}%", right=True),
    Column("AGE", lambda r: _age(r["age"]), right=True),
    Column("LIFETIME", lambda r: _age(r["lifetime_left"]), right=True),
    Column("READY-IN", lambda r: "-" if r["ready_after"] is None else f"{r['ready_after']:.2f}s",
           wide=True, right=True),
    Column("DIRECT", lambda r: str(r["direct"]), wide=True, right=True),
    Column("RELAYED", lambda r: str(r["relayed"]), wide=True, right=True),
    Column("RSS", lambda r: f"{r['rss'] / 2**20:.0f}Mi", wide=True, right=True),
    Column("INSTANCE-ID", lambda r: r["instance_id"] or "-", wide=True),
    Column("HOST", lambda r: r["host"] or "-", wide=True),
    Column("REV", lambda r: str(r.get("revision") or "-"), wide=True, right=True),
)

SERVICE_COLUMNS = (
    Column("SERVICE", lambda s: s["name"]),
    Column("PLACEMENT", lambda s: s["placement"]),
    Column("READY", lambda s: f"{s['ready']}/{s['desired']}", right=True),
    Column("MIN..MAX", lambda s: f"{s['min']}..{s['max']}", right=True),
    Column("LOAD", lambda s: f"{s['load']:g}", right=True),
    Column("ADDRESS", lambda s: s.get("address") or "-"),
    Column("WAITING", lambda s: "yes" if s.get("pending") else "-", wide=True),
    Column("REVISION", lambda s: _revision(s), wide=True),
)


def _state(row: dict[str, Any]) -> str:
    """`backoff (3s)`: a crash-looping slot, started again in that long (Kubernetes shows
    CrashLoopBackOff)."""
    if row["state"] == "backoff" and row.get("next_try_in") is not None:
        return f"backoff ({_age(row['next_try_in'])})"
    return row["state"]


def _failure_line(failure: dict[str, Any], now: float) -> str:
    """One recent failure: what happened, its exit status, what follows, its last log line."""
    line = f"  {failure['name']:<16} {_age(now - failure['at']):>6} ago  {failure['reason']}"
    if failure.get("then"):
        line += f"; {failure['then']}"
    last = (failure.get("last_log") or [])[-1:]
    if last:
        line += f"\n  {'':<16} {'':>10}  last log line: {last[0]}"
    return line


def _revision(service: dict[str, Any]) -> str:
    """The service's revision, and how many instances of earlier ones still run (a rollout)."""
    revision = str(service.get("revision", 1))
    outdated = int(service.get("outdated", 0))
    return f"{revision} ({outdated} to roll out)" if outdated else revision


def render_table(columns: tuple[Column, ...], rows: list[dict[str, Any]], wide: bool) -> str:
    shown = [c for c in columns if wide or not c.wide]
    cells = [[c.header for c in shown]] + [[_cut(c.value(r), wide) for c in shown] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(shown))]
    lines = []
    for row in cells:
        parts = [cell.rjust(w) if c.right else cell.ljust(w)
                 for cell, w, c in zip(row, widths, shown, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _service_rows(status: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, svc in status.get("services", {}).items():
        ready = sum(1 for i in status.get("instances", [])
                    if i["service"] == name and i["state"] == "ready")
        rows.append({"name": name, **svc, "ready": ready})
    return rows


NOTHING_RUNS = "No deployment is running. Start one with `boxer up FILE`."


def stopped_text(name: str, down_at: float | None, file: str | None, now: float) -> str:
    """What `boxer status` says of a deployment that is known but stopped."""
    when = f" {_age(now - down_at)} ago" if down_at else ""
    again = f"`boxer up {file}` starts it again, " if file else ""
    return (f"deployment {name} is stopped (down{when}): {again}`boxer report --name {name}` draws"
            f" its run, `boxer rm {name}` removes what it left.")


def status_text(status: dict[str, Any] | None, wide: bool) -> str:
    if not status or not status.get("running", True):
        return NOTHING_RUNS
    where = (f"lambda function {status.get('function')} ({status.get('region')})"
             if status.get("backend") == "lambda" else f"lab {status.get('lab')}")
    head = (f"deployment {status.get('name')}  {where}  coordinator "
            f"{status.get('coordinator')} ({'connected' if status.get('connected') else 'not connected'})")
    if status.get("started_at") and status.get("updated_at"):
        head += f"  up {_age(status['updated_at'] - status['started_at'])}"
    parts = [head, "", render_table(SERVICE_COLUMNS, _service_rows(status), wide), ""]
    instances = status.get("instances", [])
    if instances:
        parts.append(render_table(INSTANCE_COLUMNS, instances, wide))
    else:
        parts.append("No instances run (services at zero start on their first connect).")
    backend_line = _backend_line(status.get("backend_status"))
    if backend_line:
        parts += ["", backend_line]
    rolling = [f"{name} (revision {svc.get('revision', 1)}: {svc['outdated']} of an earlier one left)"
               for name, svc in status.get("services", {}).items() if svc.get("outdated")]
    if rolling:
        parts += ["", f"rolling out: {', '.join(rolling)}"]
    partition = status.get("partition") or {}
    if partition.get("mode", "normal") != "normal":
        parts += ["", f"partition guard: {partition['mode']}, {partition.get('quiet', 0)} of "
                      f"{partition.get('instances', 0)} instances quiet, {partition.get('held', 0)} "
                      f"kept for now: {partition.get('reason') or ''}".rstrip(": ")]
    failures = status.get("failures") or []
    if failures:
        now = status.get("updated_at") or time.time()
        parts += ["", "recent failures:"]
        parts += [_failure_line(f, now) for f in failures[-5:]]
    if status.get("error"):
        parts += ["", f"last problem: {status['error']}"]
    return "\n".join(parts)


def _backend_line(figures: dict[str, Any] | None) -> str | None:
    """The backend's own figures: for lambda, concurrency slots and throttling."""
    if not figures or "concurrency" not in figures:
        return None
    slots = figures["concurrency"]
    line = (f"{figures.get('backend', 'backend')} concurrency: {slots['in_use']}/{slots['limit']}"
            f" in use, {slots['waiting']} waiting; throttled {figures.get('throttled_total', 0)}"
            " (retried with backoff)")
    vm = figures.get("vm")
    if vm:  # the vm tier: its hosts' daemons
        line += (f"\nvm hosts: {vm['reachable']}/{vm['hosts']} reachable, {vm['in_use']}/{vm['slots']}"
                 " slots in use")
    return line


def progress_line(status: dict[str, Any] | None, deployment: Any) -> tuple[str, bool]:
    """One progress line, and whether every service has its wanted instances ready."""
    if not status:
        return "starting the controller ...", False
    parts, done = [], True
    instances = status.get("instances", [])
    for name, svc in status.get("services", {}).items():
        ready = sum(1 for i in instances if i["service"] == name and i["state"] == "ready")
        want = max(svc.get("desired", 0), deployment.services[name].min_instances)
        outdated = int(svc.get("outdated", 0))
        done = done and ready >= want and outdated == 0
        parts.append(f"{name} {ready}/{want}" + (f" ({outdated} to roll out)" if outdated else ""))
    if not status.get("connected"):
        done = False
        parts.append(f"(coordinator: {status.get('error') or 'connecting'})")
    return "  ".join(parts), done


# -- the JSON of `boxer status -o json`: a stable format (docs/cli.md), named as the deployment
# file names things, rounded, with no field that says nothing (no pid of an instance not started)

def _round(value: Any, digits: int) -> Any:
    return None if value is None else round(float(value), digits)


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value is not None}


def _instance_json(row: dict[str, Any]) -> dict[str, Any]:
    return _drop_none({
        "name": row["name"], "service": row["service"], "state": row["state"],
        "restarts": int(row.get("restarts", 0)), "placement": row["placement"],
        "address": row.get("address"), "host": row.get("host"), "pid": row.get("pid"),
        "instanceId": row.get("instance_id"), "revision": row.get("revision"),
        "listeningPorts": sorted(row.get("listening") or []) or None,
        "connections": int(row.get("connections", 0)), "cpuPercent": _round(row.get("cpu", 0), 1),
        "rssBytes": int(row.get("rss", 0)),
        "directConnections": int(row.get("direct", 0)), "relayedConnections": int(row.get("relayed", 0)),
        "ageSeconds": _round(row.get("age"), 1), "readyAfterSeconds": _round(row.get("ready_after"), 3),
        "lifetimeLeftSeconds": _round(row.get("lifetime_left"), 1),
        "exitStatus": row.get("exit_status"), "error": row.get("error") or None,
        "nextTryInSeconds": _round(row.get("next_try_in"), 1),
        "lastLog": list(row.get("last_log") or []) or None,  # back-off: the failed instance's last lines
    })


def _service_json(svc: dict[str, Any], ready: int) -> dict[str, Any]:
    return {
        "placement": svc["placement"], "minInstances": svc["min"], "maxInstances": svc["max"],
        "desiredInstances": svc.get("desired", 0), "readyInstances": ready,
        "autoscale": svc.get("autoscale"),  # {metric, target} as in the file, or null: fixed size
        "load": _round(svc.get("load", 0), 3), "address": svc.get("address"),
        "revision": svc.get("revision", 1), "instancesToRollOut": int(svc.get("outdated", 0)),
        "connectsWaiting": bool(svc.get("pending")),
    }


def status_json(status: dict[str, Any] | None, *, name: str | None = None,
                controller_pid: int | None = None) -> dict[str, Any]:
    """`boxer status -o json`. Stopped or unknown: {"name", "running": false}."""
    if not status or not status.get("running", True):
        return _drop_none({"name": name or (status or {}).get("name"), "running": False})
    instances = status.get("instances", [])
    ready = {n: sum(1 for i in instances if i["service"] == n and i["state"] == "ready")
             for n in status.get("services", {})}
    updated, started = status.get("updated_at"), status.get("started_at")
    return _drop_none({
        "name": status.get("name"), "running": True, "backend": status.get("backend"),
        "lab": status.get("lab"), "function": status.get("function"), "region": status.get("region"),
        "controllerPid": controller_pid or status.get("pid"),
        "coordinator": {"address": status.get("coordinator"), "connected": bool(status.get("connected"))},
        "upSeconds": _round(updated - started, 1) if updated and started else None,
        "updatedAt": _round(updated, 3),
        "services": {n: _service_json(svc, ready[n]) for n, svc in status.get("services", {}).items()},
        "instances": [_instance_json(row) for row in instances],
        "failures": [_drop_none({"at": _round(f.get("at"), 3), "name": f.get("name"), "service": f.get("service"),
                                 "reason": f.get("reason"), "exitStatus": f.get("exit_status"),
                                 "then": f.get("then"), "lastLog": list(f.get("last_log") or []) or None})
                      for f in status.get("failures") or []],
        "partition": (status.get("partition") or {}).get("mode"),
        "lastProblem": status.get("error"),
    })
