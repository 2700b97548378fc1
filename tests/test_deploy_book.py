"""The controller's run-time mapping, without sockets or processes: coordinator messages ->
Signals -> decide() -> actions, and the runtime applying them to a fake backend."""

from __future__ import annotations

import asyncio

import pytest

from boxer.backends.base import InstanceHandle, InstanceSpec
from boxer.controller.book import Book, Launch, Tell, actions_for
from boxer.controller.policy import Drain, Start, Stop, decide
from boxer.controller.runtime import INSTANCE_ID_ENV, ControllerRuntime
from boxer.controller.signals import ControllerState
from boxer.controller.spec import Deployment, Placement
from boxer.nat_traversal import messages as m

SPEC = {
    "services": {
        "api": {
            "command": ["srv", "--name", "{name}"],
            "placement": "function",
            "minInstances": 0,
            "maxInstances": 4,
            "maxLifetimeSeconds": 120,
            "renewalMarginSeconds": 10,
            "autoscale": {"target": 2, "scaleToZeroGracePeriodSeconds": 5,
                          "scaleFromZeroTimeoutSeconds": 7},
        },
        "web": {"command": ["nginx"], "placement": "vm", "minInstances": 1},
    }
}


def deployment() -> Deployment:
    return Deployment.model_validate(SPEC)


def report(**over) -> dict:
    base = {"active": 0, "accepted": 0, "connected": 0, "cpu": 1.0, "rss": 1000,
            "listening": [8080], "idle": 0.0, "direct": 0, "relayed": 0, "draining": False,
            "lifetime_left": None, "exited": None}
    return {**base, **over}


def started(book: Book, service: str = "api", index: int = 1, agent: str = "a1" * 4,
            now: float = 0.0, placement: Placement = Placement.FUNCTION):
    start = Start(service, placement, "test", f"{service}-{index}.{index}", f"{service}-{index}",
                  index)
    return book.launched(start, agent, now)


def test_an_instance_counts_once_registered_and_is_ready_once_it_listens():
    book = Book(deployment())
    rec = started(book)
    assert book.signals(1.0).instances == ()  # decide() keeps it as `starting`
    book.on_message(m.InstanceUp(name="api-1", service="api", addr="100.64.0.2",
                                 instance=rec.agent_id), 1.0)
    (sig,) = book.signals(1.2).instances
    assert (sig.id, sig.ready, sig.last_heard) == ("api-1.1", False, 1.2)  # no report yet: alive
    book.on_message(m.InstanceReport(name="api-1", service="api", instance=rec.agent_id,
                                     report=report(active=3, accepted=10, lifetime_left=100.0)),
                    2.0)
    (sig,) = book.signals(2.5).instances
    assert sig.ready and sig.active_connections == 3 and sig.last_heard == 2.0
    assert sig.lifetime_left == pytest.approx(99.5)  # aged since the report
    assert book.take_ready_latencies() == [("api-1", 2.0)]
    book.on_message(m.InstanceReport(name="api-1", service="api", instance=rec.agent_id,
                                     report=report(accepted=30)), 3.0)
    assert book.signals(3.0).instances[0].accepts_per_second == pytest.approx(20.0)


def test_an_exit_seen_by_the_backend_or_in_the_last_report_is_an_exit():
    book = Book(deployment())
    rec = started(book)
    book.exited(rec.id, 137, 5.0)  # before it ever registered: still must be replaced
    (sig,) = book.signals(5.0).instances
    assert (sig.exited, sig.exit_status, sig.ready) == (True, 137, False)
    other = started(book, index=2, agent="b2" * 4)
    book.on_message(m.InstanceReport(name="api-2", service="api", instance=other.agent_id,
                                     report=report(exited=0)), 6.0)
    sig2 = next(s for s in book.signals(6.0).instances if s.id == other.id)
    assert (sig2.exited, sig2.exit_status) == (True, 0)


def test_instance_down_makes_it_silent_and_strangers_are_ignored():
    book = Book(deployment())
    rec = started(book)
    book.on_message(m.InstanceUp(name="api-1", service="api", addr="100.64.0.2",
                                 instance=rec.agent_id), 1.0)
    book.on_message(m.InstanceUp(name="api-9", service="api", addr="100.64.0.9",
                                 instance="ffffffff"), 1.0)  # started by hand: not ours
    book.on_message(m.InstanceDown(name="api-1", service="api", instance=rec.agent_id,
                                   reason="bye"), 1.5)
    (sig,) = book.signals(1.5).instances
    assert 1.5 - sig.last_heard > 2.5


