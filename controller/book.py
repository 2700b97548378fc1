"""The controller's bookkeeping at run time, without I/O: messages in, Signals and actions out.

`Book` is fed what the coordinator forwards (Snapshot, InstanceUp, InstanceReport,
InstanceQuiet, InstanceDown, Demand) and what the backend notices (a process exited), and turns it into the
`Signals` that `decide()` wants. `actions_for()` turns `decide()`'s decisions into the calls the
runtime makes on the backend and the coordinator. Both are plain functions of their inputs and a
`now` passed in, so the whole mapping signals -> decisions -> actions is tested without sockets,
processes or sleeping (tests/test_deploy_book.py).

Two identities per instance: `decide()` names an incarnation `api-3.7` (name and a serial); the
agent registers with a hex token (`--instance-id`, what the coordinator's Drain/Stop address).
The book keeps both and maps between them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from boxer.controller.policy import Decision, Drain, Start, Stop
from boxer.controller.signals import InstanceSignals, PendingConnect, Signals
from boxer.controller.spec import Deployment, Placement
from boxer.nat_traversal import messages as m

__all__ = [
    "Book",
    "Launch",
    "Record",
    "Tell",
    "actions_for",
    "new_agent_id",
]

log = logging.getLogger(__name__)

# How long a Demand (a held connect) counts as pending when nothing says it was served: the
# agent gives the connect up after the hold time anyway.
DEFAULT_DEMAND_HOLD = 10.0


def new_agent_id() -> str:
    """The token an agent registers with (`boxer run --instance-id`): 16 lowercase hex digits."""
    return secrets.token_hex(8)


@dataclass
class Record:
    """One instance the controller started, and the latest the coordinator said about it."""

    id: str  # decide()'s id of this incarnation
    agent_id: str  # the token the agent registers with
    service: str
    name: str
    index: int
    placement: Placement
    requested_at: float
    host: str | None = None  # where the backend put it (a lab host, a request id)
    pid: int | None = None  # the local backend's process (`boxer run`), for operators
    addr: str | None = None  # overlay address, once registered
    registered_at: float | None = None
    ready_at: float | None = None  # first report with a listening port
    last_heard: float | None = None
    quiet_since: float | None = None  # the coordinator stopped hearing the agent's heartbeat
    report: Mapping[str, Any] | None = None
    report_at: float | None = None
    accepts_per_second: float = 0.0
    exited: bool = False
    exit_status: int | None = None
    down_reason: str | None = None  # the coordinator said the instance left
    draining: bool = False  # we asked it to drain
    stopping: bool = False  # we asked it to stop
    launch_failed: str | None = None
    revision: int = 1  # of its service's command and environment, when it was launched

    @property
    def registered(self) -> bool:
        return self.registered_at is not None

    @property
    def listening(self) -> frozenset[int]:
        if not self.report:
            return frozenset()
        return frozenset(int(p) for p in self.report.get("listening", ()) or ())

    @property
    def state(self) -> str:
        """One word for status tables: starting, ready, draining, stopping, exited."""
        if self.exited or self.launch_failed:
            return "exited"
        if self.stopping:
            return "stopping"
        if self.draining or (self.report or {}).get("draining"):
            return "draining"
        if self.listening:
            return "ready"
        return "starting"

    def lifetime_left(self, now: float) -> float | None:
        """The agent's last figure, aged by the time since it was reported."""
        if not self.report or self.report.get("lifetime_left") is None:
            return None
        assert self.report_at is not None
        return float(self.report["lifetime_left"]) - (now - self.report_at)


