"""Properties of decide() over random load curves, checked through the simulation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from boxer.controller.policy import Start
from boxer.controller.simulate import Simulation, World
from boxer.controller.spec import Deployment, Placement

MIN, MAX = 1, 12


def spec(base_capacity: int) -> Deployment:
    return Deployment.model_validate({"services": {"api": {
        "command": ["srv"],
        "minInstances": MIN,
        "maxInstances": MAX,
        "baseCapacity": base_capacity,
        "autoscale": {"target": 5, "stableWindowSeconds": 20, "panicWindowSeconds": 4,
                      "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5,
                                                 "policies": [{"type": "Pods", "value": 3,
                                                               "periodSeconds": 2}]}}},
    }}})


# A load curve: a list of (duration, connections) steps.
steps = st.lists(st.tuples(st.integers(1, 15), st.integers(0, 120)), min_size=1, max_size=8)


def curve(plan: list[tuple[int, int]]):  # type: ignore[no-untyped-def]
    def load(t: float) -> float:
        end = 0
        for duration, value in plan:
            end += duration
            if t < end:
                return float(value)
        return 0.0

    return load


@settings(max_examples=40, deadline=None)
@given(plan=steps, base_capacity=st.integers(0, 3))
def test_counts_stay_within_min_max_and_base_capacity(plan: list[tuple[int, int]],
                                                      base_capacity: int) -> None:
    sim = Simulation(spec(base_capacity), {"api": curve(plan)})
    sim.run_until(sum(d for d, _ in plan) + 60)  # stable window 20 + stabilization 5 + 4 steps of 2 s
    for row in sim.rows:
        running = row.ready[Placement.VM] + row.ready[Placement.FUNCTION] + row.starting
        assert running <= MAX, row  # no lifetimes end in this run, so no renewal overlap
        assert MIN <= row.desired <= MAX, row
        assert row.ready[Placement.VM] <= base_capacity, row
        if row.t >= 1:
            assert running >= MIN, row
    names = [d.name for _, d in sim.decisions if isinstance(d, Start)]
    assert all(name.startswith("api-") for name in names)
    # Whatever happened, once the load is gone for good the fleet settles back to minInstances.
    assert sim.rows[-1].ready[Placement.VM] + sim.rows[-1].ready[Placement.FUNCTION] == MIN


@settings(max_examples=30, deadline=None)
@given(quiet=st.integers(0, 20), heal_after=st.integers(1, 30), exits=st.integers(0, 3))
def test_a_partition_never_starts_more_than_the_rate_allows(quiet: int, heal_after: int,
                                                            exits: int) -> None:
    """Whatever share of 20 instances goes quiet and for how long, the replacements for quiet
    instances stay within the window and the rate (1 a second, the first at once); exits are
    replaced at once besides; once it heals, everything is running again."""
    fleet = Deployment.model_validate({"services": {"api": {
        "command": ["srv"], "minInstances": 20, "maxInstances": 20}}})
    sim = Simulation(fleet, {"api": lambda t: 100.0}, World(tick=0.25))
    sim.run_until(5)
    ids = [i.id for i in sim.live("api")]
    sim.partition(ids[:quiet])
    for instance_id in ids[quiet:quiet + exits]:
        sim.kill(instance_id)
    sim.run_until(5 + heal_after)
    sim.heal()
    sim.run_until(5 + heal_after + 5)
    during = [d for t, d in sim.decisions if isinstance(d, Start) and 5 <= t < 5 + heal_after]
    for_quiet = [d for d in during if "quiet" in d.reason]
    assert len(during) - len(for_quiet) == min(exits, 20 - quiet)
    if quiet >= 3 and quiet >= 0.55 * 20:  # a suspected partition
        allowed = 0 if quiet >= 0.9 * 20 else max(0, heal_after - 1)  # 1 s window, 1 a second
        assert len(for_quiet) <= allowed
    last = sim.rows[-1]
    assert last.ready[Placement.FUNCTION] == 20