def test_demand_is_pending_until_an_instance_listens_or_the_hold_time_passes():
    book = Book(deployment())
    book.on_message(m.Demand(service="api", port=8080, waiting=1), 10.0)
    book.on_message(m.Demand(service="nope", port=80, waiting=1), 10.0)  # undeclared: ignored
    (pending,) = book.signals(10.1).pending_connects
    assert (pending.service, pending.since) == ("api", 10.0)
    assert book.signals(17.5).pending_connects == ()  # scaleFromZeroTimeoutSeconds 7
    book.on_message(m.Demand(service="api", port=8080, waiting=2), 20.0)
    rec = started(book, now=20.0)
    book.on_message(m.InstanceReport(name="api-1", service="api", instance=rec.agent_id,
                                     report=report()), 20.5)
    assert book.signals(20.5).pending_connects == ()


def test_scale_from_zero_end_to_end_through_decide_gives_a_launch_with_the_rendered_spec():
    dep = deployment()
    book = Book(dep)
    book.on_message(m.Demand(service="api", port=8080, waiting=1), 0.0)
    outcome = decide(dep, book.signals(0.0), ControllerState(), 0.0)
    starts = [d for d in outcome.decisions if isinstance(d, Start)]
    assert {s.service for s in starts} == {"api", "web"}
    actions = actions_for(outcome.decisions, dep, book, drain_grace=30,
                          agent_ids=iter(["0123456789abcdef", "fedcba9876543210"]))
    api = next(a for a in actions if isinstance(a, Launch) and a.start.service == "api")
    assert api.command == ("srv", "--name", "api-1")
    assert api.env["BOXER_INSTANCE_NAME"] == "api-1"
    assert api.max_lifetime == 120  # function placement: the lifetime cap goes to the agent
    web = next(a for a in actions if isinstance(a, Launch) and a.start.service == "web")
    assert web.max_lifetime is None and web.start.placement is Placement.VM


def test_drain_and_stop_decisions_address_the_agent_id_and_unknown_ones_are_dropped():
    dep = deployment()
    book = Book(dep)
    rec = started(book, agent="deadbeef")
    actions = actions_for([Drain(rec.id, "scale down"), Stop(rec.id, "drained"),
                           Stop("api-7.7", "gone already")], dep, book, drain_grace=12)
    assert actions == [Tell(rec.id, m.Drain(instance="deadbeef", grace=12.0)),
                       Tell(rec.id, m.Stop(instance="deadbeef", reason="drained"))]


# -- the runtime against a fake backend and a fake coordinator session ------------------------

class FakeBackend:
    name = "fake"

    def __init__(self, fail: set[str] | None = None) -> None:
        self.launched: list[InstanceSpec] = []
        self.stopped: list[str] = []
        self.fail = fail or set()

    async def launch(self, spec: InstanceSpec) -> InstanceHandle:
        if spec.name in self.fail:
            raise RuntimeError("no capacity")
        self.launched.append(spec)
        return InstanceHandle(spec=spec, backend=self.name, details={"host": "h1", "pid": 42})

    async def stop(self, handle: InstanceHandle) -> None:
        self.stopped.append(handle.spec.name)
        handle.mark_stopped()


class FakeSession:
    def __init__(self) -> None:
        self.sent: list[m.Message] = []

    async def send(self, message: m.Message) -> None:
        self.sent.append(message)

    def close(self) -> None:
        pass


def runtime(backend: FakeBackend) -> tuple[ControllerRuntime, FakeSession]:
    rt = ControllerRuntime(deployment(), backend, coordinator=("127.0.0.1", 1), secret=b"x" * 32)
    session = FakeSession()
    rt._session = session
    return rt, session


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_runtime_launches_with_the_agent_id_replaces_an_exit_and_stops_everything_at_the_end():
    async def scenario() -> None:
        backend = FakeBackend()
        rt, session = runtime(backend)
        await rt.tick(0.0)
        await settle()
        (web,) = backend.launched  # api is at zero until a connect asks for it
        agent_id = web.env[INSTANCE_ID_ENV]
        assert (web.name, web.placement.value) == ("web-1", "vm")
        rt.book.on_message(m.InstanceReport(name="web-1", service="web", instance=agent_id,
                                            report=report(listening=[80])), 0.5)
        await rt.tick(0.5)
        assert len(backend.launched) == 1
        # The process ends: the handle says so, the next tick stops and replaces it.
        rt.handles["web-1.1"].details["exit_status"] = 1
        rt.handles["web-1.1"].mark_failed("exited with status 1")
        await rt.tick(1.0)
        await settle()
        assert [s.name for s in backend.launched] == ["web-1", "web-1"]
        assert backend.launched[1].env[INSTANCE_ID_ENV] != agent_id
        assert "web-1.1" not in rt.book.records  # reaped and forgotten
        assert not any(isinstance(x, m.Stop) for x in session.sent)  # it had exited already
        status = rt.status()
        assert [(i["name"], i["state"], i["host"]) for i in status["instances"]] == \
            [("web-1", "starting", "h1")]
        await rt.shutdown()
        assert backend.stopped[-1] == "web-1"
        assert any(isinstance(x, m.Stop) for x in session.sent)

    asyncio.run(scenario())


