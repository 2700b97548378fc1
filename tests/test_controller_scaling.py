"""The autoscaling arithmetic: Knative KPA windows, HPA stabilization and rate limits."""

from __future__ import annotations

import pytest

from boxer.controller.scaling import kpa_recommendation, rate_limit, stabilize
from boxer.controller.spec import AutoscalePolicy, ScalingRules


def policy(**fields: object) -> AutoscalePolicy:
    return AutoscalePolicy.model_validate({"target": 10, **fields})


def rules(stabilization: float, *policies: tuple[str, int, float], select: str = "Max",
          cooldown: float = 0) -> ScalingRules:
    return ScalingRules.model_validate({
        "stabilizationWindowSeconds": stabilization,
        "selectPolicy": select,
        "cooldownSeconds": cooldown,
        "policies": [{"type": t, "value": v, "periodSeconds": p} for t, v, p in policies],
    })


HPA_UP = rules(0, ("Pods", 4, 15), ("Percent", 100, 15))
HPA_DOWN = rules(300, ("Percent", 100, 15))


class TestKpa:
    def test_stable_mode_follows_the_stable_average(self) -> None:
        samples = [(float(t), 30.0) for t in range(1, 61)]
        result = kpa_recommendation(policy(), samples, ready=3, current=3, panic_since=None,
                                    panic_peak=0, now=60.0)
        assert (result.desired, result.stable_average, result.panic_since) == (3, 30.0, None)

    def test_exact_multiple_of_target_does_not_round_up(self) -> None:
        samples = [(1.0, 0.1 + 0.2 + 19.7)]  # 20.000000000000004 in floats
        result = kpa_recommendation(policy(), samples, 2, 2, None, 0, 1.0)
        assert result.desired == 2

    def test_burst_enters_panic_and_follows_panic_window(self) -> None:
        # 54 s of 10 connections, then 6 s of 100: stable avg 19 -> 2, panic avg 100 -> 10.
        samples = [(float(t), 10.0) for t in range(1, 55)] + [
            (float(t), 100.0) for t in range(55, 61)
        ]
        result = kpa_recommendation(policy(), samples, 1, 1, None, 0, 60.0)
        assert result.stable_average == pytest.approx(19.0)
        assert (result.desired, result.panic_since, result.panic_peak) == (10, 60.0, 10)

    def test_just_below_threshold_is_no_panic(self) -> None:
        # panic wants 3 of 2 ready = 150 % < 200 %
        samples = [(float(t), 30.0) for t in range(55, 61)]
        result = kpa_recommendation(policy(), samples, 2, 2, None, 0, 60.0)
        assert (result.desired, result.panic_since) == (3, None)

    def test_panic_never_scales_down_and_ends_one_stable_window_after_last_burst(self) -> None:
        quiet = [(float(t), 10.0) for t in range(100, 161)]
        held = kpa_recommendation(policy(), quiet, 10, 10, panic_since=100.0, panic_peak=10,
                                  now=159.0)
        assert (held.desired, held.panic_since) == (10, 100.0)
        ended = kpa_recommendation(policy(), quiet, 10, 10, panic_since=100.0, panic_peak=10,
                                   now=160.0)
        assert (ended.desired, ended.panic_since, ended.panic_peak) == (1, None, 0)


class TestStabilize:
    def test_scale_down_takes_highest_recommendation_in_window(self) -> None:
        recs = [(0.0, 9), (100.0, 5), (200.0, 2), (300.0, 1)]
        assert stabilize(recs, current=10, up_window=0, down_window=300, now=300.0) == 9
        assert stabilize(recs, current=10, up_window=0, down_window=300, now=301.0) == 5

    def test_scale_up_takes_lowest_recommendation_in_window(self) -> None:
        recs = [(0.0, 2), (10.0, 8), (20.0, 6)]
        assert stabilize(recs, current=1, up_window=30, down_window=0, now=20.0) == 2
        assert stabilize(recs, current=1, up_window=15, down_window=0, now=20.0) == 6

    def test_no_windows_returns_newest(self) -> None:
        assert stabilize([(0.0, 9), (1.0, 3)], current=5, up_window=0, down_window=0,
                         now=1.0) == 3


class TestRateLimit:
    def test_hpa_default_up_is_max_of_four_pods_and_double(self) -> None:
        assert rate_limit(100, 2, [], HPA_UP, HPA_DOWN, None, None, 0.0) == 6  # +4 > x2
        assert rate_limit(100, 10, [], HPA_UP, HPA_DOWN, None, None, 0.0) == 20  # x2 > +4

    def test_changes_within_period_count_against_the_limit(self) -> None:
        # 2 -> 6 at t=0; at t=10 the period started at 2 again: limit 6; at t=15.5 it is 12.
        events = [(0.0, 4)]
        assert rate_limit(100, 6, events, HPA_UP, HPA_DOWN, 0.0, None, 10.0) == 6
        assert rate_limit(100, 6, events, HPA_UP, HPA_DOWN, 0.0, None, 15.5) == 12

    def test_select_policy_min_and_disabled(self) -> None:
        up = rules(0, ("Pods", 4, 15), ("Percent", 100, 15), select="Min")
        assert rate_limit(100, 10, [], up, HPA_DOWN, None, None, 0.0) == 14
        off = rules(0, ("Pods", 4, 15), select="Disabled")
        assert rate_limit(100, 10, [], off, HPA_DOWN, None, None, 0.0) == 10

    def test_scale_down_percent_and_pods(self) -> None:
        down = rules(0, ("Percent", 50, 60), ("Pods", 1, 60))
        # Max picks the bigger change: 50 % of 9 -> floor(4.5) = 4
        assert rate_limit(0, 9, [], HPA_UP, down, None, None, 0.0) == 4
        # after removing 5 in this period the period started at 9 again
        assert rate_limit(0, 4, [(0.0, -5)], HPA_UP, down, None, 0.0, 30.0) == 4
        down_min = rules(0, ("Percent", 50, 60), ("Pods", 1, 60), select="Min")
        assert rate_limit(0, 9, [], HPA_UP, down_min, None, None, 0.0) == 8

    def test_percent_only_still_leaves_zero(self) -> None:
        up = rules(0, ("Percent", 100, 15))
        assert rate_limit(5, 0, [], up, HPA_DOWN, None, None, 0.0) == 1

    def test_cooldowns_hold_each_direction(self) -> None:
        up = rules(0, ("Pods", 4, 1), cooldown=10)
        down = rules(0, ("Pods", 4, 1), cooldown=20)
        assert rate_limit(8, 4, [], up, down, 0.0, None, 9.9) == 4
        assert rate_limit(8, 4, [], up, down, 0.0, None, 10.0) == 8
        assert rate_limit(0, 4, [], up, down, None, 0.0, 19.0) == 4
        assert rate_limit(0, 4, [], up, down, None, 0.0, 20.0) == 0
