"""The `lambda` backend: an instance is one asynchronous invocation of the boxer function.

Invoke with InvocationType=Event returns 202 as soon as Lambda has queued the event; the
instance exists for us once its agent registers with the coordinator, which the controller
watches (it calls `handle.mark_failed(...)` when that does not happen in time).

Invoke goes through aiobotocore (botocore on aiohttp): the call is a coroutine on the
controller's event loop, over a pool of keep-alive connections, so a burst of launches is as
many requests in flight as the pool has connections, not as many as a thread pool has threads
(benchmarks/bench_lambda_launch.py measures both). The client is built on the first launch,
inside the loop, with the standard credential chain (and AWS_ENDPOINT_URL_LAMBDA) and the region
from the terraform outputs. A synchronous client passed in (boto3: tests with moto's in-process
mock, which does not patch aiohttp; the benchmark's baseline) runs in a small thread pool.
botocore's own retries are off: we retry throttling here, with exponential backoff and full
jitter, so the schedule is ours, visible in the logs and testable.

The vm tier: an instance of `vm` placement is not an invocation but a `boxer run` on a vm host,
started by that host's daemon (boxer.backends.vmhost: `boxer host serve`) with the same event.
The hosts are the instances of the Auto Scaling group the terraform outputs name
(`vm_host_group`, found through EC2 by boxer.backends.vmhost.discovery), or `vm_hosts=` given.

Concurrency: each live instance holds one slot of a semaphore sized like the function's share
of the account's concurrent executions; the state is reported by `status()` for `boxer status`.
A slot is given back when the handle ends (stopped, or marked failed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from boxer.backends.aws_lambda.event import event_for
from boxer.backends.aws_lambda.facts import LambdaFacts
from boxer.backends.base import InstanceHandle, InstanceSpec, Placement
from boxer.backends.errors import CapacityError, LaunchError

__all__ = [
    "MAX_ASYNC_PAYLOAD",
    "ConcurrencyLimiter",
    "ConcurrencyState",
    "LambdaBackend",
    "RetryPolicy",
]

log = logging.getLogger(__name__)

MAX_ASYNC_PAYLOAD = 256 * 1024  # bytes, Lambda's limit for an asynchronous invocation
# Error codes worth another try: throttling and Lambda's own transient failure.
RETRYABLE = frozenset({"TooManyRequestsException", "ThrottlingException", "ServiceException"})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: try n waits uniform(0, min(cap, base * 2**n))."""

    attempts: int = 6
    base_delay: float = 0.1
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError(f"bad retry policy {self}")

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2**retry))


@dataclass(frozen=True)
class ConcurrencyState:
    limit: int
    in_use: int
    waiting: int

    @property
    def available(self) -> int:
        return self.limit - self.in_use


class ConcurrencyLimiter:
    """A counting semaphore that can say how full it is."""

    def __init__(self, limit: int) -> None:
        self.limit = _checked_limit(limit)
        self._in_use = 0
        self._waiting = 0
        self._freed = asyncio.Condition()
        # The loop keeps only weak references to tasks: a notification nobody holds could be
        # collected before it runs, and a waiter would then sleep on.
        self._notifications: set[asyncio.Task[None]] = set()

    @property
    def state(self) -> ConcurrencyState:
        return ConcurrencyState(self.limit, self._in_use, self._waiting)

    async def acquire(self, timeout: float) -> bool:
        async with self._freed:
            self._waiting += 1
            try:
                await asyncio.wait_for(
                    self._freed.wait_for(lambda: self._in_use < self.limit), timeout
                )
            except asyncio.TimeoutError:
                return False
            finally:
                self._waiting -= 1
            self._in_use += 1
            return True

    def take(self) -> None:
        """A slot taken without waiting, even past the limit: an invocation already in flight
        (adopted after a controller's crash) counts whatever the limit says."""
        self._in_use += 1

    def release(self) -> None:
        if self._in_use <= 0:
            raise RuntimeError("release() without acquire()")
        self._in_use -= 1
        # Handles may end from sync code; waiters only exist inside a running loop.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._start_notify(loop)

    def set_limit(self, limit: int) -> None:
        """A new limit, from now on. Raised: waiters take the new slots at once. Lowered: the
        slots in use above it are not taken back; new ones wait until enough are given back."""
        self.limit = _checked_limit(limit)
        self._start_notify(asyncio.get_running_loop(), everyone=True)

    def _start_notify(self, loop: asyncio.AbstractEventLoop, everyone: bool = False) -> None:
        task = loop.create_task(self._notify(everyone))
        self._notifications.add(task)
        task.add_done_callback(self._notifications.discard)

    async def _notify(self, everyone: bool = False) -> None:
        async with self._freed:
            if everyone:
                self._freed.notify_all()
            else:
                self._freed.notify()


