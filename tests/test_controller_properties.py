"""Properties of decide() over random load curves, checked through the simulation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.policy import Start
from controller.simulate import Simulation
from controller.spec import Deployment, Placement

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
