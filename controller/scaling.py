"""The arithmetic of autoscaling, one pure function per idea, no instances involved.

- `kpa_recommendation`: Knative KPA's stable/panic windows turn a metric history into a count.
- `stabilize`: HPA stabilization windows (highest recent recommendation wins when scaling down,
  lowest when scaling up).
- `rate_limit`: HPA `behavior` policies (at most N pods or P percent per period) and cooldowns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from boxer.controller.spec import AutoscalePolicy, ScalingRules

__all__ = ["KpaResult", "kpa_recommendation", "rate_limit", "stabilize"]

# ceil(2.0000000001) must stay 2: sums of floats drift.
_EPSILON = 1e-9


def _count_for(value: float, target: float) -> int:
    return max(0, math.ceil(value / target - _EPSILON))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@dataclass(frozen=True)
class KpaResult:
    desired: int
    stable_average: float
    panic_average: float
    panic_since: float | None
    panic_peak: int


def kpa_recommendation(
    policy: AutoscalePolicy,
    samples: Sequence[tuple[float, float]],
    ready: int,
    current: int,
    panic_since: float | None,
    panic_peak: int,
    now: float,
) -> KpaResult:
    """Knative KPA: follow the stable-window average, or the panic-window one in a burst.

    `samples` are (time, service-wide metric) within the stable window, newest last. Panic starts
    when the panic-window average asks for panicThresholdPercentage of the ready instances; while
    in panic the count never goes down, and panic ends one stable window after the last tick
    that was over the threshold.
    """
    stable = _mean([value for _, value in samples])
    panic_start = now - policy.panic_window_seconds
    panic = _mean([value for at, value in samples if at > panic_start])
    want_stable = _count_for(stable, policy.target)
    want_panic = _count_for(panic, policy.target)

    over = want_panic / max(ready, 1) >= policy.panic_threshold_percentage / 100
    if over:
        if panic_since is None:
            panic_peak = current
        panic_since = now
    elif panic_since is not None and now - panic_since >= policy.stable_window_seconds:
        panic_since, panic_peak = None, 0

    if panic_since is not None:
        panic_peak = max(panic_peak, want_panic)
        desired = panic_peak
    else:
        desired = want_stable
    return KpaResult(desired, stable, panic, panic_since, panic_peak)


def stabilize(
    recommendations: Sequence[tuple[float, int]],
    current: int,
    up_window: float,
    down_window: float,
    now: float,
) -> int:
    """HPA stabilization: scale up only to the lowest, down only to the highest recent wish.

    `recommendations` include this tick's. With both windows 0 this returns the newest one.
    """
    newest = recommendations[-1][1]
    up, down = newest, newest
    for at, count in recommendations:
        if at >= now - up_window:
            up = min(up, count)
        if at >= now - down_window:
            down = max(down, count)
    # Rise to the lowest recent wish, fall to the highest: between the two, stay.
    return min(max(current, up), down)


def rate_limit(
    desired: int,
    current: int,
    events: Sequence[tuple[float, int]],
    up: ScalingRules,
    down: ScalingRules,
    last_up: float | None,
    last_down: float | None,
    now: float,
) -> int:
    """Apply the HPA policies of the direction we move in, and its cooldown.

    The count at the start of a policy's period is the current count minus the changes made
    within that period, as in HPA. Going from 0 to 1 is always allowed: percent policies would
    otherwise keep a service at zero forever.
    """
    if desired > current:
        if last_up is not None and now - last_up < up.cooldown_seconds:
            return current
        limit = _limit(up, current, events, now, growing=True)
        if current == 0:
            limit = max(limit, 1)
        return max(current, min(desired, limit))
    if desired < current:
        if last_down is not None and now - last_down < down.cooldown_seconds:
            return current
        limit = _limit(down, current, events, now, growing=False)
        return min(current, max(desired, limit))
    return current


def _limit(
    rules: ScalingRules,
    current: int,
    events: Sequence[tuple[float, int]],
    now: float,
    growing: bool,
) -> int:
    if rules.select_policy == "Disabled":
        return current
    proposals: list[int] = []
    for policy in rules.policies:
        changed = sum(
            delta for at, delta in events
            if at > now - policy.period_seconds and (delta > 0) == growing
        )
        start = current - changed  # `changed` is negative when shrinking
        if growing:
            if policy.type == "Pods":
                proposals.append(start + policy.value)
            else:
                proposals.append(math.ceil(start * (1 + policy.value / 100) - _EPSILON))
        else:
            if policy.type == "Pods":
                proposals.append(start - policy.value)
            else:
                proposals.append(math.floor(start * (1 - policy.value / 100) + _EPSILON))
    # "Max" picks the policy that allows the biggest change, "Min" the smallest.
    if growing:
        return max(proposals) if rules.select_policy == "Max" else min(proposals)
    return min(proposals) if rules.select_policy == "Max" else max(proposals)
