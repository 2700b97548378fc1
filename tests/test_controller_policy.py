"""decide() on a simulated clock: exact decisions, reasons and times."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest

from boxer.controller.policy import DEFAULT_TIMINGS, Drain, Outcome, Start, Stop, Timings, decide, pick_instance
from boxer.controller.signals import ControllerState, InstanceSignals, PendingConnect, Signals
from boxer.controller.spec import Deployment, Placement
from boxer.controller.validate import parse_deployment

FN, VM = Placement.FUNCTION, Placement.VM


def deployment(text: str) -> Deployment:
    return parse_deployment(textwrap.dedent(text), "test.yaml")


def inst(name: str, serial: int, *, now: float, conns: int = 0, ready: bool = True,
         placement: Placement = FN, **fields: object) -> InstanceSignals:
    service, _, index = name.rpartition("-")
    values: dict[str, object] = {
        "id": f"{name}.{serial}", "name": name, "service": service, "index": int(index),
        "placement": placement, "started_at": 0.0, "last_heard": now,
        "active_connections": conns, "listening_ports": frozenset({80}) if ready else frozenset(),
    }
    values.update(fields)
    return InstanceSignals(**values)  # type: ignore[arg-type]


class Controller:
    """Carries the state between ticks, as the runtime will."""

    def __init__(self, spec: Deployment, timings: Timings = DEFAULT_TIMINGS) -> None:
        self.spec, self.timings, self.state = spec, timings, ControllerState()

    def tick(self, now: float, *instances: InstanceSignals,
             pending: tuple[PendingConnect, ...] = ()) -> Outcome:
        outcome = decide(self.spec, Signals(instances, pending), self.state, now, self.timings)
        self.state = outcome.state
        return outcome


FIXED_VM = """\
    services:
      web:
        command: [nginx]
        placement: vm
        minInstances: 2
        maxInstances: 2
        autoscale: {target: 10}
    """


def test_boot_starts_min_instances_then_waits_for_them() -> None:
    ctl = Controller(deployment(FIXED_VM))
    first = ctl.tick(0.0)
    assert first.decisions == (
        Start("web", VM, "scale up 0 -> 2", "web-1.1", "web-1", 1),
        Start("web", VM, "scale up 0 -> 2", "web-2.2", "web-2", 2),
    )
    assert first.desired == {"web": 2}
    assert ctl.tick(1.0).decisions == ()  # still starting: not started twice
    ready = (inst("web-1", 1, now=2.0, placement=VM), inst("web-2", 2, now=2.0, placement=VM))
    assert ctl.tick(2.0, *ready).decisions == ()
    assert ctl.state.service("web").starting == ()


def test_start_that_never_reports_is_given_up_and_retried() -> None:
    ctl = Controller(deployment(FIXED_VM), Timings(start_timeout=5.0))
    ctl.tick(0.0)
    web1 = inst("web-1", 1, now=5.0, placement=VM)
    assert ctl.tick(5.0, web1).decisions == ()  # 5 s is not more than the timeout
    assert ctl.tick(5.5, replace(web1, last_heard=5.5)).decisions == (
        Stop("web-2.2", "did not report within 5 s of being started"),
        Start("web", VM, "scale up 1 -> 2", "web-2.3", "web-2", 2),
    )


class TestFailures:
    def spec(self, restart: str) -> Deployment:
        return deployment(f"""\
            services:
              kv:
                command: [redis-server]
                placement: vm
                minInstances: 2
                maxInstances: 2
                restartPolicy: {restart}
                autoscale: {{target: 10}}
            """)

    def booted(self, restart: str) -> Controller:
        ctl = Controller(self.spec(restart))
        ctl.tick(0.0)
        return ctl

    def test_exit_is_replaced_under_the_same_name(self) -> None:
        ctl = self.booted("always")
        kv1 = inst("kv-1", 1, now=10.0, placement=VM)
        dead = inst("kv-2", 2, now=10.0, placement=VM, exited=True, exit_status=0)
        assert ctl.tick(10.0, kv1, dead).decisions == (
            Stop("kv-2.2", "exited with status 0"),
            Start("kv", VM, "replace kv-2: exited with status 0", "kv-2.3", "kv-2", 2),
        )
        # Next tick the dead one is still listed (being stopped): nothing new happens.
        assert ctl.tick(11.0, replace(kv1, last_heard=11.0), dead).decisions == ()

    def test_silent_agent_is_failed_after_one_second(self) -> None:
        ctl = self.booted("on-failure")
        kv1 = inst("kv-1", 1, now=10.0, placement=VM)
        kv2 = inst("kv-2", 2, now=10.0, placement=VM, last_heard=9.0)
        assert ctl.tick(10.0, kv1, kv2).decisions == ()  # exactly 1 s: still fine
        assert ctl.tick(10.2, replace(kv1, last_heard=10.2), kv2).decisions == (
            Stop("kv-2.2", "silent for 1.2 s (limit 1 s)"),
            Start("kv", VM, "replace kv-2: silent for 1.2 s (limit 1 s)", "kv-2.3", "kv-2", 2),
        )

    def test_on_failure_does_not_restart_a_clean_exit_and_keeps_the_slot_empty(self) -> None:
        ctl = self.booted("on-failure")
        kv1 = inst("kv-1", 1, now=10.0, placement=VM)
        done = inst("kv-2", 2, now=10.0, placement=VM, exited=True, exit_status=0)
        outcome = ctl.tick(10.0, kv1, done)
        assert outcome.decisions == (Stop("kv-2.2", "exited with status 0"),)
        assert outcome.desired == {"kv": 1}
        assert ctl.tick(11.0, replace(kv1, last_heard=11.0)).decisions == ()

    def test_on_failure_restarts_a_crash(self) -> None:
        ctl = self.booted("on-failure")
        crash = inst("kv-2", 2, now=10.0, placement=VM, exited=True, exit_status=139)
        assert ctl.tick(10.0, inst("kv-1", 1, now=10.0, placement=VM), crash).decisions == (
            Stop("kv-2.2", "exited with status 139"),
            Start("kv", VM, "replace kv-2: exited with status 139", "kv-2.3", "kv-2", 2),
        )

    def test_never_does_not_restart_a_crash(self) -> None:
        ctl = self.booted("never")
        crash = inst("kv-2", 2, now=10.0, placement=VM, exited=True, exit_status=1)
        outcome = ctl.tick(10.0, inst("kv-1", 1, now=10.0, placement=VM), crash)
        assert outcome.decisions == (Stop("kv-2.2", "exited with status 1"),)
        assert ctl.state.service("kv").retired == 1

    @pytest.mark.parametrize("restart", ["always", "on-failure"])
    def test_an_agent_the_coordinator_reports_quiet_is_failed_at_once(self, restart: str) -> None:
        # Its last report is fresh (the backstop would wait 2.5 s in the runtime): the quiet
        # heartbeat alone fails it, and the restart policy replaces it under the same name.
        ctl = Controller(self.spec(restart), Timings(silent_after=2.5))
        ctl.tick(0.0)
        kv1 = inst("kv-1", 1, now=10.0, placement=VM)
        quiet = inst("kv-2", 2, now=10.0, placement=VM, last_heard=9.6, quiet_since=9.15)
        why = "agent quiet for 0.9 s (no heartbeat)"
        assert ctl.tick(10.05, kv1, quiet).decisions == (
            Stop("kv-2.2", why),
            Start("kv", VM, f"replace kv-2: {why}", "kv-2.3", "kv-2", 2),
        )
        # Next tick it is still listed, being stopped: nothing new.
        assert ctl.tick(10.3, replace(kv1, last_heard=10.3), quiet).decisions == ()

    def test_never_does_not_replace_a_quiet_agent(self) -> None:
        ctl = self.booted("never")
        quiet = inst("kv-2", 2, now=10.0, placement=VM, quiet_since=9.0)
        outcome = ctl.tick(10.0, inst("kv-1", 1, now=10.0, placement=VM), quiet)
        assert outcome.decisions == (Stop("kv-2.2", "agent quiet for 1.0 s (no heartbeat)"),)
        assert ctl.state.service("kv").retired == 1

    def test_a_quiet_instance_being_renewed_is_stopped_not_replaced_twice(self) -> None:
        spec = deployment("""\
            services:
              api:
                command: [srv]
                placement: function
                minInstances: 1
                maxInstances: 1
                maxLifetimeSeconds: 100
                renewalMarginSeconds: 10
            """)
        ctl = Controller(spec)
        ctl.tick(0.0)
        old = inst("api-1", 1, now=1.0, lifetime_left=5.0)
        renew = ctl.tick(1.0, old).decisions
        assert [type(d) for d in renew] == [Start]
        quiet = replace(old, last_heard=1.5, quiet_since=1.2)
        assert ctl.tick(1.5, quiet).decisions == (Stop("api-1.1", "agent quiet for 0.3 s (no heartbeat)"),)


API = """\
    services:
      api:
        command: [srv]
        placement: function
        minInstances: 0
        maxInstances: 10
        autoscale:
          target: 10
          scaleToZeroGracePeriodSeconds: 30
    """


class TestScaleFromAndToZero:
    def test_nothing_runs_without_demand(self) -> None:
        ctl = Controller(deployment(API))
        assert ctl.tick(0.0).decisions == ()
        assert ctl.tick(1.0).desired == {"api": 0}

    def test_held_connect_starts_one_at_once(self) -> None:
        ctl = Controller(deployment(API))
        ctl.tick(0.0)
        outcome = ctl.tick(3.0, pending=(PendingConnect("api", since=2.5),))
        assert outcome.decisions == (
            Start("api", FN, "connect to api waiting since 2.500", "api-1.1", "api-1", 1),
        )
        assert outcome.desired == {"api": 1}
        # The connect is still held while it starts: no second instance.
        assert ctl.tick(4.0, pending=(PendingConnect("api", since=2.5),)).decisions == ()

    def test_last_instance_goes_after_the_grace_period(self) -> None:
        ctl = Controller(deployment(API))
        ctl.tick(0.0, pending=(PendingConnect("api", since=0.0),))
        ctl.tick(1.0, inst("api-1", 1, now=1.0, conns=1))  # last activity at t=1
        for t in range(2, 31):
            idle = float(t - 1)
            outcome = ctl.tick(float(t), inst("api-1", 1, now=t, idle_seconds=idle))
            assert outcome.decisions == (), t
        assert ctl.tick(31.0, inst("api-1", 1, now=31.0, idle_seconds=30.0)).decisions == (
            Drain("api-1.1", "scale down 1 -> 0"),
        )
        assert ctl.tick(32.0, inst("api-1", 1, now=32.0, draining=True)).decisions == (
            Stop("api-1.1", "drained: no connections left"),
        )

    def test_agent_reported_cpu_activity_keeps_the_instance(self) -> None:
        ctl = Controller(deployment(API))
        ctl.tick(0.0, pending=(PendingConnect("api", since=0.0),))
        # No connections for 40 s, but the agent saw CPU use 5 s ago: not idle.
        assert ctl.tick(40.0, inst("api-1", 1, now=40.0, idle_seconds=5.0)).decisions == ()

    def test_connect_to_a_declared_host_starts_that_host(self) -> None:
        spec = deployment("""\
            services:
              kv:
                command: [redis-server]
                placement: vm
                minInstances: 1
                maxInstances: 3
                hostnames: [kv-a, kv-b, kv-c]
                autoscale: {target: 10}
            """)
        ctl = Controller(spec)
        assert ctl.tick(0.0).decisions == (Start("kv", VM, "scale up 0 -> 1", "kv-a.1", "kv-a",
                                                 1),)
        kva = inst("kv-1", 1, now=1.0, placement=VM)
        kva = replace(kva, id="kv-a.1", name="kv-a")
        outcome = ctl.tick(1.0, kva, pending=(PendingConnect("kv", 0.9, host="kv-c"),))
        assert outcome.decisions[0] == Start("kv", VM, "connect to kv-c waiting since 0.900",
                                             "kv-c.2", "kv-c", 3)


def test_load_step_panics_and_rate_limits_per_hpa_defaults() -> None:
    spec = deployment("""\
        services:
          api:
            command: [srv]
            minInstances: 1
            maxInstances: 20
            autoscale: {target: 10}
        """)
    ctl = Controller(spec)
    ctl.tick(0.0)
    api1 = inst("api-1", 1, now=1.0, conns=5)
    for t in range(1, 11):  # 10 s at half the target: nothing to do
        assert ctl.tick(float(t), replace(api1, last_heard=t)).decisions == ()
    # 100 connections on the one instance: panic average (6 s) = (5*5 + 100)/6 = 20.8 -> 3
    outcome = ctl.tick(11.0, replace(api1, last_heard=11.0, active_connections=100))
    assert [d.name for d in outcome.decisions if isinstance(d, Start)] == ["api-2", "api-3"]
    assert ctl.state.service("api").panic_since == 11.0


def test_scale_down_prefers_unready_then_function_then_fewest_connections() -> None:
    spec = deployment("""\
        services:
          api:
            command: [srv]
            minInstances: 1
            maxInstances: 10
            baseCapacity: 2
            autoscale:
              target: 10
              behavior:
                scaleDown:
                  stabilizationWindowSeconds: 0
                  policies: [{type: Pods, value: 3, periodSeconds: 15}]
        """)
    ctl = Controller(spec)
    boot = ctl.tick(0.0)
    assert [(d.name, d.placement) for d in boot.decisions if isinstance(d, Start)] == [
        ("api-1", VM)]
    now = 100.0
    fleet = (
        inst("api-1", 1, now=now, conns=1, placement=VM),
        inst("api-2", 2, now=now, conns=0, placement=VM),
        inst("api-3", 3, now=now, conns=2),
        inst("api-4", 4, now=now, conns=1),
        inst("api-5", 5, now=now, ready=False),
    )
    # 4 connections -> 1 instance wanted; at most 3 may go in 15 s.
    assert ctl.tick(now, *fleet).decisions == (
        Drain("api-5.5", "scale down 5 -> 2"),
        Drain("api-4.4", "scale down 5 -> 2"),
        Drain("api-3.3", "scale down 5 -> 2"),
    )


def test_base_capacity_fills_vm_first_then_bursts_on_function() -> None:
    spec = deployment("""\
        services:
          api:
            command: [srv]
            minInstances: 4
            maxInstances: 6
            baseCapacity: 2
            autoscale: {target: 10}
        """)
    outcome = Controller(spec).tick(0.0)
    assert [(d.name, d.placement) for d in outcome.decisions if isinstance(d, Start)] == [
        ("api-1", VM), ("api-2", VM), ("api-3", FN), ("api-4", FN)]


class TestLifetime:
    SPEC = """\
        services:
          api:
            command: [srv]
            minInstances: 1
            maxInstances: 1
            maxLifetimeSeconds: 300
            renewalMarginSeconds: 30
            autoscale: {target: 10}
        """

    def test_renew_start_then_drain_then_stop(self) -> None:
        ctl = Controller(deployment(self.SPEC))
        ctl.tick(0.0)
        old = inst("api-1", 1, now=270.0, conns=4, lifetime_left=30.0)
        assert ctl.tick(270.0, old).decisions == ()  # not below the margin yet
        old = replace(old, last_heard=271.0, lifetime_left=29.0)
        assert ctl.tick(271.0, old).decisions == (
            Start("api", FN, "renew api-1: lifetime left 29 s < margin 30 s", "api-2.2",
                  "api-2", 2),
        )
        # The replacement reports but is not listening yet: the old one keeps serving.
        new = inst("api-2", 2, now=272.0, ready=False, lifetime_left=299.0)
        old = replace(old, last_heard=272.0, lifetime_left=28.0)
        assert ctl.tick(272.0, old, new).decisions == ()
        new = replace(new, last_heard=273.0, listening_ports=frozenset({80}))
        old = replace(old, last_heard=273.0, lifetime_left=27.0)
        assert ctl.tick(273.0, old, new).decisions == (
            Drain("api-1.1", "renewed: replacement api-2.2 is ready"),
        )
        old = replace(old, last_heard=274.0, lifetime_left=26.0, draining=True)
        assert ctl.tick(274.0, old, replace(new, last_heard=274.0)).decisions == ()
        old = replace(old, last_heard=275.0, active_connections=0)
        assert ctl.tick(275.0, old, replace(new, last_heard=275.0)).decisions == (
            Stop("api-1.1", "drained: no connections left"),
        )
        assert ctl.tick(276.0, replace(new, last_heard=276.0)).decisions == ()

    def test_no_connections_counts_only_from_a_report_after_the_drain(self) -> None:
        # Drained one tick after the replacement starts (lifetime left <= drain_before_end): the
        # last report, from before the drain, says 0 connections, but connects set up since
        # would be reset by a stop. Only a report the agent made after it took the drain (it
        # says `draining`) may say it is drained, however late another one comes.
        ctl = Controller(deployment(self.SPEC))
        ctl.tick(0.0)
        old = inst("api-1", 1, now=290.0, conns=0, lifetime_left=10.0)
        assert [type(d) for d in ctl.tick(290.0, old).decisions] == [Start]
        old = replace(old, last_heard=294.9, lifetime_left=5.0)
        assert ctl.tick(295.0, old).decisions == (
            Drain("api-1.1", "lifetime left 5.0 s; replacement api-2.2 not ready yet"),
        )
        assert ctl.tick(295.25, old).decisions == ()  # still that old report
        assert ctl.tick(295.5, replace(old, last_heard=295.1)).decisions == ()  # sent before it
        assert ctl.tick(296.0, replace(old, last_heard=295.9)).decisions == ()  # not taken yet
        assert ctl.tick(296.25, replace(old, last_heard=296.2, draining=True)).decisions == (
            Stop("api-1.1", "drained: no connections left"),
        )

    def test_drain_near_the_end_even_without_replacement_then_stop_before_end(self) -> None:
        ctl = Controller(deployment(self.SPEC))
        ctl.tick(0.0)
        old = inst("api-1", 1, now=290.0, conns=4, lifetime_left=10.0)
        assert [type(d) for d in ctl.tick(290.0, old).decisions] == [Start]
        old = replace(old, last_heard=295.0, lifetime_left=5.0)
        assert ctl.tick(295.0, old).decisions == (
            Drain("api-1.1", "lifetime left 5.0 s; replacement api-2.2 not ready yet"),
        )
        old = replace(old, last_heard=299.0, lifetime_left=1.0)
        assert ctl.tick(299.0, old).decisions == (
            Stop("api-1.1", "lifetime ends in 1.0 s with 4 connections open"),
        )


class TestPicker:
    def test_least_connections_among_ready_non_draining(self) -> None:
        now = 5.0
        fleet = [
            inst("api-1", 1, now=now, conns=3),
            inst("api-2", 2, now=now, conns=1),
            inst("api-3", 3, now=now, conns=0, draining=True),
            inst("api-4", 4, now=now, conns=0, ready=False),
            inst("api-5", 5, now=now, conns=0, last_heard=3.0),
            inst("api-7", 7, now=now, conns=0, quiet_since=4.5),
            inst("api-6", 6, now=now, conns=1),
            inst("web-1", 1, now=now, conns=0),
        ]
        assert pick_instance(fleet, "api", now).name == "api-2"  # type: ignore[union-attr]
        assert pick_instance(fleet, "db", now) is None

    def test_instances_the_controller_drains_get_nothing(self) -> None:
        ctl = Controller(deployment(FIXED_VM))
        ctl.tick(0.0)
        fleet = [inst("web-1", 1, now=1.0, placement=VM),
                 inst("web-2", 2, now=1.0, conns=5, placement=VM)]
        from types import MappingProxyType
        web = replace(ctl.state.service("web"), draining=MappingProxyType({"web-1.1": 1.0}))
        state = replace(ctl.state, services={"web": web})
        assert pick_instance(fleet, "web", 1.0, state).name == "web-2"  # type: ignore[union-attr]


def test_signal_validation() -> None:
    with pytest.raises(ValueError, match="active_connections must be >= 0, got -1"):
        inst("api-1", 1, now=0.0, conns=-1)
    with pytest.raises(ValueError, match="exit_status 3 given for an instance that has not"):
        inst("api-1", 1, now=0.0, exit_status=3)
    with pytest.raises(ValueError, match="instance ids reported twice: api-1.1"):
        Signals((inst("api-1", 1, now=0.0), inst("api-1", 1, now=0.0)))


class TestRollout:
    """`boxer up` again with a new command: outdated instances are renewed, a quarter of the
    service at a time (at least one), each drained only once its replacement is ready."""

    SPEC = """\
        services:
          web:
            command: [nginx]
            placement: vm
            minInstances: 5
            maxInstances: 5
            autoscale: {target: 10}
        """
    ROLL = "roll out {}: its service's command or environment changed"

    def running(self) -> tuple[Controller, list[InstanceSignals]]:
        ctl = Controller(deployment(self.SPEC))
        ctl.tick(0.0)
        web = [inst(f"web-{i}", i, now=1.0, placement=VM, started_at=float(i)) for i in range(1, 6)]
        assert ctl.tick(1.0, *web).decisions == ()
        return ctl, web

    def test_up_to_a_quarter_at_a_time_oldest_first(self) -> None:
        ctl, web = self.running()
        old = [replace(i, outdated=True, last_heard=2.0) for i in web]
        first = ctl.tick(2.0, *old).decisions
        # 5 instances: ceil(5 / 4) = 2 renewed at once; web-1 and web-2 started first.
        assert first == (Start("web", VM, self.ROLL.format("web-1"), "web-6.6", "web-6", 6),
                         Start("web", VM, self.ROLL.format("web-2"), "web-7.7", "web-7", 7))
        # Nothing more while those two replacements are not ready, and nothing drained.
        assert ctl.tick(2.5, *[replace(i, last_heard=2.5) for i in old]).decisions == ()
        new6 = inst("web-6", 6, now=3.0, placement=VM, started_at=2.0)
        step = ctl.tick(3.0, *[replace(i, last_heard=3.0) for i in old], new6).decisions
        assert step == (Drain("web-1.1", "renewed: replacement web-6.6 is ready"),
                        Start("web", VM, self.ROLL.format("web-3"), "web-8.8", "web-8", 8))

    def test_an_outdated_instance_that_is_not_ready_yet_waits(self) -> None:
        ctl, web = self.running()
        old = [replace(i, outdated=True, last_heard=2.0) for i in web]
        old[0] = replace(old[0], listening_ports=frozenset())  # web-1 is not serving (yet)
        first = ctl.tick(2.0, *old).decisions
        assert [d.reason for d in first] == [self.ROLL.format("web-2"), self.ROLL.format("web-3")]

    def test_capacity_never_drops_and_the_count_is_kept(self) -> None:
        ctl, web = self.running()
        now, instances, serial = 2.0, [replace(i, outdated=True) for i in web], 5
        for _ in range(40):  # each replacement is ready the tick after it starts
            outcome = ctl.tick(now, *[replace(i, last_heard=now) for i in instances])
            for d in outcome.decisions:
                if isinstance(d, Start):
                    serial += 1
                    instances.append(inst(d.name, int(d.instance_id.rsplit(".")[1]), now=now,
                                          placement=VM, started_at=now))
                elif isinstance(d, Stop):
                    instances = [i for i in instances if i.id != d.instance]
                elif isinstance(d, Drain):
                    instances = [replace(i, draining=True) if i.id == d.instance else i
                                 for i in instances]
            serving = [i for i in instances if i.ready and not i.draining]
            assert len(serving) >= 5  # maxUnavailable 0
            assert len(serving) <= 5 + 2  # maxSurge: a quarter, rounded up (drained ones aside)
            now += 0.25
        assert sorted(i.index for i in instances) == [6, 7, 8, 9, 10]
        assert not any(i.outdated for i in instances)


def test_a_declared_host_is_renewed_under_its_own_name_after_it_has_gone() -> None:
    """Clients know kv-a by name, and a name is one instance at a time: at the end of its
    lifetime kv-a is drained first, nothing else is started meanwhile, and once it has gone
    kv-a starts again (same index, same name)."""
    ctl = Controller(deployment("""\
        services:
          kv:
            command: [redis-server]
            minInstances: 2
            maxInstances: 2
            hostnames: [kv-a, kv-b]
            maxLifetimeSeconds: 300
            renewalMarginSeconds: 30
        """))
    ctl.tick(0.0)
    kva = replace(inst("kv-1", 1, now=271.0, lifetime_left=29.0), id="kv-a.1", name="kv-a")
    kvb = replace(inst("kv-2", 2, now=271.0, lifetime_left=200.0), id="kv-b.2", name="kv-b")
    assert ctl.tick(271.0, kva, kvb).decisions == (
        Drain("kv-a.1", "renew kv-a: lifetime left 29 s < margin 30 s; kv-a is a declared name:"
                        " drained first, then started again under it"),)
    kva = replace(kva, last_heard=272.0, draining=True, active_connections=0)
    kvb = replace(kvb, last_heard=272.0)
    assert ctl.tick(272.0, kva, kvb).decisions == (Stop("kv-a.1", "drained: no connections left"),)
    assert ctl.tick(272.5, replace(kva, last_heard=272.5), replace(kvb, last_heard=272.5)).decisions == ()
    # kv-a has gone: it starts again, as kv-a.
    assert ctl.tick(273.0, replace(kvb, last_heard=273.0)).decisions == (
        Start("kv", FN, "start kv-a again: renewed under its declared name", "kv-a.3", "kv-a", 1),)
    assert ctl.tick(273.5, replace(kvb, last_heard=273.5)).decisions == ()
