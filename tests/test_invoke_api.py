"""The local Lambda Invoke API (boxer/backends/emulators/invoke_api.py) through the real boto3 client and
the real LambdaBackend: answers as Lambda gives them, events run under awslambdaric, throttling
retried by the backend, sandboxes stopped on close. No root, no lab: sandboxes run here."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from boxer.backends import HandleState, InstanceSpec, LaunchError
from boxer.backends.aws_lambda.backend import LambdaBackend, RetryPolicy
from boxer.backends.aws_lambda.facts import LambdaFacts
from boxer.backends.emulators.invoke_api import InvokeApiServer, LocalFunction, fetch_stats

pytest.importorskip("awslambdaric", reason="awslambdaric is not installed (pip install '.[test]')")

REGION = "eu-west-1"


@pytest.fixture
def handlers(tmp_path: Path) -> dict[str, Any]:
    """Test handlers built with the real make_handler (a command in place of `boxer run`)."""
    (tmp_path / "invoke_handlers.py").write_text(textwrap.dedent("""
        from boxer.backends.aws_lambda.handler import HandlerTimeouts, make_handler

        FAST = HandlerTimeouts(margin=1.0, exit_grace=0.3, term_grace=0.3, min_lifetime=0.2)
        exit3 = make_handler(lambda launch: ["sh", "-c", "exit 3"], timeouts=FAST)
        forever = make_handler(lambda launch: ["sleep", "59.5"], timeouts=FAST)
    """))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return {"env": env}


def event(name: str = "kv-1") -> dict[str, Any]:
    return {"version": 2, "name": name, "service": "kv", "index": 1, "command": ["x"],
            "env": {}, "coordinator": "127.0.0.1:7000", "instance": "0123456789abcdef", "token": "ef" * 32}


CREDENTIALS = ("testing", "testing")  # what the clients below sign with


@pytest.fixture
def clients() -> Any:
    """boto3 clients for a server, closed at the end (their pooled sockets with them)."""
    made: list[Any] = []

    def make(server: InvokeApiServer) -> Any:
        made.append(boto3.client("lambda", region_name=REGION, endpoint_url=server.endpoint_url,
                                 aws_access_key_id="testing", aws_secret_access_key="testing",
                                 config=Config(retries={"total_max_attempts": 1})))
        return made[-1]

    yield make
    for made_client in made:
        made_client.close()


def wait_for(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_answers_like_lambda(handlers: dict[str, Any], clients: Any) -> None:
    functions = [LocalFunction("boxer-t", timeout=30, env=handlers["env"],
                               handler="invoke_handlers.exit3"),
                 LocalFunction("boxer-void", drop=True)]
    with InvokeApiServer(functions, region=REGION, credentials=CREDENTIALS) as server:
        lam = clients(server)
        # Event: 202 at once, with a request id; the handler runs in a sandbox afterwards.
        reply = lam.invoke(FunctionName="boxer-t", InvocationType="Event",
                           Payload=json.dumps(event()))
        assert reply["StatusCode"] == 202 and reply["Payload"].read() == b""
        assert len(reply["ResponseMetadata"]["RequestId"]) == 36
        (result,) = wait_for(lambda: server.stats()["results"])
        assert result["request_id"] == reply["ResponseMetadata"]["RequestId"]
        assert result["status"] == "ok"
        assert result["payload"]["exit_status"] == 3 and result["payload"]["instance"] == "kv-1"
        # RequestResponse: 200 and the handler's result; a function error says so.
        reply = lam.invoke(FunctionName="boxer-t", Payload=json.dumps(event()))
        assert (reply["StatusCode"], reply.get("FunctionError")) == (200, None)
        assert json.loads(reply["Payload"].read())["exit_status"] == 3
        reply = lam.invoke(FunctionName="boxer-t", Payload=b'{"name": "kv-1"}')
        assert (reply["StatusCode"], reply["FunctionError"]) == (200, "Unhandled")
        assert json.loads(reply["Payload"].read())["errorType"] == "EventError"
        # A function by ARN, DryRun, and the configuration.
        arn = f"arn:aws:lambda:{REGION}:000000000000:function:boxer-t"
        reply = lam.invoke(FunctionName=arn, InvocationType="DryRun")
        assert (reply["StatusCode"], reply["Payload"].read()) == (204, b"")
        config = lam.get_function_configuration(FunctionName="boxer-t")
        assert (config["FunctionName"], config["Timeout"], config["State"]) == \
            ("boxer-t", 30, "Active")
        # Unknown function, bad payload, too large: Lambda's error codes.
        for kwargs, code in (
            ({"FunctionName": "nope", "InvocationType": "Event", "Payload": b"{}"},
             "ResourceNotFoundException"),
            ({"FunctionName": "boxer-t", "InvocationType": "Event", "Payload": b"{nope"},
             "InvalidRequestContentException"),
            ({"FunctionName": "boxer-t", "InvocationType": "Event",
              "Payload": json.dumps({"x": "a" * 300_000})}, "RequestTooLargeException"),
        ):
            with pytest.raises(ClientError) as caught:
                lam.invoke(**kwargs)
            assert caught.value.response["Error"]["Code"] == code
        with pytest.raises(ClientError) as caught:
            lam.get_function_configuration(FunctionName="nope")
        assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        # Dropped events: accepted, never run.
        reply = lam.invoke(FunctionName="boxer-void", InvocationType="Event", Payload=b"{}")
        assert reply["StatusCode"] == 202 and reply["Payload"].read() == b""
        stats = server.stats()
        assert (stats["events"], stats["dropped"], stats["requests"]) == (2, 1, 2)
        assert len(stats["results"]) == 3


def test_events_queue_for_a_free_slot_and_a_busy_function_throttles_sync_calls(
        handlers: dict[str, Any], clients: Any) -> None:
    function = LocalFunction("boxer-t", timeout=60, env=handlers["env"],
                             handler="invoke_handlers.forever")
    server = InvokeApiServer([function], region=REGION, credentials=CREDENTIALS).start()
    try:
        lam = clients(server)
        for name in ("kv-1", "kv-2"):
            reply = lam.invoke(FunctionName="boxer-t", InvocationType="Event",
                               Payload=json.dumps(event(name)))
            reply["Payload"].read()  # gives botocore its connection back
        busy = wait_for(lambda: server.stats()["functions"]["boxer-t"]["running"] == 1
                        and server.stats())
        assert busy["functions"]["boxer-t"]["queued"] == 1  # one slot: the second one waits
        with pytest.raises(ClientError) as caught:
            lam.invoke(FunctionName="boxer-t", Payload=json.dumps(event()))
        assert caught.value.response["Error"]["Code"] == "TooManyRequestsException"
        assert server.stats()["throttled_concurrency"] == 1
    finally:
        began = time.monotonic()
        server.close()
    # close() ended the running sandbox (its tree with it) and dropped the queued event.
    assert time.monotonic() - began < 15
    stats = server.stats()
    assert [r["status"] for r in stats["results"]] == ["stopped"], stats["results"]
    assert stats["dropped_on_close"] == 1
    assert stats["functions"]["boxer-t"]["running"] == 0


def test_the_lambda_backend_retries_throttling_from_the_endpoint(monkeypatch, tmp_path) -> None:
    """LambdaBackend with the client it builds itself (credential chain, region from the
    outputs) reaches the endpoint through AWS_ENDPOINT_URL_LAMBDA."""
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(name, value)
    with InvokeApiServer([LocalFunction("boxer-t", drop=True)], region=REGION,
                         throttle_first=3) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", server.endpoint_url)
        facts = LambdaFacts("boxer-t", "203.0.113.7:7000", "/boxer/t/secret", REGION)
        backend = LambdaBackend(facts, max_concurrency=2,
                                retry=RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.02))
        spec = InstanceSpec(name="kv-1", service="kv", index=1, command=["redis-server"],
                            env={"BOXER_INSTANCE_ID": "0123456789abcdef"}, token="ef" * 32)

        async def scenario() -> None:
            # one event loop, as in the controller: the aiobotocore client lives in it
            handle = await backend.launch(spec)
            during = backend.status()
            handle.mark_failed("never registered")
            await asyncio.sleep(0)
            after = backend.status()
            assert handle.details["attempts"] == 4 and handle.state is HandleState.FAILED
            assert during["throttled_total"] == 3
            assert during["concurrency"] == {"limit": 2, "in_use": 1, "waiting": 0}
            assert after["concurrency"]["in_use"] == 0  # the failure gave the slot back
            assert server.stats()["dropped"] == 1 and server.stats()["throttled"] == 3

            server.throttle(99)
            with pytest.raises(LaunchError) as caught:
                await backend.launch(spec)
            assert caught.value.code == "TooManyRequestsException" and caught.value.attempts == 5
            # Ten calls, one connection: the backend reads each answer, so the pool reuses it.
            assert server.stats()["connections"] == 1
            bad = LambdaBackend(LambdaFacts("nope", "203.0.113.7:7000", "/x", REGION))
            server.throttle(0)
            with pytest.raises(LaunchError) as caught:
                await bad.launch(spec)
            assert caught.value.code == "ResourceNotFoundException"
            await backend.close()
            await bad.close()

        asyncio.run(scenario())


# --- the API runs code for its caller: only signed calls, bounded bodies (issue 14) --------------

def test_an_unsigned_or_wrongly_signed_call_is_refused_and_runs_nothing(clients: Any) -> None:
    import urllib.error
    import urllib.request

    with InvokeApiServer([LocalFunction("boxer-t", drop=True)], region=REGION,
                         credentials=("AKIDBOXERTEST", "s3cr3t-s3cr3t")) as server:
        url = f"{server.endpoint_url}/2015-03-31/functions/boxer-t/invocations"
        with pytest.raises(urllib.error.HTTPError) as unsigned:
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=5)
        assert unsigned.value.code == 403
        wrong = boto3.client("lambda", region_name=REGION, endpoint_url=server.endpoint_url,
                             aws_access_key_id="AKIDBOXERTEST", aws_secret_access_key="guess")
        with pytest.raises(ClientError) as caught:
            wrong.invoke(FunctionName="boxer-t", InvocationType="Event", Payload=b"{}")
        wrong.close()
        assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"
        right = boto3.client("lambda", region_name=REGION, endpoint_url=server.endpoint_url,
                             aws_access_key_id="AKIDBOXERTEST", aws_secret_access_key="s3cr3t-s3cr3t")
        assert right.invoke(FunctionName="boxer-t", InvocationType="Event", Payload=b"{}")["StatusCode"] == 202
        right.close()
        stats = server.stats()
    assert stats["unsigned"] == 2 and stats["events"] == 1


def test_the_stats_are_told_only_to_a_signed_call() -> None:
    import urllib.error
    import urllib.request

    with InvokeApiServer([LocalFunction("boxer-t", drop=True)], region=REGION,
                         credentials=("AKIDBOXERTEST", "s3cr3t-s3cr3t")) as server:
        with pytest.raises(urllib.error.HTTPError) as unsigned:
            urllib.request.urlopen(f"{server.endpoint_url}/_boxer/stats", timeout=5)
        assert unsigned.value.code == 403
        assert b"not signed" in unsigned.value.read()
        unsigned.value.close()
        with pytest.raises(urllib.error.HTTPError) as wrong:
            fetch_stats(server.endpoint_url, ("AKIDBOXERTEST", "guess"), region=REGION)
        assert wrong.value.code == 403
        wrong.value.close()
        stats = fetch_stats(server.endpoint_url, ("AKIDBOXERTEST", "s3cr3t-s3cr3t"), region=REGION)
    assert stats["unsigned"] == 2 and stats["functions"]["boxer-t"]["slots"] >= 1


def test_a_body_larger_than_any_payload_is_refused_unread() -> None:
    import socket

    with InvokeApiServer([LocalFunction("boxer-t", drop=True)], region=REGION, credentials=CREDENTIALS) as server:
        host, port = server.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /2015-03-31/functions/boxer-t/invocations HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 99999999999\r\n\r\n")
            answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer


def test_the_server_will_not_start_without_credentials(monkeypatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ValueError, match="serves only calls signed with them"):
        InvokeApiServer([LocalFunction("boxer-t")], region=REGION)