def _checked_limit(limit: int) -> int:
    if limit < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {limit}")
    return limit


class LambdaBackend:
    name = "lambda"
    # stop() cannot end an invocation: the controller stops instances through the coordinator.
    ends_instances = False

    def __init__(
        self,
        facts: LambdaFacts | None = None,
        *,
        outputs: str | Path | None = None,
        client: Any = None,
        max_concurrency: int = 100,
        slot_timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        max_workers: int = 8,
        max_connections: int = 64,
        rng: random.Random | None = None,
        vm_token: bytes | None = None,
        vm_hosts: Any = None,
    ) -> None:
        """`vm_token`: the host daemons' credential (terraform's, read from the SSM parameter the
        outputs' vm_host_token_parameter_name names; else vmhost.protocol.host_token of the
        deployment secret); with it, `vm` instances go to the hosts of `vm_hosts` (a vmhost.tier.HostSource),
        by default the Auto Scaling group of the outputs' `vm_host_group`."""
        if (facts is None) == (outputs is None):
            raise ValueError("give exactly one of facts= or outputs= (a `terraform output "
                             "-json` file)")
        self.facts = facts if facts is not None else LambdaFacts.load(outputs)  # type: ignore[arg-type]
        # None: an aiobotocore client, made by the first launch (it needs the running loop).
        self._client = client
        self._client_exit: Any = None  # closes the aiobotocore client
        self._client_ready = asyncio.Lock()
        self._max_connections = max_connections
        self._slots = ConcurrencyLimiter(max_concurrency)
        self._slot_timeout = slot_timeout
        self._retry = retry
        self._rng = rng or random.Random()
        self._pool = ThreadPoolExecutor(max_workers=max_workers,
                                        thread_name_prefix="boxer-lambda")
        self.throttled_total = 0  # TooManyRequests answers seen, for status and metrics
        self.vm_tier: Any = None
        if vm_token is not None:
            from boxer.backends.vmhost.tier import VmTier

            if vm_hosts is None and self.facts.vm_host_group:
                from boxer.backends.vmhost.discovery import AutoScalingHosts

                vm_hosts = AutoScalingHosts(self.facts.vm_host_group, region=self.facts.region,
                                            port=self.facts.vm_host_port)
            if vm_hosts is not None:
                self.vm_tier = VmTier(vm_hosts, vm_token, backend=self.name, event_for=self.event)

    def event(self, spec: InstanceSpec) -> dict[str, Any]:
        """The event that `launch(spec)` sends (also what the golden files pin down)."""
        return event_for(spec, coordinator=self.facts.coordinator_address).to_dict()

    async def launch(self, spec: InstanceSpec) -> InstanceHandle:
        if spec.placement is Placement.VM:
            if self.vm_tier is None:
                raise LaunchError(spec.name, "this deployment has no vm hosts (the terraform outputs name no"
                                  " vm_host_group): set vm_host_count > 0 and apply, then `terraform output"
                                  " -json` again (docs/aws.md, the vm tier)", code="NoVmHost")
            handle: InstanceHandle = await self.vm_tier.launch(spec)
            return handle
        payload = json.dumps(self.event(spec), separators=(",", ":")).encode()
        if len(payload) > MAX_ASYNC_PAYLOAD:
            raise LaunchError(spec.name, f"event is {len(payload)} bytes, over Lambda's "
                              f"{MAX_ASYNC_PAYLOAD} for asynchronous invocations (shrink env)",
                              code="RequestTooLarge")
        started = time.monotonic()
        if not await self._slots.acquire(self._slot_timeout):
            raise CapacityError(spec.name, self._slots.limit, self._slot_timeout)
        try:
            reply, attempts = await self._invoke(spec.name, payload)
        except BaseException:
            self._slots.release()
            raise
        handle = InstanceHandle(
            spec=spec,
            backend=self.name,
            details={
                "request_id": reply.get("ResponseMetadata", {}).get("RequestId"),
                "function": self.facts.function_name,
                "attempts": attempts,
                "invoke_seconds": round(time.monotonic() - started, 3),
            },
        )
        handle.on_end(lambda _handle: self._slots.release())
        log.info("launched %s on %s (attempts=%d)", spec.name, self.facts.function_name,
                 attempts)
        return handle

    def adopt(self, spec: InstanceSpec, request_id: str) -> InstanceHandle | None:
        """An invocation a crashed controller made, still running (its agent registered): it
        cannot be re-attached, but it holds a slot of maxConcurrency until the controller lets
        go of it, so the concurrency in flight stays counted. A vm instance: the vm tier's
        handle, bound to it once its host's daemon lists it (VmTier.adopt: its slot counted, a
        stop through that daemon); None without a vm tier."""
        if spec.placement is Placement.VM:
            return self.vm_tier.adopt(spec) if self.vm_tier is not None else None
        self._slots.take()
        handle = InstanceHandle(spec=spec, backend=self.name, details={
            "request_id": request_id, "function": self.facts.function_name, "adopted": True})
        handle.on_end(lambda _handle: self._slots.release())
        return handle

    async def stop(self, handle: InstanceHandle) -> None:
        if handle.details.get("tier") == "vm" and self.vm_tier is not None:
            await self.vm_tier.stop(handle)  # its host's daemon can end it
            return
        # Lambda has no call that ends a running invocation. The controller stops a Lambda
        # instance through its agent (drain, deregister, exit; the handler then returns);
        # here we only give back its slot.
        handle.mark_stopped()

    def set_max_concurrency(self, limit: int) -> None:
        """`boxer up` again with a new `lambda.maxConcurrency` (see boxer.controller.reapply)."""
        if limit != self._slots.limit:
            log.info("concurrency limit %d -> %d", self._slots.limit, limit)
            self._slots.set_limit(limit)

    def status(self) -> dict[str, Any]:
        state = self._slots.state
        return {
            "backend": self.name,
            "function": self.facts.function_name,
            "region": self.facts.region,
            "concurrency": {"limit": state.limit, "in_use": state.in_use,
                            "waiting": state.waiting},
            "throttled_total": self.throttled_total,
            **({"vm": self.vm_tier.status()} if self.vm_tier is not None else {}),
        }

    async def leave(self) -> None:
        """Let go without stopping anything (a controller host's SIGTERM): nothing here ends
        an instance anyway, invocations and vm instances run on for the next controller."""
        await self.close()

    async def close(self) -> None:
        if self.vm_tier is not None:
            await self.vm_tier.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client_exit is not None:
            exit_client, self._client_exit, self._client = self._client_exit, None, None
            await exit_client(None, None, None)
            return
        close = getattr(self._client, "close", None)  # boto3 clients: their pooled sockets
        if close is not None:
            close()

    async def _invoke(self, instance: str, payload: bytes) -> tuple[dict[str, Any], int]:
        from botocore.exceptions import BotoCoreError, ClientError

        loop = asyncio.get_running_loop()
        client = await self._ensure_client()
        call = partial(_invoke_event, client, FunctionName=self.facts.function_name,
                       InvocationType="Event", Payload=payload)
        asynchronous = _is_aio_client(client)
        for attempt in range(1, self._retry.attempts + 1):
            try:
                if asynchronous:
                    reply: dict[str, Any] = await _invoke_event_async(client, FunctionName=self.facts.function_name,
                                                                      InvocationType="Event", Payload=payload)
                else:
                    reply = await loop.run_in_executor(self._pool, call)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code, message = error.get("Code", "?"), error.get("Message", "")
                if code == "TooManyRequestsException":
                    self.throttled_total += 1
                if code not in RETRYABLE:
                    raise LaunchError(instance, message, code=code, attempts=attempt) from None
                if attempt == self._retry.attempts:
                    raise LaunchError(instance, f"still {code} ({message})", code=code,
                                      attempts=attempt) from None
                pause = self._retry.delay(attempt - 1, self._rng)
                log.warning("invoke for %s: %s, retry %d in %.2f s", instance, code, attempt,
                            pause)
                await asyncio.sleep(pause)
                continue
            except BotoCoreError as exc:  # credentials, region, endpoint: not worth retrying
                raise LaunchError(instance, str(exc), code=type(exc).__name__,
                                  attempts=attempt) from None
            status = reply.get("StatusCode")
            if status != 202:
                raise LaunchError(instance, f"Invoke answered status {status}, expected 202 "
                                  f"(FunctionError={reply.get('FunctionError')})",
                                  code="UnexpectedStatus", attempts=attempt)
            return reply, attempt
        raise AssertionError("unreachable")


    async def _ensure_client(self) -> Any:
        async with self._client_ready:
            if self._client is None:
                self._client, self._client_exit = await _make_client(self.facts.region,
                                                                     self._max_connections)
        return self._client


