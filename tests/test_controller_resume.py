"""A controller that resumes a deployment after its own crash (controller/resume.py): which
persisted roster and which membership (the coordinator's first Snapshot) make what the new
controller believes, and that a runtime resumed from the roster the old one wrote adopts its
instances instead of launching them again (minInstances met stays met), replaces only those
that left meanwhile, and never reuses an incarnation id."""

from __future__ import annotations

import asyncio
import json
import textwrap

import pytest

from boxer.controller.resume import Kept, Roster, adopt, load_roster
from boxer.nat_traversal import messages as m

DEPLOY = """\
    services:
      kv:
        command: [redis-server]
        placement: function
        minInstances: 2
        maxInstances: 2
    """


def kept(n: int, *, registered: bool = True, launched_at: float = 100.0, service: str = "kv") -> Kept:
    return Kept(id=f"{service}-{n}.{n + 4}", agent_id=f"{n:016x}", service=service, name=f"{service}-{n}",
                index=n, placement="function", revision=2, launched_at=launched_at, registered=registered)


def test_registered_instances_are_running_fresh_ones_starting_the_rest_gone() -> None:
    roster = Roster(serial=9, revisions={"kv": 2}, instances=(
        kept(1), kept(2),  # both registered before the crash; 1 still is
        kept(3, registered=False, launched_at=195.0),  # launched 5 s before now: still has time
        kept(4, registered=False, launched_at=100.0),  # launched 100 s ago, never registered
        kept(5, service="old"),  # its service is no longer in the file
    ))
    members = [f"{1:016x}", f"{5:016x}", "ffffffffffffffff"]  # the last one is not ours
    adoption = adopt(roster, members, {"kv"}, now=200.0, register_timeout=60.0)
    assert [k.name for k in adoption.running] == ["kv-1"]
    assert [k.name for k in adoption.starting] == ["kv-3"]
    assert [k.name for k in adoption.gone] == ["kv-2", "kv-4", "old-5"]
    assert adoption.serial == 9 and adoption.revisions == {"kv": 2}
    assert adoption.summary() == "1 running, 1 starting adopted; 3 gone while the controller was away"


def test_the_serial_goes_on_past_every_adopted_id() -> None:
    # A roster written by hand or by an older boxer with a lower serial: ids must still not repeat.
    adoption = adopt(Roster(serial=1, instances=(kept(7),)), [f"{7:016x}"], {"kv"}, 200.0, 60.0)
    assert adoption.serial == 11


def test_a_roster_reads_back_and_anything_else_is_none(tmp_path) -> None:
    roster = Roster(serial=3, revisions={"kv": 1}, instances=(kept(1), kept(2, registered=False)))
    path = tmp_path / "roster.json"
    path.write_text(json.dumps(roster.to_json()))
    assert load_roster(path) == roster
    for text in ("", "{", "[]", '{"version": 99}', '{"version": 1, "serial": 1, "instances": [{"id": 1}]}'):
        path.write_text(text)
        assert load_roster(path) is None, text
    assert load_roster(tmp_path / "missing.json") is None


class Backend:
    name = "counting"

    def __init__(self) -> None:
        self.launched: list[str] = []

    async def launch(self, spec):
        from boxer.backends.base import InstanceHandle

        self.launched.append(spec.name)
        return InstanceHandle(spec=spec, backend=self.name, details={"request_id": f"req-{len(self.launched)}"})

    async def stop(self, handle) -> None:
        pass


def _snapshot(records) -> m.Snapshot:
    return m.Snapshot(instances=[
        {"name": r.name, "service": r.service, "addr": f"10.0.0.{i + 2}", "instance": r.agent_id, "nat": "open",
         "draining": False, "quiet": False}
        for i, r in enumerate(records)], services={"kv": "10.1.0.1"})


@pytest.fixture
def state_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BOXER_DEPLOY_STATE_ROOT", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.mark.parametrize("left", [2, 1])
def test_a_resumed_runtime_adopts_what_runs_and_replaces_only_what_left(state_root, left) -> None:
    from boxer.controller.paths import DeployPaths
    from boxer.controller.runtime import ControllerRuntime
    from boxer.controller.validate import parse_deployment

    deployment = parse_deployment(textwrap.dedent(DEPLOY), "deploy.yaml")
    paths = DeployPaths("kv")
    paths.make()  # as run() does

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        first = Backend()
        old = ControllerRuntime(deployment, first, coordinator=("127.0.0.1", 1), secret=b"x" * 32, paths=paths)
        t0 = loop.time()
        await old.tick(t0)
        await asyncio.sleep(0)  # the launches run
        assert sorted(first.launched) == ["kv-1", "kv-2"]
        records = sorted(old.book.records.values(), key=lambda r: r.name)
        old.book.on_message(_snapshot(records), t0 + 0.5)
        await old.tick(t0 + 0.5)  # registered: the roster says so
        written = load_roster(paths.roster)
        assert written is not None and [k.registered for k in written.instances] == [True, True]
        # The old controller is SIGKILLed here: nothing of it runs on, its roster stays.
        assert old.logbook is not None
        old.logbook.close()

        second = Backend()
        new = ControllerRuntime(deployment, second, coordinator=("127.0.0.1", 1), secret=b"x" * 32, paths=paths,
                                resume=load_roster(paths.roster))
        snapshot = _snapshot(records[:left])  # kv-2 ended while no controller ran, when left == 1
        t1 = loop.time()
        roster, new._resume = new._resume, None
        assert roster is not None
        new._adopt(roster, snapshot, t1)
        new.book.on_message(snapshot, t1)
        for step in range(4):
            await new.tick(t1 + step * 0.25)
            await asyncio.sleep(0)
        assert new.adoption is not None and len(new.adoption.running) == left
        assert second.launched == ([] if left == 2 else ["kv-2"])  # no duplicate of what runs
        ids = set(new.book.records)
        assert {r.id for r in records[:left]} <= ids
        assert len(ids) == 2 and not ({r.id for r in records} - {r.id for r in records[:left]}) & ids
        roster = load_roster(paths.roster)  # the new controller's, for its own crash
        assert roster is not None and {k.id for k in roster.instances} == ids
        assert new.logbook is not None
        new.logbook.close()

    asyncio.run(scenario())


def test_an_adopted_invocation_holds_a_concurrency_slot_until_it_is_let_go() -> None:
    from boxer.backends.aws_lambda.backend import LambdaBackend
    from boxer.backends.aws_lambda.facts import LambdaFacts
    from boxer.backends.base import InstanceSpec
    from boxer.controller.spec import Placement

    async def scenario() -> None:
        backend = LambdaBackend(LambdaFacts("boxer-demo", "203.0.113.7:7000", "/boxer/demo/secret", "us-east-1"),
                                client=object(), max_concurrency=1)
        try:
            spec = InstanceSpec(name="kv-1", service="kv", index=1, command=("redis-server",))
            handle = backend.adopt(spec, "req-1")
            assert handle is not None and handle.details["request_id"] == "req-1"
            assert backend.status()["concurrency"]["in_use"] == 1  # the limit is reached: no launch gets a slot
            vm = InstanceSpec(name="kv-2", service="kv", index=2, command=("redis-server",), placement=Placement.VM)
            assert backend.adopt(vm, "h") is None
            await backend.stop(handle)  # the controller lets go of it (it left, or was stopped)
            assert backend.status()["concurrency"]["in_use"] == 0
        finally:
            await backend.close()

    asyncio.run(scenario())
