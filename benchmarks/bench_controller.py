"""Controller decision time per tick at 10, 100, 1000 and 5000 simulated instances.

Measures `decide()` alone (signals are built before the clock starts), for two kinds of tick:
- steady: every instance at its target, nothing to do (the common case, every second);
- burst: the load doubles, so the tick panics and emits Start decisions.
Prints a table and writes benchmarks/results/controller.json.

    python benchmarks/bench_controller.py [--ticks 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from boxer.controller.policy import decide
from boxer.controller.signals import ControllerState, InstanceSignals, Signals
from boxer.controller.spec import Deployment, Placement

SIZES = (10, 100, 1000, 5000)
RESULTS = Path(__file__).resolve().parent / "results" / "controller.json"


def deployment(size: int) -> Deployment:
    return Deployment.model_validate({
        "services": {
            "api": {
                "command": ["srv"],
                "placement": "function",
                "minInstances": 1,
                "maxInstances": size * 2,
                "autoscale": {"target": 10},
            }
        }
    })


def fleet(size: int, now: float, connections: int) -> tuple[InstanceSignals, ...]:
    return tuple(
        InstanceSignals(
            id=f"api-{i}.{i}", name=f"api-{i}", service="api", index=i,
            placement=Placement.FUNCTION, started_at=0.0, last_heard=now,
            active_connections=connections, accepts_per_second=1.0, cpu_percent=20.0,
            listening_ports=frozenset({8080}), lifetime_left=800.0,
        )
        for i in range(1, size + 1)
    )


def measure(size: int, ticks: int) -> dict[str, float]:
    spec = deployment(size)
    base = fleet(size, 0.0, connections=10)  # exactly at target: nothing to do
    # Warm up: a full stable window of history, as after a minute of running.
    state = _seed(spec, size, ControllerState())
    steady: list[float] = []
    now = 60.0
    for _ in range(ticks):
        signals = Signals(tuple(replace(i, last_heard=now) for i in base))
        started = time.perf_counter()
        outcome = decide(spec, signals, state, now)
        steady.append(time.perf_counter() - started)
        if outcome.decisions:
            raise RuntimeError(f"steady tick at {size} instances decided {outcome.decisions[:3]}")
        state = outcome.state
        now += 1.0
    burst: list[float] = []
    doubled = tuple(replace(i, last_heard=now, active_connections=20) for i in base)
    for _ in range(max(3, ticks // 5)):
        started = time.perf_counter()
        outcome = decide(spec, Signals(doubled), state, now)
        burst.append(time.perf_counter() - started)
        if not outcome.decisions:
            raise RuntimeError(f"burst tick at {size} instances decided nothing")
    return {
        "instances": size,
        "steady_median_ms": statistics.median(steady) * 1000,
        "steady_p99_ms": _p99(steady) * 1000,
        "burst_median_ms": statistics.median(burst) * 1000,
        "burst_decisions": len(outcome.decisions),
    }


def _seed(spec: Deployment, size: int, state: ControllerState) -> ControllerState:
    """Feed 60 one-second ticks of the running fleet so the windows are full."""
    for t in range(60):
        outcome = decide(spec, Signals(fleet(size, float(t), 10)), state, float(t))
        if outcome.decisions:
            raise RuntimeError(f"warm-up tick {t} decided {outcome.decisions[:3]}")
        state = outcome.state
    return state


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=30, help="steady ticks measured per size")
    args = parser.parse_args()
    rows = [measure(size, args.ticks) for size in SIZES]
    print(f"{'instances':>9}  {'steady median':>13}  {'steady p99':>10}  "
          f"{'burst median':>12}  {'burst starts':>12}")
    for row in rows:
        print(f"{row['instances']:>9}  {row['steady_median_ms']:>10.2f} ms  "
              f"{row['steady_p99_ms']:>7.2f} ms  {row['burst_median_ms']:>9.2f} ms  "
              f"{row['burst_decisions']:>12}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "controller decide() time per tick",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "ticks": args.ticks,
        "results": rows,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
