"""Prometheus metrics of the controller, in the text exposition format, on a tiny HTTP server.

Conventions (prometheus.io naming): `boxer_` prefix, base units (seconds, bytes), counters end in
`_total`, labels only with few values (service, placement, state, kind) - never per connection
or per instance, which would grow without bound on a busy deployment.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Metrics", "serve_metrics"]

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]

# name -> (type, help). Declared as data so the exposition and docs/controller.md agree.
METRICS: dict[str, tuple[str, str]] = {
    "boxer_controller_instances": (
        "gauge", "Instances by service, placement and state (starting, ready, draining, stopping)."),
    "boxer_controller_desired_instances": (
        "gauge", "Instances the policy wants per service, after all limits."),
    "boxer_controller_service_load": (
        "gauge", "Service-wide value of the autoscale metric (connections, connections/s or CPU %)."),
    "boxer_controller_pending_connects": (
        "gauge", "Services with a connect held while no instance listens (scale from zero)."),
    "boxer_controller_decisions_total": (
        "counter", "Decisions taken, by service and kind (start, drain, stop)."),
    "boxer_controller_launch_failures_total": (
        "counter", "Backend launches that failed, by service."),
    "boxer_controller_register_timeouts_total": (
        "counter", "Instances that did not register with the coordinator in time, by service."),
    "boxer_controller_ticks_total": ("counter", "Policy ticks run."),
    "boxer_controller_tick_seconds_total": (
        "counter", "Time spent in decide() and bookkeeping, summed over ticks."),
    "boxer_controller_start_to_ready_seconds_total": (
        "counter", "Summed time from launch to the instance's first listening report."),
    "boxer_controller_instances_ready_total": (
        "counter", "Instances that reached ready (pairs with start_to_ready_seconds_total)."),
    "boxer_controller_coordinator_connected": (
        "gauge", "1 while the controller's session with the coordinator is up."),
    "boxer_controller_partition": (
        "gauge", ("1 for the current handling of quiet instances (state: normal, watching,"
                  " limited, halted), 0 for the others.")),
    "boxer_controller_quiet_instances": (
        "gauge", "Instances not heard (quiet heartbeat or no report), not exited, not stopped."),
    "boxer_controller_quiet_instances_held": (
        "gauge", "Quiet instances kept this tick instead of replaced (several quiet at once)."),
    "boxer_controller_instance_failures_total": (
        "counter", "Instances that failed (exited, failed to launch or register, went quiet), by service."),
    "boxer_controller_restarts_total": (
        "counter", "Failed instances started again in their slot, at once or after a back-off, by service."),
    "boxer_controller_backoff_slots": (
        "gauge", "Instance slots waiting in crash-loop back-off to be started again, by service."),
    "boxer_controller_coordinator_stalls_total": (
        "counter", "Times nothing came from the coordinator for 2 s (frozen, cut off): no decisions meanwhile."),
    "boxer_controller_tick_errors_total": (
        "counter", "Controller ticks that raised (logged; the next tick runs as usual)."),
    "boxer_controller_malformed_frames_total": (
        "counter", "Frames from the coordinator that did not decode and were skipped."),
    "boxer_controller_message_errors_total": (
        "counter", "Messages from the coordinator whose handling raised, by kind (skipped)."),
    "boxer_controller_partitions_total": (
        "counter", ("Times many instances went quiet at once and replacements were limited or"
                    " halted (a suspected partition).")),
}


@dataclass
class Metrics:
    gauges: dict[tuple[str, Labels], float] = field(default_factory=dict)
    counters: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def set(self, name: str, value: float, **labels: str) -> None:
        self.gauges[(name, tuple(sorted(labels.items())))] = value

    def clear(self, name: str) -> None:
        for key in [k for k in self.gauges if k[0] == name]:
            del self.gauges[key]

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0.0) + amount

    def render(self) -> str:
        lines: list[str] = []
        samples = {**self.gauges, **self.counters}
        for name, (kind, help_text) in METRICS.items():
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for (metric, labels), value in sorted(samples.items()):
                if metric == name:
                    lines.append(f"{name}{_labels(labels)} {value:g}")
        return "\n".join(lines) + "\n"


def _labels(labels: Iterable[tuple[str, str]]) -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def serve_metrics(metrics: Metrics, sock: socket.socket) -> asyncio.base_events.Server:
    """Answer every HTTP request on the listening `sock` with the metrics (GET /metrics)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if path.split(b"?")[0] in (b"/metrics", b"/"):
                body, status = metrics.render().encode(), b"200 OK"
            else:
                body, status = b"not found: try /metrics\n", b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4"
                         b"\r\nConnection: close\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, sock=sock)
