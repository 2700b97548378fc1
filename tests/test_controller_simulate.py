"""The policy driven end to end by the simulation: load curves, lifetimes, faults, scale."""

from __future__ import annotations

import textwrap

import pytest

from boxer.controller.policy import Drain, Start, Stop
from boxer.controller.simulate import Simulation, World
from boxer.controller.spec import Deployment, Placement
from boxer.controller.validate import parse_deployment

FN, VM = Placement.FUNCTION, Placement.VM


def deployment(text: str) -> Deployment:
    return parse_deployment(textwrap.dedent(text), "sim.yaml")


def test_thousands_of_instances_follow_a_step() -> None:
    spec = deployment("""\
        services:
          api:
            command: [srv]
            minInstances: 0
            maxInstances: 3000
            autoscale:
              target: 10
              behavior:
                scaleUp:
                  stabilizationWindowSeconds: 0
                  policies: [{type: Percent, value: 1000, periodSeconds: 1}]
        """)
    sim = Simulation(spec, {"api": lambda t: 20000.0 if t >= 1 else 0.0})
    sim.run_until(10)
    ready = [row.ready[FN] for row in sim.rows]
    # t=1 scale from zero; the panic-window average (6 s) then ramps the wish while x11 per
    # second caps the growth; 20000 connections / 10 per instance = 2000 from t=8 on.
    assert ready == [0, 0, 1, 11, 121, 1200, 1334, 1667, 2000, 2000]
    assert sim.rows[1].unserved == 20000.0 and all(r.unserved == 0 for r in sim.rows[2:])


def test_steady_load_across_many_lifetimes_loses_nothing() -> None:
    spec = deployment("""\
        services:
          api:
            command: [srv]
            minInstances: 4
            maxInstances: 4
            maxLifetimeSeconds: 120
            renewalMarginSeconds: 10
            autoscale: {target: 10}
        """)
    sim = Simulation(spec, {"api": lambda t: 40.0})
    sim.run_until(400)
    starts = [(t, d) for t, d in sim.decisions if isinstance(d, Start)]
    # 4 at boot, each renewed at t=111 (lifetime left 9 < 10), again at 222 and 333.
    assert [t for t, _ in starts] == [0.0] * 4 + [111.0] * 4 + [222.0] * 4 + [333.0] * 4
    assert all(d.reason.startswith("renew ") for _, d in starts[4:])
    drains = [t for t, d in sim.decisions if isinstance(d, Drain)]
    assert drains == [112.0] * 4 + [223.0] * 4 + [334.0] * 4  # once the successor listens
    assert sum(row.lost for row in sim.rows) == 0
    assert [row.t for row in sim.rows if row.unserved] == [0.0]  # only before the first boot
    assert all(row.ready[FN] >= 4 for row in sim.rows if row.t >= 1)


def test_killed_instance_is_replaced_and_serving_within_two_seconds() -> None:
    spec = deployment("""\
        services:
          kv:
            command: [redis-server]
            placement: vm
            minInstances: 3
            maxInstances: 3
        """)
    sim = Simulation(spec, {"kv": lambda t: 30.0}, World(tick=0.25))
    sim.run_until(5)
    sim.kill("kv-2.2")
    killed_at = sim.now
    sim.run_until(10)
    replaced = [(t, d) for t, d in sim.decisions if t >= killed_at]
    assert replaced == [
        (5.0, Stop("kv-2.2", "exited with status 137")),
        (5.0, Start("kv", VM, "replace kv-2: exited with status 137", "kv-2.4", "kv-2", 2)),
    ]
    back = sim.first_time("kv", lambda r: r.t > killed_at and r.ready[VM] == 3)
    assert back == 5.5  # 0.5 s start delay, seen on the next tick at or after it


def test_silent_agent_is_detected_after_one_second_and_replaced() -> None:
    spec = deployment("""\
        services:
          kv:
            command: [redis-server]
            placement: vm
            minInstances: 2
            maxInstances: 2
        """)
    sim = Simulation(spec, {"kv": lambda t: 0.0}, World(tick=0.25))
    sim.run_until(3)
    sim.silence("kv-1.1")
    sim.run_until(6)
    assert [(t, d.reason) for t, d in sim.decisions if t >= 3] == [
        (4.25, "silent for 1.2 s (limit 1 s)"),
        (4.25, "replace kv-1: silent for 1.2 s (limit 1 s)"),
    ]


def test_base_capacity_on_vm_and_bursts_on_function() -> None:
    spec = deployment("""\
        services:
          api:
            command: [srv]
            minInstances: 2
            maxInstances: 10
            baseCapacity: 2
            autoscale:
              target: 10
              behavior:
                scaleUp:
                  stabilizationWindowSeconds: 0
                  policies: [{type: Percent, value: 1000, periodSeconds: 1}]
                scaleDown:
                  stabilizationWindowSeconds: 0
                  policies: [{type: Percent, value: 100, periodSeconds: 1}]
        """)
    sim = Simulation(spec, {"api": lambda t: 80.0 if 10 <= t < 100 else 10.0})
    sim.run_until(200)
    at = {row.t: row for row in sim.rows}
    assert (at[5.0].ready[VM], at[5.0].ready[FN]) == (2, 0)
    assert (at[50.0].ready[VM], at[50.0].ready[FN]) == (2, 6)
    # Bursts go first when the load falls; the base capacity on vm stays.
    assert (at[199.0].ready[VM], at[199.0].ready[FN]) == (2, 0)


def test_load_curve_for_unknown_service_is_refused() -> None:
    spec = deployment("services:\n  api:\n    command: [srv]\n")
    with pytest.raises(ValueError, match="load curves for unknown services: db"):
        Simulation(spec, {"db": lambda t: 1.0})


PARTITIONED = """\
    services:
      web:
        command: [nginx]
        placement: vm
        minInstances: 4
        maxInstances: 4
      api:
        command: [srv]
        minInstances: 196
        maxInstances: 196
    """


def test_a_partition_that_heals_costs_a_replacement_a_second_not_a_burst() -> None:
    # 160 of the 200 instances (80 %, all of them api) go quiet at t=5 and are heard again at
    # t=15. Judged deployment-wide: web's 4 and api's other 36 are heard.
    sim = Simulation(deployment(PARTITIONED), {"api": lambda t: 400.0}, World(tick=0.25))
    sim.run_until(5)
    sim.partition([i.id for i in sim.live("api")][:160])
    sim.run_until(15)
    sim.heal()
    sim.run_until(40)
    starts = [t for t, d in sim.decisions if isinstance(d, Start) and t >= 5]
    assert starts == [float(t) for t in range(6, 15)]  # after the 1 s window, one a second
    modes = {t: v.mode.value for t, v in sim.verdicts if 5 <= t < 16}
    assert (modes[5.0], modes[5.75], modes[6.0], modes[14.75], modes[15.0]) == (
        "watching", "watching", "limited", "limited", "normal")
    last = sim.rows[-1]
    assert last.service == "api" and last.ready[FN] == 196  # the 151 that came back stayed


def test_a_partition_of_everything_replaces_nothing() -> None:
    sim = Simulation(deployment(PARTITIONED), {"api": lambda t: 400.0}, World(tick=0.25))
    sim.run_until(5)
    sim.partition(list(sim.instances))
    sim.run_until(60)
    assert [d for t, d in sim.decisions if t >= 5] == []
    assert sim.verdicts[-1][1].reason == (
        "suspected partition at the coordinator: 200 of 200 instances (100 %) went quiet at"
        " once (halt threshold 90 %): replacing none until some are heard again")
