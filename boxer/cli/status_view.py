"""How a deployment's status reads on a terminal: the service and instance tables (declared as
data: a header, how to get the value, shown when), the lines around them, and the one-line
progress `boxer up` redraws. Pure: a status dict (as the controller writes it) in, text out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["INSTANCE_COLUMNS", "SERVICE_COLUMNS", "Column", "progress_line", "render_table", "status_text"]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


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
    Column("INSTANCE-ID", lambda r: r["instance_id"], wide=True),
    Column("HOST", lambda r: r["host"] or "-", wide=True),
    Column("REV", lambda r: str(r.get("revision", 1)), wide=True, right=True),
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
    cells = [[c.header for c in shown]] + [[c.value(r) for c in shown] for r in rows]
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


def status_text(status: dict[str, Any] | None, wide: bool) -> str:
    if not status or not status.get("running", True):
        return "No deployment is running. Start one with `boxer up FILE`."
    where = (f"lambda function {status.get('function')} ({status.get('region')})"
             if status.get("backend") == "lambda" else f"lab {status.get('lab')}")
    head = (f"deployment {status.get('name')}  {where}  coordinator "
            f"{status.get('coordinator')} ({'connected' if status.get('connected') else 'not connected'})")
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
    return (f"{figures.get('backend', 'backend')} concurrency: {slots['in_use']}/{slots['limit']}"
            f" in use, {slots['waiting']} waiting; throttled {figures.get('throttled_total', 0)}"
            " (retried with backoff)")


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