@dataclass
class Book:
    """Everything the controller knows about its instances, updated by messages and exits."""

    deployment: Deployment
    records: dict[str, Record] = field(default_factory=dict)  # by decide()'s id
    by_agent: dict[str, str] = field(default_factory=dict)  # agent id -> decide()'s id
    demand: dict[str, tuple[float, float]] = field(default_factory=dict)  # service -> (since, until)
    services_addr: dict[str, str] = field(default_factory=dict)  # service -> virtual address
    ready_latencies: list[tuple[str, float]] = field(default_factory=list)  # (name, s) unread
    # Per service, the revision of its command and environment that new instances get; raised
    # by `apply()` when they change (instances of an earlier one are rolled out).
    revisions: dict[str, int] = field(default_factory=dict)

    def revision(self, service: str) -> int:
        return self.revisions.get(service, 1)

    def apply(self, deployment: Deployment, rolled: Iterable[str] = ()) -> None:
        """Run on an edited deployment (boxer.controller.reapply checked it); the services in
        `rolled` have a new command or environment: a new revision."""
        self.deployment = deployment
        for service in rolled:
            self.revisions[service] = self.revision(service) + 1

    def outdated(self, record: Record) -> bool:
        return record.revision < self.revision(record.service)

    # -- what we did -----------------------------------------------------------------------

    def launched(self, start: Start, agent_id: str, now: float) -> Record:
        record = Record(start.instance_id, agent_id, start.service, start.name, start.index,
                        start.placement, requested_at=now, revision=self.revision(start.service))
        self.records[record.id] = record
        self.by_agent[agent_id] = record.id
        return record

    def launch_failed(self, instance_id: str, reason: str) -> None:
        record = self.records.get(instance_id)
        if record is not None:
            record.launch_failed = reason

    def exited(self, instance_id: str, status: int | None, now: float) -> None:
        """The backend saw the instance's process end (its status is the app's)."""
        record = self.records.get(instance_id)
        if record is None or record.exited:
            return
        record.exited = True
        record.exit_status = status if status is not None else -1
        record.last_heard = now

    def forget(self, instance_id: str) -> None:
        """The instance is gone for good (stopped, its process reaped)."""
        record = self.records.pop(instance_id, None)
        if record is not None:
            self.by_agent.pop(record.agent_id, None)

    # -- what the coordinator says ---------------------------------------------------------

    def on_message(self, message: Any, now: float) -> None:
        """Feed one message from the controller session (messages of boxer.nat_traversal.messages)."""
        kind = getattr(message, "TYPE", None)
        if kind == "snapshot":
            self.services_addr.update(message.services)
            for entry in message.instances:
                record = self._find(entry.get("instance"), entry.get("name"), entry.get("service"))
                if record is None:
                    continue
                self._registered(record, entry.get("addr"), now)
                if entry.get("report"):
                    self._reported(record, entry["report"], now)
                if not entry.get("quiet"):
                    record.quiet_since = None
                elif record.quiet_since is None:  # quiet for how long, a snapshot does not say
                    record.quiet_since = now
        elif kind == "instance_up":
            record = self._find(message.instance, message.name, message.service)
            if record is not None:
                self._registered(record, message.addr, now)
                record.quiet_since = None  # a new session: it is heard
        elif kind == "instance_quiet":
            record = self._find(message.instance, message.name, message.service)
            if record is not None and message.quiet:
                if record.quiet_since is None:
                    record.quiet_since = now - message.silent
                    log.info("%s quiet for %.2f s (no heartbeat)", record.name, message.silent)
            elif record is not None:
                record.quiet_since = None
                record.last_heard = now
        elif kind == "instance_report":
            record = self._find(message.instance, message.name, message.service)
            if record is not None:
                self._registered(record, record.addr, now)
                self._reported(record, message.report, now)
        elif kind == "instance_down":
            record = self._find(message.instance, message.name, message.service)
            if record is not None and record.registered:
                record.down_reason = message.reason or "left"
        elif kind == "demand":
            if message.service in self.deployment.services:
                if message.waiting <= 0:
                    self.demand.pop(message.service, None)
                else:
                    since = self.demand.get(message.service, (now, 0.0))[0]
                    self.demand[message.service] = (since, now + self._hold(message.service))
        elif kind in ("members", "members_delta"):  # a delta's services are the new ones
            self.services_addr.update(getattr(message, "services", {}) or {})

    def _hold(self, service: str) -> float:
        policy = self.deployment.services[service].autoscale
        return policy.scale_from_zero_timeout_seconds if policy else DEFAULT_DEMAND_HOLD

    def _find(self, agent_id: str | None, name: str | None, service: str | None) -> Record | None:
        """Our record of an instance: by its agent id; else (an agent that could not be given
        an id) the newest record of that name. Instances we did not start are not ours."""
        if agent_id and agent_id in self.by_agent:
            return self.records.get(self.by_agent[agent_id])
        candidates = [r for r in self.records.values()
                      if r.name == name and r.service == service and not r.exited]
        if not candidates:
            return None
        record = max(candidates, key=lambda r: r.requested_at)
        if agent_id and record.agent_id != agent_id:
            self.by_agent.pop(record.agent_id, None)
            record.agent_id = agent_id
            self.by_agent[agent_id] = record.id
        return record

    def _registered(self, record: Record, addr: str | None, now: float) -> None:
        if record.registered_at is None:
            record.registered_at = now
        # Back on a new session (an agent that reconnects after a partition re-registers: the
        # coordinator sends InstanceDown for the old session, then InstanceUp): it is heard
        # again, and must not stay "deregistered", which would get it replaced.
        record.down_reason = None
        if addr:
            record.addr = addr
        record.last_heard = now

    def _reported(self, record: Record, report: Mapping[str, Any], now: float) -> None:
        previous, previous_at = record.report, record.report_at
        if previous is not None and previous_at is not None and now > previous_at:
            gained = int(report.get("accepted", 0)) - int(previous.get("accepted", 0))
            record.accepts_per_second = max(0, gained) / (now - previous_at)
        record.report, record.report_at, record.last_heard = dict(report), now, now
        record.quiet_since = None  # a report is a frame from the agent: it is heard
        if record.ready_at is None and report.get("listening"):
            record.ready_at = now
            self.ready_latencies.append((record.name, now - record.requested_at))
            self.demand.pop(record.service, None)  # a held connect now has somewhere to go
        if report.get("exited") is not None:
            record.exited, record.exit_status = True, int(report["exited"])

    def heard_again(self, now: float) -> None:
        """The coordinator was silent (frozen, cut off) and is heard again: what each instance
        sent meanwhile waited in its sockets and arrives now, so silence counts from now."""
        for record in self.records.values():
            if record.registered and not record.exited:
                record.last_heard = now

    # -- what decide() gets ----------------------------------------------------------------

    def signals(self, now: float) -> Signals:
        """The Signals of this tick. An instance counts once it registered (or its process
        ended: an app that dies before registering must be replaced, not waited for)."""
        instances = []
        for record in self.records.values():
            if not (record.registered or record.exited or record.launch_failed):
                continue  # decide() keeps it as `starting` until it reports
            report = record.report or {}
            exited = record.exited or bool(record.launch_failed)
            heard = record.last_heard if record.last_heard is not None else record.requested_at
            if record.registered and record.report is None and not record.down_reason:
                # Registered, first report not in yet (the app is still starting): its
                # session is up, so it is not silent; decide()'s start timeout still applies.
                heard = now
            if record.down_reason and not exited:
                heard = min(heard, now - 10.0)  # deregistered: as good as silent
            instances.append(InstanceSignals(
                id=record.id, name=record.name, service=record.service, index=record.index,
                placement=record.placement, started_at=record.requested_at, last_heard=heard,
                active_connections=max(0, int(report.get("active", 0))),
                accepts_per_second=record.accepts_per_second,
                cpu_percent=max(0.0, float(report.get("cpu", 0.0))),
                memory_bytes=max(0, int(report.get("rss", 0))),
                listening_ports=frozenset() if exited else record.listening,
                exited=exited,
                exit_status=(record.exit_status if record.exit_status is not None else -1)
                if exited else None,
                idle_seconds=max(0.0, float(report.get("idle", 0.0))),
                lifetime_left=record.lifetime_left(now),
                # The agent's word: its report says it took the drain (decide() remembers
                # the drains it asked for, and counts "drained" only from such a report).
                draining=bool(report.get("draining")),
                quiet_since=None if exited else record.quiet_since,
                outdated=self.outdated(record),
            ))
        for service, (_, until) in list(self.demand.items()):
            if until < now:
                del self.demand[service]
        pending = tuple(PendingConnect(service, since)
                        for service, (since, _) in self.demand.items())
        return Signals(tuple(instances), pending)

    def take_ready_latencies(self) -> list[tuple[str, float]]:
        taken, self.ready_latencies = self.ready_latencies, []
        return taken

    def service_load(self, service: str) -> float:
        """The service-wide value of its autoscale metric (active connections without one)."""
        svc = self.deployment.services[service]
        metric = svc.autoscale.metric.value if svc.autoscale else "activeConnections"
        total = 0.0
        for record in self.records.values():
            if record.service != service or not record.report or record.exited:
                continue
            if metric == "connectionsPerSecond":
                total += record.accepts_per_second
            elif metric == "cpu":
                total += float(record.report.get("cpu", 0.0))
            else:
                total += float(record.report.get("active", 0))
        return total