def test_runtime_drains_through_the_coordinator_and_counts_decisions():
    async def scenario() -> None:
        backend = FakeBackend()
        rt, session = runtime(backend)
        rt.book.on_message(m.Demand(service="api", port=8080, waiting=1), 0.0)
        await rt.tick(0.0)
        await settle()
        api = next(s for s in backend.launched if s.service == "api")
        rt.book.on_message(m.InstanceReport(name="api-1", service="api",
                                            instance=api.env[INSTANCE_ID_ENV],
                                            report=report(lifetime_left=5.0)), 0.2)
        await rt.tick(0.25)  # lifetime 5 s < renewal margin 10 s: a successor is started
        await settle()
        assert [s.name for s in backend.launched if s.service == "api"] == ["api-1", "api-2"]
        succ = backend.launched[-1]
        rt.book.on_message(m.InstanceReport(name="api-2", service="api",
                                            instance=succ.env[INSTANCE_ID_ENV],
                                            report=report()), 0.4)
        await rt.tick(0.5)  # successor ready: the old one is drained through the coordinator
        await settle()
        drains = [x for x in session.sent if isinstance(x, m.Drain)]
        assert [d.instance for d in drains] == [api.env[INSTANCE_ID_ENV]]
        text = rt.metrics.render()
        assert 'boxer_controller_decisions_total{kind="drain",service="api"} 1' in text
        assert 'boxer_controller_instances{placement="function",service="api",state="ready"} 1' \
            in text
        await rt.shutdown()

    asyncio.run(scenario())


def test_a_failed_launch_counts_as_an_exit_and_is_retried():
    async def scenario() -> None:
        backend = FakeBackend(fail={"web-1"})
        rt, _ = runtime(backend)
        await rt.tick(0.0)
        await settle()
        assert rt.book.records["web-1.1"].state == "exited"
        backend.fail.clear()
        await rt.tick(0.25)
        await settle()
        assert [s.name for s in backend.launched] == ["web-1"]
        assert 'boxer_controller_launch_failures_total{service="web"} 1' in rt.metrics.render()
        await rt.shutdown()

    asyncio.run(scenario())


# -- heartbeats: the coordinator's InstanceQuiet ------------------------------------------------

def test_quiet_from_the_coordinator_reaches_decide_and_being_heard_again_clears_it():
    book = Book(deployment())
    rec = started(book)
    book.on_message(m.InstanceReport(name="api-1", service="api", instance=rec.agent_id,
                                     report=report()), 1.0)
    book.on_message(m.InstanceQuiet(name="api-1", service="api", instance=rec.agent_id,
                                    quiet=True, silent=0.8), 1.9)
    (sig,) = book.signals(2.0).instances
    assert sig.quiet_since == pytest.approx(1.1) and sig.last_heard == 1.0
    book.on_message(m.InstanceQuiet(name="api-1", service="api", instance=rec.agent_id,
                                    quiet=False, silent=1.5), 2.6)
    (sig,) = book.signals(2.6).instances
    assert sig.quiet_since is None and sig.last_heard == 2.6
    # A report is heard from the agent too; an exited instance is never "quiet".
    book.on_message(m.InstanceQuiet(name="api-1", service="api", instance=rec.agent_id,
                                    quiet=True, silent=0.9), 4.0)
    book.on_message(m.InstanceReport(name="api-1", service="api", instance=rec.agent_id,
                                     report=report()), 4.1)
    assert book.signals(4.1).instances[0].quiet_since is None
    book.on_message(m.InstanceQuiet(name="api-1", service="api", instance=rec.agent_id,
                                    quiet=True, silent=0.9), 5.0)
    book.exited(rec.id, 137, 5.1)
    assert book.signals(5.2).instances[0].quiet_since is None


def test_a_snapshot_after_reconnecting_carries_quiet():
    book = Book(deployment())
    rec = started(book)
    entry = {"name": "api-1", "service": "api", "addr": "100.64.0.2", "instance": rec.agent_id,
             "nat": "eim", "draining": False, "quiet": True, "report": report()}
    book.on_message(m.Snapshot(instances=[entry], services={}), 3.0)
    assert book.signals(3.0).instances[0].quiet_since == 3.0
    book.on_message(m.Snapshot(instances=[{**entry, "quiet": False}], services={}), 4.0)
    assert book.signals(4.0).instances[0].quiet_since is None


