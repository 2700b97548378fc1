"""A simulated world for `decide()`: instances that start, serve a load curve, age and die.

The simulation stands in for agents and a backend so the policy can be exercised end to end
with thousands of instances and no processes: a load curve says how many connections each
service holds at time t, ready instances share them evenly (what least-connections balancing
converges to), `function` instances end at their lifetime, and faults can silence or kill an
instance, or make many quiet at once (a partition between them and the coordinator) and heal
it. Everything runs on a simulated clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from boxer.controller.partition import Verdict
from boxer.controller.policy import DEFAULT_TIMINGS, Decision, Drain, Start, Stop, Timings, decide
from boxer.controller.signals import ControllerState, InstanceSignals, PendingConnect, Signals
from boxer.controller.spec import Deployment, Placement

__all__ = ["Row", "SimInstance", "Simulation", "World"]

log = logging.getLogger(__name__)

LoadCurve = Callable[[float], float]  # t -> connections held by one service


@dataclass(frozen=True)
class World:
    """How the simulated platform behaves."""

    tick: float = 1.0
    # Seconds from a Start decision to the instance listening (cold start + app start).
    start_delay: Mapping[Placement, float] = field(
        default_factory=lambda: {Placement.VM: 0.5, Placement.FUNCTION: 0.5}
    )
    accepts_per_connection: float = 0.1  # new connections per second per held connection
    cpu_per_connection: float = 1.0  # percent of an instance's CPU per held connection


_DEFAULT_WORLD = World()


@dataclass
class SimInstance:
    id: str
    name: str
    index: int
    service: str
    placement: Placement
    started_at: float
    ready_at: float
    lifetime_end: float | None
    connections: int = 0
    draining: bool = False
    exited: bool = False
    exit_status: int | None = None
    silent_since: float | None = None  # a fault: the agent stopped reporting
    quiet_since: float | None = None  # a fault: the coordinator stopped hearing its heartbeat
    last_busy: float = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.ready_at and not self.exited


@dataclass(frozen=True)
class Row:
    """One tick of the timeline."""

    t: float
    service: str
    load: float
    ready: Mapping[Placement, int]  # ready, non-draining instances per placement
    starting: int
    draining: int
    desired: int
    unserved: float  # load with no ready instance to go to
    lost: int  # instances that ended at their lifetime while still serving


class Simulation:
    def __init__(
        self,
        deployment: Deployment,
        loads: Mapping[str, LoadCurve],
        world: World = _DEFAULT_WORLD,
        timings: Timings = DEFAULT_TIMINGS,
        start: float = 0.0,
    ) -> None:
        unknown = set(loads) - set(deployment.services)
        if unknown:
            raise ValueError(f"load curves for unknown services: {', '.join(sorted(unknown))}")
        self.deployment = deployment
        self.loads = dict(loads)
        self.world = world
        self.timings = timings
        self.now = start
        self.state = ControllerState()
        self.instances: dict[str, SimInstance] = {}
        self.rows: list[Row] = []
        self.decisions: list[tuple[float, Decision]] = []
        self.verdicts: list[tuple[float, Verdict]] = []  # decide()'s judgement of quiet ones
        self._pending_since: dict[str, float] = {}

    # -- faults ----------------------------------------------------------------------------

    def kill(self, instance_id: str, status: int = 137) -> None:
        """The app exits (the agent reports it)."""
        instance = self.instances[instance_id]
        instance.exited, instance.exit_status, instance.connections = True, status, 0

    def silence(self, instance_id: str) -> None:
        """The agent stops reporting (host lost)."""
        self.instances[instance_id].silent_since = self.now

    def partition(self, instance_ids: list[str]) -> None:
        """The coordinator stops hearing these agents (their heartbeats and reports), as in a
        network partition between them; they live on."""
        for instance_id in instance_ids:
            self.instances[instance_id].quiet_since = self.now

    def heal(self) -> None:
        """The partition ends: every quiet agent that is still running is heard again."""
        for instance in self.instances.values():
            instance.quiet_since = None

    # -- running ---------------------------------------------------------------------------

    def run_until(self, end: float) -> None:
        while self.now < end - 1e-9:
            self.step()

    def step(self) -> None:
        now = self.now
        lost = self._expire_lifetimes(now)
        unserved = {name: self._serve(name, now) for name in self.deployment.services}
        outcome = decide(self.deployment, self._signals(now), self.state, now, self.timings)
        self.state = outcome.state
        self.verdicts.append((now, outcome.partition))
        for decision in outcome.decisions:
            self._apply(decision, now)
            self.decisions.append((now, decision))
        for name in self.deployment.services:
            self.rows.append(self._row(name, now, outcome.desired[name], unserved[name],
                                       lost.get(name, 0)))
        self.now = round(now + self.world.tick, 9)

    def live(self, service: str) -> list[SimInstance]:
        return [i for i in self.instances.values() if i.service == service and not i.exited]

    def first_time(self, service: str, predicate: Callable[[Row], bool]) -> float | None:
        return next((r.t for r in self.rows if r.service == service and predicate(r)), None)

    # -- one tick --------------------------------------------------------------------------

    def _expire_lifetimes(self, now: float) -> dict[str, int]:
        lost: dict[str, int] = {}
        for instance in self.instances.values():
            if instance.exited or instance.lifetime_end is None or now < instance.lifetime_end:
                continue
            if instance.connections:
                lost[instance.service] = lost.get(instance.service, 0) + 1
            # Lambda ends the invocation: to the agent this looks like the app being killed.
            instance.exited, instance.exit_status, instance.connections = True, 137, 0
        return lost

    def _serve(self, service: str, now: float) -> float:
        load = max(0.0, self.loads.get(service, _no_load)(now))
        for instance in self.live(service):
            if instance.draining:
                instance.connections = 0  # short connections: they finish within a tick
        targets = sorted(
            (i for i in self.live(service) if i.ready(now) and not i.draining
             and i.silent_since is None and i.quiet_since is None),
            key=lambda i: i.index,
        )
        if not targets:
            if load > 0:
                self._pending_since.setdefault(service, now)
            return load
        self._pending_since.pop(service, None)
        whole = int(load)
        share, extra = divmod(whole, len(targets))
        for position, instance in enumerate(targets):
            instance.connections = share + (1 if position < extra else 0)
            if instance.connections:
                instance.last_busy = now
        return 0.0

    def _signals(self, now: float) -> Signals:
        reports: list[InstanceSignals] = []
        for i in self.instances.values():
            unheard = [t for t in (i.silent_since, i.quiet_since) if t is not None]
            heard = min(unheard) if unheard else now
            ready = i.ready(now)
            reports.append(
                InstanceSignals(
                    id=i.id, name=i.name, service=i.service, index=i.index,
                    placement=i.placement, started_at=i.started_at, last_heard=heard,
                    active_connections=i.connections,
                    accepts_per_second=i.connections * self.world.accepts_per_connection,
                    cpu_percent=i.connections * self.world.cpu_per_connection,
                    listening_ports=frozenset({80}) if ready else frozenset(),
                    exited=i.exited, exit_status=i.exit_status,
                    idle_seconds=0.0 if i.connections else now - max(i.last_busy, i.started_at),
                    lifetime_left=None if i.lifetime_end is None else i.lifetime_end - now,
                    draining=i.draining, quiet_since=i.quiet_since,
                )
            )
        pending = tuple(PendingConnect(service, since)
                        for service, since in self._pending_since.items())
        return Signals(tuple(reports), pending)

    def _apply(self, decision: Decision, now: float) -> None:
        if isinstance(decision, Start):
            service = self.deployment.services[decision.service]
            lifetime = service.lifetime_seconds if decision.placement is Placement.FUNCTION \
                else None
            self.instances[decision.instance_id] = SimInstance(
                id=decision.instance_id, name=decision.name, index=decision.index,
                service=decision.service, placement=decision.placement, started_at=now,
                ready_at=now + self.world.start_delay[decision.placement],
                lifetime_end=None if lifetime is None else now + lifetime,
                last_busy=now,
            )
        elif isinstance(decision, Drain):
            if decision.instance in self.instances:
                self.instances[decision.instance].draining = True
        elif isinstance(decision, Stop):
            self.instances.pop(decision.instance, None)

    def _row(self, service: str, now: float, desired: int, unserved: float, lost: int) -> Row:
        ready = {Placement.VM: 0, Placement.FUNCTION: 0}
        starting = draining = 0
        for i in self.live(service):
            if i.draining:
                draining += 1
            elif i.ready(now):
                ready[i.placement] += 1
            else:
                starting += 1
        return Row(now, service, max(0.0, self.loads.get(service, _no_load)(now)), ready,
                   starting, draining, desired, unserved, lost)


def _no_load(_: float) -> float:
    return 0.0
