"""Crash-loop back-off in decide(), on a simulated clock (issue 13).

A small world plays the instances: each one the controller starts registers START_S later and
exits with status 3 after running `run_for` seconds; an instance told to stop is gone at the
next tick. Times and decisions are exact.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from boxer.controller.policy import Failure, Start, decide
from boxer.controller.signals import ControllerState, InstanceSignals, PendingConnect, Signals
from boxer.controller.spec import Placement, RestartBackoff
from boxer.controller.validate import parse_deployment

START_S = 0.5  # an instance here starts in about a second; half of it to registration
TICK = 0.125  # (and every duration here) exact in binary: times compare exactly

SERVICE = """\
    services:
      crashy:
        command: [sh, -c, "exit 3"]
        {extra}
    """


def spec(extra: str = ""):
    return parse_deployment(textwrap.dedent(SERVICE.format(extra=extra)), "test.yaml")


@dataclass
class Running:
    start: Start
    at: float
    run_for: float


class World:
    def __init__(self, deployment, run_for: Callable[[Start, int], float]) -> None:
        self.deployment = deployment
        self.run_for = run_for
        self.state = ControllerState()
        self.running: dict[str, Running] = {}
        self.starts: list[tuple[float, Start]] = []
        self.failures: list[tuple[float, Failure]] = []

    def signals(self, now: float) -> Signals:
        out = []
        for r in self.running.values():
            if now < r.at + START_S:
                continue
            ended = now >= r.at + START_S + r.run_for
            out.append(InstanceSignals(
                id=r.start.instance_id, name=r.start.name, service=r.start.service, index=r.start.index,
                placement=r.start.placement, started_at=r.at, last_heard=now,
                listening_ports=frozenset() if ended else frozenset({80}),
                exited=ended, exit_status=3 if ended else None))
        return Signals(tuple(out))

    def tick(self, now: float, pending: tuple[PendingConnect, ...] = ()) -> None:
        signals = self.signals(now)
        outcome = decide(self.deployment, Signals(signals.instances, pending), self.state, now)
        self.state = outcome.state
        self.failures += [(now, f) for f in outcome.failures]
        for decision in outcome.decisions:
            if isinstance(decision, Start):
                self.starts.append((now, decision))
                self.running[decision.instance_id] = Running(decision, now, self.run_for(decision, len(self.starts)))
            else:
                self.running.pop(decision.instance, None)

    def run(self, until: float, since: float = 0.0) -> None:
        steps = round((until - since) / TICK)
        for i in range(steps + 1):
            self.tick(round(since + i * TICK, 3))


def test_a_crash_loop_waits_1_2_4_8_16_s_between_starts() -> None:
    world = World(spec(), lambda start, n: 0.25)
    world.run(70.0)
    times = [t for t, _ in world.starts]
    # Each instance fails 0.75 s after its start (0.5 to register, 0.25 running); the first
    # failure is replaced at once, then the delay doubles from initialDelaySeconds (1 s).
    failed = [t + 0.75 for t in times]
    gaps = [b - a for a, b in zip(failed, times[1:], strict=False)]
    assert gaps == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert len([t for t in times if t < 30]) == 6  # was a new launch every tick: ~50 a second
    assert [f.retry_in for _, f in world.failures][:8] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert [f.restarts for _, f in world.failures][:4] == [1, 1, 2, 3]  # of the slot, so far
    assert all(f.exit_status == 3 and f.reason == "exited with status 3" for _, f in world.failures)
    assert all(s.index == 1 and s.name == "crashy-1" for _, s in world.starts)
    assert world.starts[2][1].reason == "restart crashy-1 after a 1 s back-off (exited with status 3)"


def test_the_delay_is_capped_at_max_delay() -> None:
    world = World(spec("restartBackoff: {initialDelaySeconds: 0.5, maxDelaySeconds: 3}"), lambda s, n: 0.0)
    world.run(40.0)
    assert {f.retry_in for _, f in world.failures[5:]} == {3.0}


def test_while_a_slot_waits_nothing_else_starts_it() -> None:
    """A fixed-size service counts the waiting slot as its instance (or _scale would start one
    at once as missing), and a held connect (scale from zero) does not bypass the back-off."""
    world = World(spec("restartBackoff: {initialDelaySeconds: 10}"), lambda s, n: 0.0)
    world.run(2.0)  # started at 0, failed at 0.5 (replaced at once), failed again at 1.0
    assert len(world.starts) == 2
    slot = world.state.service("crashy").backoff[1]
    assert slot.waiting and slot.retry_at == 11.0 and slot.exit_status == 3
    for i in range(36):
        world.tick(2.0 + i * 0.25, pending=(PendingConnect("crashy", 1.5),))
    assert len(world.starts) == 2
    world.run(11.5, since=11.0)
    assert len(world.starts) == 3 and world.starts[2][0] == 11.0


def test_an_instance_that_ran_long_enough_resets_its_slot() -> None:
    # Three quick failures, then one that runs 40 s (> resetAfterSeconds 30), then quick again.
    durations = {1: 0.0, 2: 0.0, 3: 0.0, 4: 40.0}
    world = World(spec(), lambda s, n: durations.get(n, 0.0))
    world.run(3.0)  # failures at 0.5 (at once), 1.0 (1 s), 2.5 (2 s): started again at 4.5
    assert world.state.service("crashy").backoff[1].failures == 3
    world.run(40.0, since=3.125)
    assert world.state.service("crashy").backoff[1].failures == 0  # ran 30 s: healthy
    world.run(46.875, since=40.125)
    slot = world.state.service("crashy").backoff[1]
    # Its failures were forgotten (the restart count is kept), so the failure after the long
    # run (at 45.0) is replaced at once, and the one after that waits 1 s again.
    assert [(t, f.retry_in) for t, f in world.failures] == [
        (0.5, 0.0), (1.0, 1.0), (2.5, 2.0), (45.0, 0.0), (45.5, 1.0)]
    assert slot.restarts == 5 and slot.failures == 2


def test_backoff_delays_and_validation() -> None:
    backoff = RestartBackoff()
    assert [backoff.delay(n) for n in range(1, 10)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert RestartBackoff.model_validate({"initialDelaySeconds": 2, "maxDelaySeconds": 7}).delay(10**6) == 7
    from boxer.controller.errors import DeploymentFileError

    with pytest.raises(DeploymentFileError, match="maxDelaySeconds .2. must be >= initialDelaySeconds .5."):
        spec("restartBackoff: {initialDelaySeconds: 5, maxDelaySeconds: 2}")
    with pytest.raises(DeploymentFileError, match="restartBackoff.initialDelaySeconds"):
        spec("restartBackoff: {initialDelaySeconds: 0}")
    with pytest.raises(DeploymentFileError, match="did you mean 'maxDelaySeconds'"):
        spec("restartBackoff: {maxDelay: 5}")


def test_a_placement_survives_the_wait() -> None:
    world = World(spec("placement: vm"), lambda s, n: 0.0)
    world.run(5.0)
    assert {s.placement for _, s in world.starts} == {Placement.VM}


# -- the runtime: what status, the failures list, the metrics and the coordinator get ----------

class CrashingBackend:
    """Every instance writes two lines to its log and exits with status 3 at once (the local
    backend's way: details carry the log, its offset and the exit status)."""

    name = "crashing"

    def __init__(self, log_dir) -> None:
        self.log_dir = log_dir
        self.launches = 0

    async def launch(self, spec):
        from boxer.backends.base import InstanceHandle

        self.launches += 1
        path = self.log_dir / f"{spec.name}.log"
        offset = path.stat().st_size if path.exists() else 0
        with path.open("a") as log:
            log.write(f"starting attempt {self.launches}\nfatal: no config at /etc/crashy.conf\n")
        handle = InstanceHandle(spec=spec, backend=self.name,
                                details={"log": str(path), "log_offset": offset, "exit_status": 3})
        handle.mark_stopped("exited")
        return handle

    async def stop(self, handle) -> None:
        pass


def test_the_runtime_shows_the_backoff_and_refuses_connects_to_a_crash_looping_service(tmp_path) -> None:
    import asyncio

    from boxer.cli.status_view import status_text
    from boxer.controller.runtime import ControllerRuntime
    from boxer.nat_traversal import messages as m

    class Session:
        def __init__(self) -> None:
            self.sent: list[m.Message] = []

        async def send(self, message: m.Message) -> None:
            self.sent.append(message)

        def close(self) -> None:
            pass

    async def scenario() -> None:
        deployment = spec("restartBackoff: {initialDelaySeconds: 4}")
        backend = CrashingBackend(tmp_path)
        rt = ControllerRuntime(deployment, backend, coordinator=("127.0.0.1", 1), secret=b"x" * 32)
        rt._session = session = Session()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for step in range(12):  # 1.2 s of ticks
            await rt.tick(t0 + step * 0.1)
            await asyncio.sleep(0.01)  # launches and sends run as tasks
        assert backend.launches == 2  # the first failure is replaced at once, then 4 s back-off
        status = rt.status()
        [row] = [r for r in status["instances"] if r["state"] == "backoff"]
        assert row["name"] == "crashy-1" and row["restarts"] == 1 and row["exit_status"] == 3
        assert row["error"] == "exited with status 3"
        assert row["last_log"] == ["starting attempt 2", "fatal: no config at /etc/crashy.conf"]
        assert 2.5 < row["next_try_in"] <= 4.5  # (ticks ran on a clock ahead of the loop)
        failures = status["failures"]
        assert [(f["name"], f["exit_status"], f["then"]) for f in failures] == [
            ("crashy-1", 3, "started again at once"),
            ("crashy-1", 3, "crash loop: started again in 4 s (back-off)")]
        text = status_text({**status, "name": "t", "lab": "l"}, wide=False)
        assert "backoff (" in text and "RESTARTS" in text
        assert "last log line: fatal: no config at /etc/crashy.conf" in text
        metrics = rt.metrics.render()
        assert 'boxer_controller_instance_failures_total{service="crashy"} 2' in metrics
        assert 'boxer_controller_restarts_total{service="crashy"} 1' in metrics
        assert 'boxer_controller_backoff_slots{service="crashy"} 1' in metrics
        # Failing: the coordinator is told to refuse its connects at once (hold 0).
        assert m.Declare(services={"crashy": 0.0}) in session.sent
        await rt.shutdown()

    asyncio.run(scenario())