# -- decisions -> actions ------------------------------------------------------------------

@dataclass(frozen=True)
class Launch:
    """Start an instance through the backend (spec built from the deployment file)."""

    start: Start
    agent_id: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    max_lifetime: float | None


# A Drain or Stop decision (policy.py, by the book's instance id) becomes the wire message of
# the same name (nat_traversal/messages.py, addressed to the agent's id): no third spelling.
MAX_STOP_REASON = 200  # characters of a Stop's reason sent to the agent (it logs it)


@dataclass(frozen=True)
class Tell:
    """Send `message` to the instance's agent through the coordinator. A Drain: it takes no new
    connections. A Stop: its agent ends the app, and the runtime stops it through the backend."""

    instance: str  # the book's id of the instance (`api-3.7`)
    message: m.Drain | m.Stop  # addressed to its agent's id


Action = Launch | Tell


def actions_for(
    decisions: Iterable[Decision], deployment: Deployment, book: Book, drain_grace: float,
    agent_ids: Iterable[str] | None = None,
) -> list[Action]:
    """What to do for each decision. `agent_ids` supplies tokens for new instances (tests pass
    fixed ones); decisions about instances the book does not know are dropped with a log line."""
    ids = iter(agent_ids) if agent_ids is not None else None
    actions: list[Action] = []
    for decision in decisions:
        if isinstance(decision, Start):
            service = deployment.services[decision.service]
            rendered = service.render(decision.service, decision.index, decision.placement)
            lifetime = (service.lifetime_seconds
                        if decision.placement is Placement.FUNCTION else None)
            agent_id = next(ids) if ids is not None else new_agent_id()
            actions.append(Launch(decision, agent_id, rendered.command, rendered.env, lifetime))
            continue
        record = book.records.get(decision.instance)
        if record is None:
            log.info("%s for %s, which is already gone", type(decision).__name__,
                     decision.instance)
            continue
        if isinstance(decision, Drain):
            actions.append(Tell(record.id, m.Drain(instance=record.agent_id, grace=float(drain_grace))))
        elif isinstance(decision, Stop):
            actions.append(Tell(record.id, m.Stop(instance=record.agent_id,
                                                  reason=decision.reason[:MAX_STOP_REASON])))
    return actions
