"""Many instances quiet at once (a partition, a stalled coordinator): decide() on a simulated
clock replaces them at a limited rate, or not at all, and keeps those that come back."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest

from boxer.controller.partition import Mode
from boxer.controller.policy import Outcome, Start, Stop, decide
from boxer.controller.signals import ControllerState, InstanceSignals, Signals
from boxer.controller.spec import Deployment, Placement
from boxer.controller.validate import parse_deployment

FN = Placement.FUNCTION


def deployment(instances: int = 20, partition: str = "") -> Deployment:
    return parse_deployment(textwrap.dedent(f"""\
        services:
          api:
            command: [srv]
            minInstances: {instances}
            maxInstances: {instances}
        """) + textwrap.dedent(partition), "test.yaml")


def inst(index: int, now: float, **fields: object) -> InstanceSignals:
    values: dict[str, object] = {
        "id": f"api-{index}.{index}", "name": f"api-{index}", "service": "api", "index": index,
        "placement": FN, "started_at": 0.0, "last_heard": now,
        "listening_ports": frozenset({80}),
    }
    values.update(fields)
    return InstanceSignals(**values)  # type: ignore[arg-type]


class Fleet:
    """`count` instances of `api`, booted; each tick reports the healthy ones as heard now,
    the quiet ones as quiet since `quiet_at`, and leaves out those decide() stopped (the
    runtime forgets an instance once its backend stop is done)."""

    def __init__(self, spec: Deployment, count: int) -> None:
        self.spec = spec
        self.state = ControllerState()
        self.tick(0.0)  # boot: asks for every instance; they report from the next tick on
        self.up = {index: inst(index, 0.0) for index in range(1, count + 1)}
        self.quiet: dict[int, float] = {}
        self.exited: dict[int, int] = {}
        self.stopped: list[tuple[float, str]] = []
        self.started: list[tuple[float, str]] = []

    def tick(self, now: float) -> Outcome:
        instances = tuple(self._report(index, signals, now)
                          for index, signals in getattr(self, "up", {}).items())
        outcome = decide(self.spec, Signals(instances), self.state, now)
        self.state = outcome.state
        for decision in outcome.decisions:
            if isinstance(decision, Stop):
                self.stopped.append((now, decision.reason))
                index = int(decision.instance.split(".")[0].rsplit("-", 1)[1])
                self.up.pop(index, None)
            elif isinstance(decision, Start) and hasattr(self, "up"):
                self.started.append((now, decision.reason))
                # The replacement comes up at once (its start time is not what is tested).
                self.up[decision.index] = inst(decision.index, now, id=decision.instance_id)
                self.quiet.pop(decision.index, None)
                self.exited.pop(decision.index, None)
        return outcome

    def _report(self, index: int, signals: InstanceSignals, now: float) -> InstanceSignals:
        if index in self.exited:
            return replace(signals, exited=True, exit_status=self.exited[index])
        if index in self.quiet:
            since = self.quiet[index]
            return replace(signals, last_heard=since, quiet_since=since)
        return replace(signals, last_heard=now)

    def go_quiet(self, indexes: range | list[int], at: float) -> None:
        self.quiet.update({index: at for index in indexes})

    def come_back(self, indexes: range | list[int]) -> None:
        for index in indexes:
            self.quiet.pop(index, None)

    def run(self, start: float, end: float, step: float = 0.25) -> list[Outcome]:
        outcomes = []
        now = start
        while now <= end + 1e-9:
            outcomes.append(self.tick(round(now, 6)))
            now += step
        return outcomes


def per_second(times: list[float]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for at in times:
        counts[int(at)] = counts.get(int(at), 0) + 1
    return counts


def test_a_single_quiet_instance_is_replaced_at_once() -> None:
    fleet = Fleet(deployment(), 20)
    fleet.go_quiet([7], at=9.2)
    outcome = fleet.tick(10.0)
    why = "agent quiet for 0.8 s (no heartbeat)"
    assert outcome.decisions == (
        Stop("api-7.7", why),
        Start("api", FN, f"replace api-7: {why}", "api-7.21", "api-7", 7),
    )
    assert outcome.partition.mode is Mode.NORMAL and outcome.partition.reason is None


def test_two_quiet_together_wait_out_the_window_then_go_at_once() -> None:
    fleet = Fleet(deployment(), 20)
    fleet.go_quiet([3, 4], at=9.2)
    watching = fleet.tick(10.0)
    assert watching.decisions == ()
    assert watching.partition.reason == (
        "2 of 20 instances (10 %) went quiet at once: watching 1 s from the first before"
        " replacing any, in case it is a partition")
    assert fleet.tick(10.75).decisions == ()
    # Two is fewer than minQuietInstances (3): after the window both go, in the same tick.
    assert [d.instance for d in fleet.tick(11.0).decisions if isinstance(d, Stop)] == \
        ["api-3.3", "api-4.4"]


def test_a_partition_of_80_percent_is_replaced_at_one_per_second() -> None:
    fleet = Fleet(deployment(), 20)
    fleet.go_quiet(range(1, 17), at=9.2)
    first = fleet.tick(10.0)
    assert first.decisions == () and first.partition.mode is Mode.WATCHING
    outcomes = fleet.run(10.25, 30.0)
    judged = outcomes[3]  # t=11: the window has passed
    assert judged.partition.mode is Mode.LIMITED
    assert judged.partition.reason == (
        "suspected partition: 16 of 20 instances (80 %) went quiet at once (threshold 55 %):"
        " replacing at most 1 per second; 15 kept for now")
    assert judged.decisions[0] == Stop(
        "api-1.1", "agent quiet for 1.8 s (no heartbeat); suspected partition (16 of 20 went"
        " quiet at once): at most 1 replaced per second")
    times = [t for t, _ in fleet.stopped]
    assert times == [float(t) for t in range(11, 27)]  # one a second, the first at once
    assert per_second(times) == {t: 1 for t in range(11, 27)}
    # Replaced in index order (all went quiet at the same time), each under its own name.
    assert [reason.split(":")[0] for _, reason in fleet.started] == \
        [f"replace api-{i}" for i in range(1, 17)]
    assert outcomes[-1].partition.mode is Mode.NORMAL  # all replaced; the episode is over


def test_everything_quiet_replaces_nothing_and_says_why() -> None:
    fleet = Fleet(deployment(), 20)
    fleet.go_quiet(range(1, 21), at=9.2)
    outcomes = fleet.run(10.0, 60.0)
    assert all(o.decisions == () for o in outcomes)
    last = outcomes[-1].partition
    assert (last.mode, last.quiet, last.held) == (Mode.HALTED, 20, 20)
    assert last.reason == (
        "suspected partition at the coordinator: 20 of 20 instances (100 %) went quiet at once"
        " (halt threshold 90 %): replacing none until some are heard again")


def test_instances_that_come_back_within_the_window_are_kept() -> None:
    fleet = Fleet(deployment(), 20)
    fleet.go_quiet(range(1, 17), at=9.2)
    assert fleet.tick(10.0).decisions == ()
    assert fleet.tick(10.5).decisions == ()
    fleet.come_back(range(1, 17))
    outcomes = fleet.run(10.75, 20.0)
    assert fleet.stopped == [] and fleet.started == []
    assert all(o.partition.mode is Mode.NORMAL for o in outcomes)
    assert fleet.state.partition.episode_since is None  # over: the next quiet one is alone


def test_instances_that_come_back_during_a_limited_replacement_are_kept() -> None:
    fleet = Fleet(deployment(), 20)
    fleet.go_quiet(range(1, 17), at=9.2)
    fleet.run(10.0, 12.0)  # t=11 and t=12: api-1 and api-2 replaced
    fleet.come_back(range(3, 17))
    outcomes = fleet.run(12.25, 20.0)
    assert [t for t, _ in fleet.stopped] == [11.0, 12.0]
    assert all(o.decisions == () for o in outcomes)
    assert sorted(fleet.up) == list(range(1, 21))


def test_coming_back_one_by_one_does_not_release_the_rest_at_once() -> None:
    # 12 of 20 quiet (60 %): limited. When 3 come back, 9 of 20 (45 %) is under the threshold,
    # but the episode stays a suspected partition: the rest still go one a second.
    fleet = Fleet(deployment(), 20)
    fleet.go_quiet(range(1, 13), at=9.2)
    fleet.run(10.0, 11.0)
    fleet.come_back([10, 11, 12])
    fleet.run(11.25, 30.0)
    assert per_second([t for t, _ in fleet.stopped]) == {t: 1 for t in range(11, 20)}


def test_halted_until_some_come_back_then_limited() -> None:
    fleet = Fleet(deployment(), 20)
    fleet.go_quiet(range(1, 21), at=9.2)
    fleet.run(10.0, 15.0)
    fleet.come_back(range(17, 21))  # 16 of 20 still quiet: under 90 %, a partition still
    outcomes = fleet.run(15.25, 40.0)
    assert outcomes[0].partition.mode is Mode.LIMITED
    assert per_second([t for t, _ in fleet.stopped]) == {t: 1 for t in range(15, 31)}


def test_exits_during_a_partition_are_replaced_at_once() -> None:
    fleet = Fleet(deployment(), 20)
    fleet.go_quiet(range(1, 17), at=9.2)
    fleet.run(10.0, 11.5)
    fleet.exited.update({17: 137, 18: 1})
    outcome = fleet.tick(11.75)
    assert outcome.decisions == (
        Stop("api-17.17", "exited with status 137"),
        Start("api", FN, "replace api-17: exited with status 137", "api-17.22", "api-17", 17),
        Stop("api-18.18", "exited with status 1"),
        Start("api", FN, "replace api-18: exited with status 1", "api-18.23", "api-18", 18),
    )
    assert outcome.partition.mode is Mode.LIMITED and outcome.partition.held == 15


def test_silent_instances_count_as_quiet() -> None:
    # The report backstop (no report for silent_after) is as uncertain as a quiet heartbeat.
    fleet = Fleet(deployment(), 20)
    fleet.tick(10.0)
    silent = tuple(inst(i, 11.0, last_heard=5.0 if i <= 16 else 11.0) for i in range(1, 21))
    watching = decide(fleet.spec, Signals(silent), fleet.state, 11.0)
    assert watching.decisions == () and watching.partition.mode is Mode.WATCHING
    outcome = decide(fleet.spec, Signals(silent), watching.state, 12.0)
    assert outcome.partition.mode is Mode.LIMITED
    assert [d.reason for d in outcome.decisions if isinstance(d, Stop)] == [
        ("silent for 7.0 s (limit 1 s); suspected partition (16 of 20 went quiet at once): at"
         " most 1 replaced per second")]


def test_rate_and_thresholds_come_from_the_file() -> None:
    spec = deployment(20, """\
        partition:
          windowSeconds: 0
          quietThresholdPercentage: 30
          replacementsPerSecond: 4
          haltThresholdPercentage: 100
        """)
    fleet = Fleet(spec, 20)
    fleet.go_quiet(range(1, 9), at=9.2)  # 40 %: a partition at 30 %
    fleet.run(10.0, 12.0)
    # No window: judged at once; a full bucket of 4, then 4 a second (1 a tick of 0.25 s).
    assert per_second([t for t, _ in fleet.stopped]) == {10: 7, 11: 1}


def test_a_zero_rate_replaces_none_while_a_partition_is_suspected() -> None:
    fleet = Fleet(deployment(20, "partition: {replacementsPerSecond: 0}\n"), 20)
    fleet.go_quiet(range(1, 17), at=9.2)
    outcomes = fleet.run(10.0, 30.0)
    assert fleet.stopped == []
    assert outcomes[-1].partition.reason is not None
    assert "replacing none (replacementsPerSecond 0)" in outcomes[-1].partition.reason


def test_small_deployments_are_never_a_partition() -> None:
    # 2 of 2 quiet: under minQuietInstances (3), so both are replaced once the window passed.
    fleet = Fleet(deployment(2), 2)
    fleet.go_quiet([1, 2], at=9.2)
    fleet.run(10.0, 11.0)
    assert [t for t, _ in fleet.stopped] == [11.0, 11.0]


@pytest.mark.parametrize("count", [3, 5])
def test_replacements_fill_their_own_slots(count: int) -> None:
    # A replacement takes its predecessor's slot: the deployment stays 20 slots, never 20 + n.
    fleet = Fleet(deployment(), 20)
    fleet.go_quiet(range(1, 17), at=9.2)
    outcomes = fleet.run(10.0, 10.0 + count)
    assert {o.partition.instances for o in outcomes} == {20}


def test_an_agent_back_on_a_new_session_is_heard_again() -> None:
    # After a partition the agent's link reconnects and re-registers: the coordinator ends the
    # old session (InstanceDown) and announces the new one (InstanceUp). The book must then
    # count it as heard, or decide() would replace an instance that came back.
    from boxer.controller.book import Book
    from boxer.nat_traversal import messages as m

    spec = deployment(20)
    book = Book(spec)
    start = Start("api", FN, "scale up 0 -> 1", "api-1.1", "api-1", 1)
    record = book.launched(start, "00112233aabbccdd", now=0.0)
    book.on_message(m.InstanceUp(name="api-1", service="api", addr="100.64.0.2",
                                 instance=record.agent_id), 1.0)
    book.on_message(m.InstanceQuiet(name="api-1", service="api", instance=record.agent_id,
                                    quiet=True, silent=0.8), 2.0)
    assert book.signals(2.0).instances[0].quiet_since == pytest.approx(1.2)
    book.on_message(m.InstanceDown(name="api-1", service="api", instance=record.agent_id,
                                   reason="re-registered on a new connection"), 20.0)
    book.on_message(m.InstanceUp(name="api-1", service="api", addr="100.64.0.2",
                                 instance=record.agent_id), 20.0)
    back = book.signals(20.5).instances[0]
    assert (back.quiet_since, back.last_heard) == (None, 20.5)


def test_the_runtime_shows_the_judgement_in_metrics_log_and_recent_failures(
        caplog: pytest.LogCaptureFixture) -> None:
    from boxer.controller.partition import NORMAL, Verdict
    from boxer.controller.runtime import ControllerRuntime

    runtime = ControllerRuntime(deployment(), backend=object(),  # type: ignore[arg-type]
                                coordinator=("127.0.0.1", 1), secret=b"s", wall=lambda: 100.0)
    halted = Verdict(Mode.HALTED, 20, 20, 20, reason="suspected partition at the coordinator")
    with caplog.at_level("INFO", logger="boxer.controller.runtime"):
        runtime._note_partition(halted)
        runtime._note_partition(replace(halted, quiet=19, lost=19))  # same mode: said once
        runtime._note_partition(NORMAL)
    text = runtime.metrics.render()
    assert 'boxer_controller_partition{state="halted"} 0' in text
    assert 'boxer_controller_partition{state="normal"} 1' in text
    assert "boxer_controller_partitions_total 1" in text
    assert "boxer_controller_quiet_instances_held 0" in text
    assert [f["reason"] for f in runtime.failures] == ["suspected partition at the coordinator"]
    assert [r.getMessage() for r in caplog.records] == [
        "suspected partition at the coordinator",
        "quiet instances: replaced at once again (was halted)"]


def test_boxer_status_says_when_the_guard_holds_replacements() -> None:
    import asyncio

    from boxer.cli.status_view import status_text
    from boxer.controller.partition import Verdict
    from boxer.controller.runtime import ControllerRuntime

    async def texts() -> tuple[str, str]:
        runtime = ControllerRuntime(deployment(), backend=object(),  # type: ignore[arg-type]
                                    coordinator=("127.0.0.1", 1), secret=b"s", wall=lambda: 100.0)
        before = status_text({**runtime.status(), "name": "t"}, wide=False)
        runtime._note_partition(Verdict(Mode.HALTED, 20, 20, 20,
                                        reason="suspected partition at the coordinator"))
        return before, status_text({**runtime.status(), "name": "t"}, wide=False)

    before, after = asyncio.run(texts())
    assert "partition guard" not in before
    assert ("partition guard: halted, 20 of 20 instances quiet, 20 kept for now: "
            "suspected partition at the coordinator") in after
