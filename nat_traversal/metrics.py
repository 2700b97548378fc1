"""Prometheus metrics of the coordinator and its relay (text exposition format, sans-IO render,
plus a tiny asyncio HTTP endpoint). `boxer_` prefix, base units, `_total` counters, no
per-connection labels."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from boxer.nat_traversal.broker import Broker
    from boxer.nat_traversal.limits import Refusals
    from boxer.nat_traversal.relay import RelayStats

log = logging.getLogger(__name__)


def render(broker: Broker, relay_stats: RelayStats | None, refusals: Refusals | None = None) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")

    per_service = collections.Counter(i.service for i in broker.instances)
    metric("boxer_coordinator_instances", "gauge", "Registered instances.",
           [({"service": s}, n) for s, n in sorted(per_service.items())] or [({}, 0)])
    metric("boxer_coordinator_connects_total", "counter", "Connect requests by outcome at the coordinator.",
           [({"result": r}, n) for r, n in sorted(broker.connect_results.items())] or [({"result": "ok"}, 0)])
    paths = broker.path_totals()
    metric("boxer_connections_total", "counter", "Overlay connections set up, by path (from agents' reports).",
           [({"path": "direct"}, paths["direct"]), ({"path": "relayed"}, paths["relayed"])])
    metric("boxer_coordinator_held_connects", "gauge", "Connects waiting for a first instance of a service.",
           [({}, broker.held_count)])
    metric("boxer_coordinator_sessions", "gauge", "Control sessions (agents and controllers).",
           [({}, broker.session_count)])
    metric("boxer_coordinator_quiet_instances", "gauge",
           "Registered instances whose agent has sent nothing (no heartbeat) for the quiet limit.",
           [({}, broker.quiet_count)])
    counts = (refusals if refusals is not None else broker.refusals).counts
    metric("boxer_refusals_total", "counter",
           "Requests and connections refused at a limit (docs/security.md), by kind.",
           [({"kind": k}, n) for k, n in sorted(counts.items())] or [({"kind": "none"}, 0)])
    metric("boxer_coordinator_unauthenticated", "gauge", "Connections that have not sent their first frame.",
           [({}, broker.unauthenticated_count)])
    if relay_stats is not None:
        metric("boxer_relay_connections", "gauge", "Relayed connections open now.", [({}, relay_stats.active)])
        metric("boxer_relay_connections_total", "counter", "Relayed connections joined.", [({}, relay_stats.total)])
        metric("boxer_relay_bytes_total", "counter", "Bytes spliced by the relay.", [({}, relay_stats.bytes)])
    return "\n".join(lines) + "\n"


async def serve_metrics(host: str, port: int, render_now: Callable[[], str]) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if path.split(b"?")[0] == b"/metrics":
                body, status = render_now().encode(), b"200 OK"
            else:
                body, status = b"try /metrics\n", b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
