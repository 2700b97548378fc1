"""`decide(policy, signals, state, now)`: the controller's whole judgement as one pure function.

Each tick, per service, in this order:
1. bookkeeping: forget instances that are gone, notice ones that started, time out silent starts;
2. failures: an app that exited, an agent the coordinator reports quiet (its heartbeats
   stopped), or one without a report for more than `Timings.silent_after` (the backstop), is
   stopped and, as the restart policy says, replaced at once (same index, so the same name) -
   except that quiet and silent instances, which may be alive, are first judged together,
   deployment-wide (`boxer.controller.partition`): when many go quiet at once they are replaced at a
   limited rate, or not at all, and kept meanwhile;
3. lifetime: a `function` instance with less than renewalMarginSeconds left gets a replacement
   started; once that is ready (or the end is near) the old one is drained; a drained instance
   is stopped when its last connection closes (or just before its lifetime ends);
   rollout: instances of an earlier revision (`boxer up` again with a new command or environment)
   are renewed the same way, a quarter of the service at a time (at least one), as a Kubernetes
   Deployment's rolling update with maxSurge 25 % and maxUnavailable 0;
4. scale from zero: a connect held for a service with no instance starts one, at once;
5. autoscale: Knative KPA windows -> recommendation, HPA stabilization and rate limits, clip to
   min/max, scale to zero after the grace period; then Start or Drain the difference.

Nothing here reads a clock or does I/O: `now` comes in, a new state goes out with the decisions,
so tests drive time and a simulation can run thousands of instances.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from boxer.controller.partition import (
    NORMAL,
    Verdict,
    deployment_slots,
    judge,
    unheard_instances,
    unheard_reason,
)
from boxer.controller.scaling import kpa_recommendation, rate_limit, stabilize
from boxer.controller.signals import (
    ControllerState,
    InstanceSignals,
    PendingConnect,
    ServiceState,
    Signals,
    SlotBackoff,
    StartingInstance,
)
from boxer.controller.spec import Deployment, Metric, Placement, RestartPolicy, Service

__all__ = [
    "DEFAULT_TIMINGS",
    "Decision",
    "Drain",
    "Failure",
    "Outcome",
    "Start",
    "Stop",
    "Timings",
    "decide",
    "pick_instance",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Start:
    """Start one instance. `instance_id` is new; `name`/`index` are its identity in the app
    (what `Service.render` fills into `{name}`/`{index}`)."""

    service: str
    placement: Placement
    reason: str
    instance_id: str
    name: str
    index: int


@dataclass(frozen=True)
class Drain:
    """Stop sending new connections to an instance; it keeps serving the ones it has."""

    instance: str  # instance id
    reason: str


@dataclass(frozen=True)
class Stop:
    """Stop an instance (its app and agent) and release what it holds."""

    instance: str  # instance id
    reason: str


Decision = Start | Drain | Stop


@dataclass(frozen=True)
class Failure:
    """An instance that failed this tick (exited, or unheard and replaced), and what follows:
    `retry_in` 0 started again at once, > 0 waits that long (crash-loop back-off), None not
    started again (restart policy)."""

    instance: str  # instance id
    service: str
    name: str
    index: int
    reason: str
    exit_status: int | None
    retry_in: float | None
    restarts: int  # of its slot so far


@dataclass(frozen=True)
class Timings:
    """Fixed delays of the controller, passed in so tests can change them (not policy fields)."""

    silent_after: float = 1.0  # an agent not heard from for longer has failed
    start_timeout: float = 30.0  # a started instance that never reports is given up
    drain_before_end: float = 5.0  # drain a renewing instance this close to its end regardless
    stop_before_end: float = 1.0  # stop a draining instance this close to its end regardless
    drain_timeout: float = 60.0  # a draining instance still holding connections is stopped


DEFAULT_TIMINGS = Timings()


@dataclass(frozen=True)
class Outcome:
    decisions: tuple[Decision, ...]
    state: ControllerState
    desired: Mapping[str, int] = field(default_factory=dict)  # per service, after all limits
    # The judgement of quiet instances: which are replaced now, which kept, and why.
    partition: Verdict = NORMAL
    failures: tuple[Failure, ...] = ()


def decide(
    policy: Deployment,
    signals: Signals,
    state: ControllerState,
    now: float,
    timings: Timings = DEFAULT_TIMINGS,
) -> Outcome:
    """Turn this tick's signals into decisions and the controller's next state."""
    by_service: dict[str, list[InstanceSignals]] = {name: [] for name in policy.services}
    for instance in signals.instances:
        if instance.service in by_service:
            by_service[instance.service].append(instance)
        else:
            log.warning("signals from %s of unknown service %r ignored", instance.id,
                        instance.service)
    pending: dict[str, list[PendingConnect]] = {}
    for connect in signals.pending_connects:
        pending.setdefault(connect.service, []).append(connect)

    verdict, partition = judge(
        policy.partition,
        unheard_instances(signals, state, now, timings.silent_after),
        deployment_slots(signals, state),
        state.partition,
        now,
    )
    if verdict.reason:
        log.debug("quiet instances at %.3f: %s", now, verdict.reason)

    decisions: list[Decision] = []
    failures: list[Failure] = []
    services: dict[str, ServiceState] = {}
    desired: dict[str, int] = {}
    serial = state.serial
    for name, service in policy.services.items():
        tick = _ServiceTick(name, service, state.service(name), now, timings, serial, verdict)
        tick.run(by_service[name], pending.get(name, []))
        decisions.extend(tick.decisions)
        failures.extend(tick.failures)
        services[name] = tick.state
        desired[name] = tick.desired
        serial = tick.serial
    for decision in decisions:
        log.debug("decision at %.3f: %s", now, decision)
    return Outcome(
        tuple(decisions),
        ControllerState(services=MappingProxyType(services), serial=serial,
                        partition=partition),
        MappingProxyType(desired),
        verdict,
        tuple(failures),
    )


def pick_instance(
    instances: Iterable[InstanceSignals],
    service: str,
    now: float,
    state: ControllerState | None = None,
    timings: Timings = DEFAULT_TIMINGS,
) -> InstanceSignals | None:
    """The instance a new connection to `service` goes to: least active connections among live,
    ready, non-draining instances (ties: lowest index). None when there is none."""
    memory = state.service(service) if state is not None else ServiceState()
    best: InstanceSignals | None = None
    for instance in instances:
        if (
            instance.service != service
            or not instance.ready
            or instance.draining
            or instance.id in memory.draining
            or instance.id in memory.stopping
            or instance.quiet_since is not None
            or now - instance.last_heard > timings.silent_after
        ):
            continue
        key = (instance.active_connections, instance.index, instance.id)
        if best is None or key < (best.active_connections, best.index, best.id):
            best = instance
    return best


def _metric_of(instance: InstanceSignals, metric: Metric) -> float:
    if metric is Metric.ACTIVE_CONNECTIONS:
        return float(instance.active_connections)
    if metric is Metric.CONNECTIONS_PER_SECOND:
        return instance.accepts_per_second
    return instance.cpu_percent


class _ServiceTick:
    """One service's share of one tick; a helper object only to keep `decide` readable."""

    def __init__(
        self,
        name: str,
        service: Service,
        state: ServiceState,
        now: float,
        timings: Timings,
        serial: int,
        verdict: Verdict = NORMAL,
    ) -> None:
        self.name = name
        self.service = service
        self.state = state
        self.now = now
        self.timings = timings
        self.serial = serial
        self.verdict = verdict
        self.decisions: list[Decision] = []
        self.failures: list[Failure] = []
        self.desired = 0
        # Indexes taken this tick; only ever grows within a tick, so the search for the lowest
        # free one can resume where it stopped (keeps a burst of starts linear).
        self._used_indexes: set[int] = set()
        self._free_cursor = 1

    # -- the steps -------------------------------------------------------------------------

    def run(self, instances: list[InstanceSignals], pending: list[PendingConnect]) -> None:
        live = self._bookkeeping(instances)
        live = self._failures(live)
        self._backoffs(live)
        renewing = self.state.renewing  # renewals started in an earlier tick
        self._lifetimes(live)
        self._finish_renewals(live, renewing)
        self._rollout(live)
        self._drains(live)
        self._handovers(instances)
        self._scale(live, pending)

    def _bookkeeping(self, instances: list[InstanceSignals]) -> list[InstanceSignals]:
        st = self.state
        present = {instance.id for instance in instances}
        starting = tuple(start for start in st.starting if start.id not in present)
        awaited = present | {start.id for start in starting}
        self.state = replace(
            st,
            starting=starting,
            stopping=frozenset(i for i in st.stopping if i in present),
            draining=MappingProxyType({i: t for i, t in st.draining.items() if i in present}),
            # A renewal whose replacement vanished is forgotten, so it is tried again.
            renewing=MappingProxyType({old: new for old, new in st.renewing.items()
                                       if old in present and new in awaited}),
        )
        for start in starting:
            if self.now - start.requested_at > self.timings.start_timeout:
                self._stop(start.id, f"did not report within {self.timings.start_timeout:g} s"
                                     " of being started")
        self.state = replace(self.state, starting=tuple(
            start for start in self.state.starting if start.id not in self.state.stopping))
        self._used_indexes = {instance.index for instance in instances}
        self._used_indexes.update(start.index for start in self.state.starting)
        self._used_indexes.update(self.state.waiting)  # slots in back-off keep their index
        return [instance for instance in instances if instance.id not in self.state.stopping]

    def _failures(self, live: list[InstanceSignals]) -> list[InstanceSignals]:
        survivors: list[InstanceSignals] = []
        policy = self.service.restart_policy
        for instance in live:
            unheard = unheard_reason(instance, self.now, self.timings.silent_after)
            if instance.exited:  # certain: replaced at once, whatever else is going on
                why = f"exited with status {instance.exit_status}"
                failed = instance.exit_status != 0
            elif unheard is not None and instance.id in self.verdict.replace:
                why = unheard if self.verdict.note is None else f"{unheard}; {self.verdict.note}"
                failed = True
            else:  # heard, or unheard but kept for now (several quiet at once)
                survivors.append(instance)
                continue
            self._stop(instance.id, why)
            if instance.id in self.state.renewing or instance.id in self.state.draining:
                continue  # it was on its way out anyway; its successor is already there
            restart = policy is RestartPolicy.ALWAYS or (
                policy is RestartPolicy.ON_FAILURE and failed
            )
            if restart:
                self._restart(instance, why)
            else:
                self.state = replace(self.state, retired=self.state.retired + 1)
                log.info("%s %s; restartPolicy %s: not replaced", instance.name, why,
                         policy.value)
                self._failed(instance, why, None)
        return survivors

    def _restart(self, instance: InstanceSignals, why: str) -> None:
        """Start a failed instance's slot again: at once, or after its crash-loop back-off
        (`restartBackoff`) when instances of this slot keep failing soon after they start."""
        backoff = self.service.restart_backoff
        slot = self.state.backoff.get(instance.index, SlotBackoff())
        quick = self.now - instance.started_at < backoff.reset_after_seconds
        failures = slot.failures + 1 if quick else 1
        delay = backoff.delay(failures)
        slot = replace(slot, failures=failures, placement=instance.placement, reason=why,
                       exit_status=instance.exit_status if instance.exited else None,
                       failed_at=self.now)
        if delay <= 0:
            self._start(instance.placement, f"replace {instance.name}: {why}", index=instance.index)
            slot = replace(slot, restarts=slot.restarts + 1, retry_at=None)
        else:
            slot = replace(slot, retry_at=self.now + delay)
            self._used_indexes.add(instance.index)
            log.info("%s %s (failure %d in a row): started again in %g s", instance.name, why,
                     failures, delay)
        self._set_slot(instance.index, slot)
        self._failed(instance, why, delay)

    def _backoffs(self, live: list[InstanceSignals]) -> None:
        """Start the slots whose back-off is over; forget the failures of a slot whose instance
        has run `resetAfterSeconds` (it is healthy: its next failure is replaced at once)."""
        reset_after = self.service.restart_backoff.reset_after_seconds
        for instance in live:
            slot = self.state.backoff.get(instance.index)
            if (slot is not None and slot.failures and not slot.waiting
                    and self.now - instance.started_at >= reset_after):
                self._set_slot(instance.index, replace(slot, failures=0))
        for index, slot in sorted(self.state.backoff.items()):
            if slot.retry_at is None or slot.retry_at > self.now:
                continue
            name = self.service.instance_name(self.name, index)
            waited = self.service.restart_backoff.delay(slot.failures)
            self._start(slot.placement, f"restart {name} after a {waited:g} s back-off ({slot.reason})",
                        index=index)
            self._set_slot(index, replace(slot, restarts=slot.restarts + 1, retry_at=None))

    def _set_slot(self, index: int, slot: SlotBackoff) -> None:
        self.state = replace(self.state, backoff=MappingProxyType({**self.state.backoff, index: slot}))

    def _failed(self, instance: InstanceSignals, why: str, retry_in: float | None) -> None:
        slot = self.state.backoff.get(instance.index)
        self.failures.append(Failure(
            instance.id, self.name, instance.name, instance.index, why,
            instance.exit_status if instance.exited else None, retry_in,
            slot.restarts if slot is not None else 0))

    def _lifetimes(self, live: list[InstanceSignals]) -> None:
        margin = self.service.renewal_margin_seconds
        for instance in live:
            left = instance.lifetime_left
            if left is None or self._draining(instance) or instance.id in self.state.renewing:
                continue
            if left < margin:
                self._renew(instance, f"renew {instance.name}: lifetime left {left:.0f} s"
                                      f" < margin {margin:g} s")

    def _rollout(self, live: list[InstanceSignals]) -> None:
        """Renew outdated instances, oldest first, while fewer than a quarter of the service's
        instances (at least one) are being renewed: each old one serves until its replacement
        is ready, so capacity never drops below what runs."""
        in_service = [i for i in live if not self._draining(i) and i.id not in self.state.stopping]
        surge = max(1, -(-len(in_service) // 4))
        renewing = sum(1 for i in in_service if i.id in self.state.renewing) + len(self.state.handover)
        outdated = sorted((i for i in in_service if i.outdated and i.ready
                           and i.id not in self.state.renewing), key=lambda i: i.started_at)
        for instance in outdated[:max(0, surge - renewing)]:
            self._renew(instance, f"roll out {instance.name}: its service's command or"
                                  " environment changed")

    def _renew(self, instance: InstanceSignals, reason: str) -> None:
        if self._declared(instance.index):
            # Its name is what clients know, and a name is one instance at a time: drain it now,
            # start its successor under the same name once it has gone (_handovers).
            self._drain(instance.id, f"{reason}; {instance.name} is a declared name: drained first,"
                                     " then started again under it")
            self.state = replace(self.state, handover=MappingProxyType(
                {**self.state.handover, instance.index: instance.placement}))
            return
        new_id = self._start(instance.placement, reason)
        self.state = replace(self.state, renewing=MappingProxyType(
            {**self.state.renewing, instance.id: new_id}))

    def _declared(self, index: int) -> bool:
        hostnames = self.service.hostnames
        return hostnames is not None and index <= len(hostnames)

    def _handovers(self, instances: list[InstanceSignals]) -> None:
        """Start a renewed declared host again, under its name, once its old instance is gone."""
        if not self.state.handover:
            return
        held = {i.index for i in instances} | {s.index for s in self.state.starting}
        waiting = dict(self.state.handover)
        for index, placement in self.state.handover.items():
            if index in held:
                continue
            name = self.service.instance_name(self.name, index)
            self._start(placement, f"start {name} again: renewed under its declared name", index=index)
            del waiting[index]
        self.state = replace(self.state, handover=MappingProxyType(waiting))

    def _finish_renewals(self, live: list[InstanceSignals], renewing: Mapping[str, str]) -> None:
        """A renewed instance is drained once its replacement is ready, or its end is near."""
        ready_ids = {instance.id for instance in live if instance.ready}
        for instance in live:
            replacement = renewing.get(instance.id)
            if replacement is None or self._draining(instance):
                continue
            left = instance.lifetime_left
            if replacement in ready_ids:
                self._drain(instance.id, f"renewed: replacement {replacement} is ready")
            elif left is not None and left <= self.timings.drain_before_end:
                self._drain(instance.id, f"lifetime left {left:.1f} s; replacement"
                                         f" {replacement} not ready yet")

    def _drains(self, live: list[InstanceSignals]) -> None:
        for instance in live:
            if not self._draining(instance) or instance.id in self.state.stopping:
                continue
            asked = self.state.draining.get(instance.id)
            since = self.now if asked is None else asked
            left = instance.lifetime_left
            # "No connections" counts only from a report the agent made after it took the
            # drain (it says so: `draining`). The coordinator sent it every connection routed
            # there before the drain first, on the same stream, and the agent counts those
            # still being set up; an earlier report misses them, and a stop would reset them.
            acknowledged = asked is None or instance.draining
            if instance.active_connections == 0 and acknowledged:
                self._stop(instance.id, "drained: no connections left")
            elif left is not None and left <= self.timings.stop_before_end:
                self._stop(instance.id, f"lifetime ends in {left:.1f} s with"
                                        f" {instance.active_connections} connections open")
            elif self.now - since >= self.timings.drain_timeout:
                self._stop(instance.id, f"still {instance.active_connections} connections after"
                                        f" draining {self.timings.drain_timeout:g} s")

    def _scale(self, live: list[InstanceSignals], pending: list[PendingConnect]) -> None:
        svc = self.service
        st = self.state
        # `live` excludes stopped instances; draining ones serve no new connections, and an
        # instance being renewed is already counted through its replacement.
        serving = [i for i in live if not self._draining(i)]
        counted = [i for i in serving if i.id not in st.renewing]
        # A declared host between its old instance and its new one still counts, and so does
        # a slot waiting in back-off (or it would be started at once as a missing instance).
        current = len(counted) + len(st.starting) + len(st.handover) + len(st.waiting)
        ceiling = max(0, svc.effective_max_instances - st.retired)
        floor = min(svc.min_instances, ceiling)

        # Scale from zero (or start a declared host) for a held connect, outside any limit.
        if pending and current < ceiling:
            running = {i.name for i in counted} | {s.name for s in st.starting}
            for host in self._hosts_to_start(pending, running, current):
                index = self._index_of(host)
                self._start(self.service.placement_for(self._vm_count(counted)),
                            f"connect to {host} waiting since"
                            f" {min(p.since for p in pending):.3f}", index=index)
                current += 1

        if svc.autoscale is None:
            target = floor  # a fixed-size service: exactly minInstances
        else:
            target = self._autoscale(serving, counted, current, pending, floor, ceiling)
        self.desired = target
        self._apply(target, current, counted)

    def _autoscale(
        self,
        serving: list[InstanceSignals],
        counted: list[InstanceSignals],
        current: int,
        pending: list[PendingConnect],
        floor: int,
        ceiling: int,
    ) -> int:
        svc = self.service
        policy = svc.autoscale
        assert policy is not None
        st = self.state
        now = self.now
        value = sum(_metric_of(i, policy.metric) for i in serving if i.ready)
        samples = tuple(
            (at, v) for at, v in st.samples if at > now - policy.stable_window_seconds
        ) + ((now, value),)
        ready = sum(1 for i in counted if i.ready)
        kpa = kpa_recommendation(
            policy, samples, ready, current, st.panic_since, st.panic_peak, now
        )
        active = value > policy.activation_threshold or bool(pending)
        last_active = now if active or st.last_active is None else st.last_active

        up, down = policy.behavior.scale_up, policy.behavior.scale_down
        keep = max(up.stabilization_window_seconds, down.stabilization_window_seconds)
        recommendations = tuple(
            (at, n) for at, n in st.recommendations if at >= now - keep
        ) + ((now, kpa.desired),)
        longest_period = max(p.period_seconds for p in (*up.policies, *down.policies))
        events = tuple((at, d) for at, d in st.scale_events if at > now - longest_period)

        target = stabilize(recommendations, current, up.stabilization_window_seconds,
                           down.stabilization_window_seconds, now)
        target = rate_limit(target, current, events, up, down, st.last_scale_up,
                            st.last_scale_down, now)
        target = min(max(target, floor), ceiling)

        # Scale to zero has its own delay (the grace period after the last activity, also as
        # the agents measure idleness) and skips HPA stabilization, as in Knative.
        idle_for = now - last_active
        agents_idle = all(
            i.idle_seconds >= policy.scale_to_zero_grace_period_seconds for i in serving
        )
        if floor == 0:
            if not active and idle_for >= policy.scale_to_zero_grace_period_seconds \
                    and agents_idle:
                target = 0
            elif target == 0 and current > 0:
                target = 1  # not idle long enough to let the last one go

        self.state = replace(
            st,
            samples=samples,
            recommendations=recommendations,
            scale_events=events,
            panic_since=kpa.panic_since,
            panic_peak=kpa.panic_peak,
            last_active=last_active,
        )
        return target

    def _apply(self, target: int, current: int, counted: list[InstanceSignals]) -> None:
        delta = target - current
        if delta == 0:
            return
        st = self.state
        if delta > 0:
            on_vm = self._vm_count(counted)
            for _ in range(delta):
                placement = self.service.placement_for(on_vm)
                on_vm += placement is Placement.VM
                self._start(placement, f"scale up {current} -> {target}")
            self.state = replace(self.state, scale_events=(*st.scale_events, (self.now, delta)),
                                 last_scale_up=self.now)
            return
        reason = f"scale down {current} -> {target}"
        remaining = -delta
        # Slots waiting in back-off go first, then not-yet-reported starts: they serve nobody.
        for index in sorted(st.waiting, reverse=True)[:remaining]:
            self._set_slot(index, replace(st.backoff[index], retry_at=None))
            remaining -= 1
        st = self.state
        starting = list(st.starting)
        while remaining and starting:
            victim = starting.pop()
            self._stop(victim.id, reason)
            remaining -= 1
        self.state = replace(self.state, starting=tuple(starting))
        victims = sorted(
            counted,
            key=lambda i: (i.ready, i.placement is Placement.VM, i.active_connections, -i.index),
        )
        for instance in victims[:remaining]:
            self._drain(instance.id, reason)
        self.state = replace(self.state,
                             scale_events=(*self.state.scale_events, (self.now, delta)),
                             last_scale_down=self.now)

    # -- helpers ---------------------------------------------------------------------------

    def _hosts_to_start(
        self, pending: list[PendingConnect], running: set[str], current: int
    ) -> list[str]:
        """Declared hosts asked for that do not run, or the service itself if nothing runs."""
        hosts: list[str] = []
        for connect in sorted(pending, key=lambda p: p.since):
            host = connect.host or self.name
            if host == self.name:
                if current == 0 and not hosts:
                    hosts.append(host)
            elif host not in running and host not in hosts:
                hosts.append(host)
        ceiling = self.service.effective_max_instances - self.state.retired
        return hosts[: max(0, ceiling - current)]

    def _index_of(self, host: str) -> int | None:
        if host != self.name and self.service.hostnames and host in self.service.hostnames:
            return self.service.hostnames.index(host) + 1
        return None

    def _vm_count(self, counted: list[InstanceSignals]) -> int:
        """This service's instances on vm, running or starting (base capacity fills first)."""
        on_vm = sum(1 for i in counted if i.placement is Placement.VM)
        return on_vm + sum(1 for s in self.state.starting if s.placement is Placement.VM)

    def _draining(self, instance: InstanceSignals) -> bool:
        return instance.draining or instance.id in self.state.draining

    def _free_index(self) -> int:
        used = self._used_indexes
        while self._free_cursor in used:
            self._free_cursor += 1
        return self._free_cursor

    def _start(self, placement: Placement, reason: str, index: int | None = None) -> str:
        if index is None:
            index = self._free_index()
        self._used_indexes.add(index)
        self.serial += 1
        name = self.service.instance_name(self.name, index)
        instance_id = f"{name}.{self.serial}"
        self.decisions.append(Start(self.name, placement, reason, instance_id, name, index))
        self.state = replace(
            self.state,
            starting=(*self.state.starting,
                      StartingInstance(instance_id, name, index, placement, self.now)),
        )
        return instance_id

    def _drain(self, instance_id: str, reason: str) -> None:
        if instance_id in self.state.draining:
            return
        self.decisions.append(Drain(instance_id, reason))
        self.state = replace(self.state, draining=MappingProxyType(
            {**self.state.draining, instance_id: self.now}))

    def _stop(self, instance_id: str, reason: str) -> None:
        if instance_id in self.state.stopping:
            return
        self.decisions.append(Stop(instance_id, reason))
        self.state = replace(self.state, stopping=self.state.stopping | {instance_id})
