"""Instances are tracked by their registration with the coordinator: the runtime with the real
LambdaBackend (a stand-in boto3 client that accepts every Invoke) and a fake coordinator
session. An instance that has not registered by the deadline is reported failed with its reason,
its concurrency slot comes back, the restart policy applies; `boxer status` shows it all."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from boxer.backends import HandleState
from boxer.backends.aws_lambda.backend import LambdaBackend
from boxer.backends.aws_lambda.facts import LambdaFacts
from boxer.cli.status_view import status_text
from boxer.controller.runtime import ControllerRuntime
from boxer.controller.spec import Deployment
from boxer.nat_traversal import messages as m

FACTS = LambdaFacts("boxer-t", "203.0.113.7:7000", "/boxer/t/secret", "eu-west-1")


class AcceptingLambda:
    """boto3's lambda client as far as LambdaBackend uses it: every event accepted (202)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        assert kwargs["InvocationType"] == "Event" and kwargs["FunctionName"] == "boxer-t"
        self.events.append(json.loads(kwargs["Payload"]))
        return {"StatusCode": 202, "ResponseMetadata": {"RequestId": f"req-{len(self.events)}"}}


class FakeSession:
    def __init__(self) -> None:
        self.sent: list[m.Message] = []

    async def send(self, message: m.Message) -> None:
        self.sent.append(message)

    def close(self) -> None:
        pass


def runtime(restart: str, register_timeout: float = 30.0
            ) -> tuple[ControllerRuntime, LambdaBackend, AcceptingLambda]:
    deployment = Deployment.model_validate({"backend": "lambda", "services": {
        "kv": {"command": ["redis-server"], "restartPolicy": restart}}})
    lam = AcceptingLambda()
    backend = LambdaBackend(FACTS, client=lam, max_concurrency=1)
    rt = ControllerRuntime(deployment, backend, coordinator=("203.0.113.7", 7000),
                           secret=b"x" * 32, register_timeout=register_timeout)
    rt._session = FakeSession()
    return rt, backend, lam


async def launched(rt: ControllerRuntime, lam: AcceptingLambda, count: int) -> None:
    """Until the `count`th Invoke went through (it runs in the backend's thread pool) and its
    handle is in the runtime's hands."""
    for _ in range(500):
        if len(lam.events) >= count and any(h.state is HandleState.LAUNCHED
                                            for h in rt.handles.values()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} launches did not complete")


def test_an_instance_that_does_not_register_in_time_fails_and_is_relaunched() -> None:
    async def scenario() -> None:
        rt, backend, lam = runtime("always")
        await rt.tick(0.0)
        await launched(rt, lam, 1)
        handle = rt.handles["kv-1.1"]
        assert backend.status()["concurrency"]["in_use"] == 1
        await rt.tick(29.9)  # within the deadline: nothing happens
        assert handle.state is HandleState.LAUNCHED and list(rt.failures) == []
        await rt.tick(30.0)
        assert handle.state is HandleState.FAILED
        reason = ("did not register with the coordinator within 30 s (invocation req-1: see "
                  "the function's log)")
        assert handle.reason == reason
        assert [(f["name"], f["reason"]) for f in rt.failures] == [("kv-1", reason)]
        await launched(rt, lam, 2)
        assert rt.book.records.get("kv-1.1") is None  # stopped and forgotten
        # restartPolicy always: relaunched with the same name, through the slot it gave back.
        assert [e["name"] for e in lam.events] == ["kv-1", "kv-1"]
        assert lam.events[0]["instance"] != lam.events[1]["instance"]
        assert backend.status()["concurrency"] == {"limit": 1, "in_use": 1, "waiting": 0}
        status = rt.status()
        assert status["failures"][0]["reason"] == reason
        assert status["register_timeout"] == 30.0
        assert status["backend_status"]["concurrency"]["in_use"] == 1
        assert [(i["name"], i["state"], i["host"]) for i in status["instances"]] == \
            [("kv-1", "starting", "req-2")]
        assert 'boxer_controller_register_timeouts_total{service="kv"} 1' in rt.metrics.render()
        await rt.shutdown()

    asyncio.run(scenario())


def test_restart_policy_never_leaves_it_failed_and_gives_the_slot_back() -> None:
    async def scenario() -> None:
        rt, backend, lam = runtime("never", register_timeout=5.0)
        await rt.tick(0.0)
        await launched(rt, lam, 1)
        await rt.tick(5.0)
        await asyncio.sleep(0.05)
        await rt.tick(5.25)
        await asyncio.sleep(0.05)
        assert len(lam.events) == 1  # not relaunched
        assert backend.status()["concurrency"]["in_use"] == 0
        status = rt.status()
        assert status["instances"] == []
        assert status["failures"][0]["reason"].startswith(
            "did not register with the coordinator within 5 s")
        text = status_text({**status, "name": "t", "backend": "lambda", "function": "boxer-t",
                            "region": "eu-west-1"}, wide=False)
        assert "deployment t  lambda function boxer-t (eu-west-1)  coordinator" in text
        assert "lambda concurrency: 0/1 in use, 0 waiting; throttled 0" in text
        assert "recent failures:" in text and "kv-1" in text
        assert "did not register with the coordinator within 5 s" in text
        await rt.shutdown()

    asyncio.run(scenario())


def test_an_instance_that_registers_in_time_is_not_failed() -> None:
    async def scenario() -> None:
        rt, backend, lam = runtime("always")
        await rt.tick(0.0)
        await launched(rt, lam, 1)
        agent_id = lam.events[0]["instance"]  # the id its token is bound to
        rt.book.on_message(m.InstanceUp(name="kv-1", service="kv", instance=agent_id,
                                        addr="100.64.0.2"), 12.0)
        await rt.tick(31.0)
        await rt.tick(60.0)
        handle = rt.handles["kv-1.1"]
        assert handle.state is HandleState.LAUNCHED
        assert list(rt.failures) == [] and len(lam.events) == 1
        # The way down: Stop through the coordinator (the only way to end an invocation),
        # then the backend gives the slot back.
        session = rt._session
        await rt.shutdown()
        assert [x.instance for x in session.sent if isinstance(x, m.Stop)] == [agent_id]
        assert handle.state is HandleState.STOPPED
        assert backend.status()["concurrency"]["in_use"] == 0

    asyncio.run(scenario())


def test_a_failed_launch_is_listed_with_its_reason() -> None:
    class Refusing(AcceptingLambda):
        def invoke(self, **kwargs: Any) -> dict[str, Any]:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "ResourceNotFoundException",
                                         "Message": "Function not found"}}, "Invoke")

    async def scenario() -> None:
        rt, backend, _ = runtime("always")
        backend._client = Refusing()
        await rt.tick(0.0)
        for _ in range(200):
            if rt.failures:
                break
            await asyncio.sleep(0.01)
        (failure,) = rt.failures
        assert failure["name"] == "kv-1"
        assert "(ResourceNotFoundException): Function not found" in failure["reason"]
        assert backend.status()["concurrency"]["in_use"] == 0
        await rt.shutdown()

    asyncio.run(scenario())