def _is_aio_client(client: Any) -> bool:
    """aiobotocore's methods are plain functions that return coroutines: ask its class."""
    try:
        from aiobotocore.client import AioBaseClient
    except ImportError:
        return False
    return isinstance(client, AioBaseClient)


async def _invoke_event_async(client: Any, **call: Any) -> dict[str, Any]:
    """As _invoke_event, for aiobotocore: its body read, so the connection goes back to the pool."""
    reply: dict[str, Any] = await client.invoke(**call)
    body = reply.get("Payload")
    if body is not None:
        async with body as stream:
            await stream.read()
    return reply


def _invoke_event(client: Any, **call: Any) -> dict[str, Any]:
    """client.invoke, and its answer read: the body is empty for an event, but until it is
    read botocore holds the connection, and every launch would open (and leak) one more
    instead of reusing it."""
    reply: dict[str, Any] = client.invoke(**call)
    body = reply.get("Payload")
    if body is not None:
        body.read()
        body.close()
    return reply


CLIENT_CONFIG = {"retries": {"total_max_attempts": 1}, "connect_timeout": 5, "read_timeout": 15}


async def _make_client(region: str, max_connections: int) -> tuple[Any, Any]:
    """An aiobotocore Lambda client and the coroutine function that closes it."""
    from aiobotocore.config import AioConfig  # lazily: `boxer run` and the local backends never need it
    from aiobotocore.session import get_session

    # Retries are ours (see module docstring); a short connect timeout keeps a broken network
    # from stalling a scale-up for a minute.
    config = AioConfig(max_pool_connections=max_connections, **CLIENT_CONFIG)  # type: ignore[arg-type]
    context = get_session().create_client("lambda", region_name=region, config=config)
    client = await context.__aenter__()
    return client, context.__aexit__


def boto3_client(region: str, max_connections: int = 10) -> Any:
    """The synchronous client of before (boto3; LambdaBackend runs it in its thread pool): the
    benchmark's baseline."""
    import boto3
    from botocore.config import Config

    config = Config(max_pool_connections=max_connections, **CLIENT_CONFIG)  # type: ignore[arg-type]
    return boto3.session.Session().client("lambda", region_name=region, config=config)