def test_a_quiet_instance_wakes_the_runtime_and_is_replaced_before_the_next_tick(monkeypatch):
    """The loop ticks every 5 s here: only the wake on InstanceQuiet can act within 1 s."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        backend = FakeBackend()
        rt = ControllerRuntime(deployment(), backend, coordinator=("127.0.0.1", 1),
                               secret=b"x" * 32, tick=5.0)
        inbox: asyncio.Queue[m.Message] = asyncio.Queue()

        class Framed:
            def __init__(self) -> None:
                self.sent: list[m.Message] = []

            async def send(self, message: m.Message) -> None:
                self.sent.append(message)

            async def receive(self) -> m.Message:
                return await inbox.get()

            async def receive_skipping(self, skipped) -> m.Message:
                return await inbox.get()

            def close(self) -> None:
                pass

        framed = Framed()

        async def fake_open(coordinator, secret, timeout=5.0):
            return framed, m.Snapshot(instances=[], services={})

        monkeypatch.setattr("boxer.agent.control.open_controller_session", fake_open)
        stop = asyncio.Event()
        running = loop.create_task(rt.run(stop))

        async def until(predicate, timeout: float) -> None:
            deadline = loop.time() + timeout
            while not predicate():
                assert loop.time() < deadline
                await asyncio.sleep(0.01)

        await until(lambda: backend.launched, 2.0)  # the first tick starts web-1
        (web,) = backend.launched
        agent_id = web.env[INSTANCE_ID_ENV]
        inbox.put_nowait(m.InstanceUp(name="web-1", service="web", addr="100.64.0.2",
                                      instance=agent_id))
        inbox.put_nowait(m.InstanceReport(name="web-1", service="web", instance=agent_id,
                                          report=report(listening=[80])))
        await until(lambda: rt.book.records["web-1.1"].ready_at is not None, 1.0)
        quiet_at = loop.time()
        inbox.put_nowait(m.InstanceQuiet(name="web-1", service="web", instance=agent_id,
                                         quiet=True, silent=0.8))
        await until(lambda: len(backend.launched) == 2, 1.0)
        assert loop.time() - quiet_at < 0.5
        assert any(isinstance(x, m.Stop) and x.instance == agent_id for x in framed.sent)
        stop.set()
        await asyncio.wait_for(running, 10)

    asyncio.run(scenario())


def test_instances_of_an_earlier_revision_are_outdated_and_new_ones_are_not():
    book = Book(deployment())
    old = started(book)
    book.on_message(m.InstanceUp(name="api-1", service="api", addr="100.64.0.2",
                                 instance=old.agent_id), 1.0)
    assert [s.outdated for s in book.signals(1.0).instances] == [False]
    edited = deployment().model_copy(deep=True)
    book.apply(edited, rolled=["api"])
    assert book.deployment is edited and book.revision("api") == 2 and book.revision("web") == 1
    assert [s.outdated for s in book.signals(1.1).instances] == [True]
    new = started(book, index=2, agent="b2" * 4, now=1.2)
    book.on_message(m.InstanceUp(name="api-2", service="api", addr="100.64.0.3",
                                 instance=new.agent_id), 1.3)
    assert {s.id: s.outdated for s in book.signals(1.3).instances} == {"api-1.1": True, "api-2.2": False}
    book.apply(edited)  # counts only: no new revision
    assert book.revision("api") == 2


def test_an_applied_deployment_declares_its_services_and_starts_one_added():
    async def scenario() -> None:
        backend = FakeBackend()
        rt, session = runtime(backend)
        await rt.tick(0.0)
        await settle()
        assert [s.name for s in backend.launched] == ["web-1"]
        edited = Deployment.model_validate({"services": {
            **SPEC["services"],
            "api": {**SPEC["services"]["api"],
                    "autoscale": {**SPEC["services"]["api"]["autoscale"], "scaleFromZeroTimeoutSeconds": 20}},
            "cache": {"command": ["redis-server"], "placement": "function", "minInstances": 1}}})
        rt.apply(edited)
        await settle()
        (declare,) = [x for x in session.sent if isinstance(x, m.Declare)]
        assert declare.services == {"api": 20.0, "web": 10.0, "cache": 10.0}
        assert rt.status()["services"]["cache"]["min"] == 1
        await rt.tick(0.25)
        await settle()
        assert [s.name for s in backend.launched] == ["web-1", "cache-1"]
        await rt.shutdown()

    asyncio.run(scenario())
