"""The controller at run time: watch the coordinator, tick `decide()`, act through a backend.

    runtime = ControllerRuntime(deployment, backend, coordinator=("198.18.0.1", 7000),
                                secret=secret, paths=DeployPaths("web"))
    await runtime.run(stop_event)        # until stop_event is set; then stops every instance

The I/O lives here and only here: the session with the coordinator (`Watch`, then InstanceUp/
InstanceReport/InstanceDown/Demand in, `Declare`/`Drain`/`Stop`/`Ping` out), the backend calls,
the timeline and status files, the metrics. What to do is decided by `boxer.controller.book` (messages
-> Signals, decisions -> actions) and `boxer.controller.policy.decide`, which are pure.

While the session with the coordinator is down the controller does not tick: without reports
every instance would look silent and be replaced. It reconnects with backoff, and the first
Snapshot brings it up to date (the coordinator is soft state; the agents re-register).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from boxer.backends.base import Backend, HandleState, InstanceHandle, InstanceSpec
from boxer.controller.book import Book, Launch, Record, Tell, actions_for
from boxer.controller.instance_logs import InstanceLogBook
from boxer.controller.metrics import Metrics, serve_metrics
from boxer.controller.partition import NORMAL, Mode, Verdict
from boxer.controller.paths import DeployPaths, write_json_atomic
from boxer.controller.policy import Drain, Failure, Start, Stop, Timings, decide
from boxer.controller.resume import Adoption, Kept, Roster, adopt
from boxer.controller.signals import ControllerState, StartingInstance
from boxer.controller.spec import Deployment
from boxer.nat_traversal.auth import instance_token

__all__ = ["INSTANCE_ID_ENV", "ControllerRuntime"]

log = logging.getLogger(__name__)

# The local backend turns this into `boxer run --instance-id`; other backends pass it on in the
# environment (see docs/controller.md: `boxer run` should read it as the option's default).
INSTANCE_ID_ENV = "BOXER_INSTANCE_ID"
PING_EVERY = 1.0
# Nothing from the coordinator (no Pong to our pings, no report forwarded) for this long: it is
# frozen or cut off, and decisions about silent instances wait until it is heard again.
COORDINATOR_SILENT = 2.0
RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0)
# Agents report once a second, so "silent" must allow for a late report or two. It is only the
# backstop: an app that exits, or an agent whose session drops, is noticed at once (process exit,
# the agent's last report, InstanceDown), and an agent that stops (SIGSTOP, a freeze, a hung
# event loop) within a second, when the coordinator reports it quiet (no heartbeat for 0.8 s).
RUNTIME_TIMINGS = Timings(silent_after=2.5)
# Messages that can call for a decision at once: they wake the loop before its next tick (so
# does an instance's first report that it listens: renewals, held connects and `boxer up` wait
# on that). Woken ticks are at least WAKE_GAP apart, so a burst of messages costs few ticks.
WAKE_ON = frozenset({"instance_quiet", "instance_down"})
WAKE_GAP = 0.02
DEFAULT_HOLD = 10.0  # seconds a connect to a fixed-size service waits while it (re)starts
FAILURES_KEPT = 20  # recent failures shown by `boxer status`
SHUTDOWN_WAIT = 10.0  # seconds, on the way down, for instances to leave after their Stop


class ControllerRuntime:
    def __init__(
        self,
        deployment: Deployment,
        backend: Backend,
        *,
        coordinator: tuple[str, int],
        secret: bytes,
        paths: DeployPaths | None = None,
        tick: float = 0.25,
        timings: Timings = RUNTIME_TIMINGS,
        metrics_sock: socket.socket | None = None,
        info: dict[str, Any] | None = None,
        wall: Callable[[], float] = time.time,
        register_timeout: float | None = None,
        resume: Roster | None = None,
    ) -> None:
        """`register_timeout`: seconds an instance has, from the launch decision, to register
        with the coordinator; after that its handle is marked failed with the reason (which
        gives back what the backend holds for it, e.g. a Lambda concurrency slot) and the
        service's restart policy applies. Default: `timings.start_timeout`."""
        self.deployment = deployment
        self.backend = backend
        self.coordinator = coordinator
        self.secret = secret
        self.paths = paths
        self.tick_seconds = tick
        if register_timeout is not None:
            # decide()'s own start timeout is the same deadline; ours fires first in a tick
            # (>= against its >), so the failure is reported here, with its reason.
            timings = replace(timings, start_timeout=register_timeout)
        self.timings = timings
        self.metrics = Metrics()
        self.metrics_sock = metrics_sock
        self.info = dict(info or {})
        self.wall = wall
        self.book = Book(deployment)
        self.state = ControllerState()
        self.desired: dict[str, int] = {}
        self.handles: dict[str, InstanceHandle] = {}
        self.connected = asyncio.Event()
        self._session: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping_ids: set[str] = set()
        self._started_at = wall()
        self._timeline: Any = None
        self._last_error: str | None = None
        self._wake = asyncio.Event()  # set: tick now, not at the next tick's time
        self._ticked = asyncio.Event()  # set (and replaced) once a tick's status is out
        self.partition: Verdict = NORMAL  # decide()'s latest judgement of quiet instances
        self.failures: deque[dict[str, Any]] = deque(maxlen=FAILURES_KEPT)
        # What happened since the last timeline line, for `boxer report`'s marks: reapply,
        # rollout, failure ({"kind", "service", "text"}).
        self._events: list[dict[str, Any]] = []
        self._failure_of: dict[str, dict[str, Any]] = {}  # instance id -> its entry in failures
        self._slot_logs: dict[tuple[str, int], list[str]] = {}  # last log lines of a failed slot
        self.failing: frozenset[str] = frozenset()  # services crash-looping: no instance, back-off
        self._last_frame = 0.0  # loop time of the coordinator's last frame
        self._stalled = False  # the coordinator has been silent for COORDINATOR_SILENT
        # Beside the instances' logs: their starts and exits, and when each log grew (`boxer logs`).
        self.logbook = InstanceLogBook(paths.instances, wall) if paths is not None else None
        self._exits_logged: set[str] = set()  # instance ids whose exit is in it already
        self._resume = resume  # adopted at the first Snapshot, then None
        # Set before `stop`: the controller stops and leaves the deployment running (a
        # controller host's SIGTERM; the next one resumes it) instead of taking it down.
        self.leaving = False
        self.adoption: Adoption | None = None
        self._roster_written: dict[str, Any] | None = None
        # Loop time (time.monotonic) -> wall clock, fixed: the roster's times must not jitter.
        self._wall_offset = wall() - time.monotonic()

    def apply(self, deployment: Deployment, rolled: Iterable[str] = ()) -> None:
        """Run on an edited deployment file from now on (`boxer up` again; boxer.controller.reapply
        has checked what changed): tick at once with it. The services in `rolled` have a new
        command or environment: their running instances are rolled out (boxer.controller.policy)."""
        from boxer.nat_traversal import messages as m

        rolled = tuple(rolled)
        self.deployment = deployment
        self.book.apply(deployment, rolled)
        self._events.append({"kind": "reapply", "service": None, "text": "edited file applied"})
        self._events.extend({"kind": "rollout", "service": name, "text": f"{name} rolled out"}
                            for name in rolled)
        # Services added, and holds changed (scaleFromZeroTimeoutSeconds): the coordinator
        # gives new services their address, and holds connects to them while they start.
        self._spawn(self._send(m.Declare(services=self._holds())))
        # Now, not at the next tick: `boxer up` watches the status for the rollout to finish,
        # and must not take the one from before the change for "done".
        self._write_status()
        self._wake.set()

    async def next_tick(self) -> None:
        """Return once the next tick's status is out (what the control API's Watch streams)."""
        await self._ticked.wait()

    def set_register_timeout(self, seconds: float) -> None:
        """A new `lambda.registerTimeoutSeconds`, for launches from now on (see __init__)."""
        self.timings = replace(self.timings, start_timeout=seconds)

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        if self.paths is not None:
            self.paths.make()
            self._timeline = open(self.paths.timeline, "a", buffering=1)  # noqa: SIM115
        metrics_server = None
        if self.metrics_sock is not None:
            metrics_server = await serve_metrics(self.metrics, self.metrics_sock)
        session_task = loop.create_task(self._session_forever(stop))
        stopper = loop.create_task(stop.wait())
        stopper.add_done_callback(lambda _: self._wake.set())
        try:
            while not stop.is_set():
                began = loop.time()
                self._wake.clear()
                if self.connected.is_set() and not self._coordinator_stalled(loop.time()):
                    await self._tick_guarded(loop.time())
                self._write_status()
                self._sample_logs()
                self._ticked.set()  # the control API's watchers: a new status
                self._ticked = asyncio.Event()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(),
                                           max(0.0, self.tick_seconds - (loop.time() - began)))
                if not stop.is_set() and loop.time() - began < WAKE_GAP:
                    await asyncio.sleep(WAKE_GAP - (loop.time() - began))
        finally:
            stopper.cancel()
            if not self.leaving:
                await self._stop_through_coordinator()  # while the session is still up
            session_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session_task
            if self.leaving:
                await self._leave()
            else:
                await self.shutdown()
            if metrics_server is not None:
                metrics_server.close()
            if self._timeline is not None:
                self._timeline.close()
            self._sample_logs()
            if self.logbook is not None:
                self.logbook.close()

    def _sample_logs(self) -> None:
        if self.logbook is not None:
            self.logbook.sample(h.details["log"] for h in self.handles.values()
                                if isinstance(h.details.get("log"), str))

    def _log_event(self, name: str, service: str, text: str) -> None:
        """A line among the instance's own in `boxer logs` (started, exited, stopped...)."""
        if self.logbook is not None:
            self.logbook.event(name, service, text)

    async def _tick_guarded(self, now: float) -> None:
        """A tick that cannot end the controller: whatever one tick raises (a bug, a value no
        check foresaw) is logged and counted, and the next tick runs as usual. Letting it
        escape would run the teardown in run() and stop every instance of the deployment."""
        try:
            await self.tick(now)
        except Exception as exc:
            log.exception("controller tick failed; ticking again")
            self.metrics.inc("boxer_controller_tick_errors_total")
            self._last_error = f"tick failed: {type(exc).__name__}: {exc}"[:300]

    async def tick(self, now: float) -> None:
        """One round: exits noticed by the backend, decide(), act, record."""
        began = time.perf_counter()
        self._collect_exits(now)
        self._check_registrations(now)
        signals = self.book.signals(now)
        outcome = decide(self.deployment, signals, self.state, now, self.timings)
        self.state = outcome.state
        self.desired = dict(outcome.desired)
        self._note_partition(outcome.partition)
        for failure in outcome.failures:  # before the actions: the handle still has its log
            self._on_failure(failure)
        self._note_crash_loops()
        actions = actions_for(outcome.decisions, self.deployment, self.book,
                              drain_grace=self.timings.drain_timeout)
        for decision in outcome.decisions:
            kind = {Start: "start", Drain: "drain", Stop: "stop"}[type(decision)]
            service = getattr(decision, "service", None) or self._service_of(decision.instance)
            self.metrics.inc("boxer_controller_decisions_total", service=service, kind=kind)
            if isinstance(decision, Start) and decision.reason.startswith(("replace ", "restart ")):
                self.metrics.inc("boxer_controller_restarts_total", service=service)
            log.info("%s %s: %s", kind, getattr(decision, "instance_id", None)
                     or getattr(decision, "instance", ""), decision.reason)
            if isinstance(decision, (Drain, Stop)) and (record := self.book.records.get(decision.instance)):
                self._log_event(record.name, record.service, f"{kind}: {decision.reason}")
        for action in actions:
            self._apply(action, now)
        # Before the launches just spawned reach the backend (they run at our next await): an
        # agent id the coordinator may report after a crash is in the roster already.
        self._write_roster()
        self.metrics.inc("boxer_controller_ticks_total")
        self.metrics.inc("boxer_controller_tick_seconds_total", time.perf_counter() - began)
        self._record(now, outcome.decisions)

    def _note_partition(self, verdict: Verdict) -> None:
        """Make decide()'s judgement of quiet instances visible: metrics every tick; the log
        and `boxer status`'s recent failures when the handling changes (its counts change every
        tick, its mode seldom)."""
        for mode in Mode:
            self.metrics.set("boxer_controller_partition", 1 if verdict.mode is mode else 0,
                             state=mode.value)
        self.metrics.set("boxer_controller_quiet_instances", verdict.quiet)
        self.metrics.set("boxer_controller_quiet_instances_held", verdict.held)
        previous, self.partition = self.partition.mode, verdict
        if verdict.mode is previous:
            return
        suspected = (Mode.LIMITED, Mode.HALTED)
        if verdict.mode in suspected:
            log.warning("%s", verdict.reason)
            self._note_failure("partition", "", "", verdict.reason or verdict.mode.value)
            if previous not in suspected:
                self.metrics.inc("boxer_controller_partitions_total")
        elif verdict.mode is Mode.WATCHING:
            log.info("%s", verdict.reason)
        else:
            log.info("quiet instances: replaced at once again (was %s)", previous.value)

    def _service_of(self, instance_id: str) -> str:
        record = self.book.records.get(instance_id)
        return record.service if record else "unknown"

    # -- actions ---------------------------------------------------------------------------

    def _apply(self, action: Launch | Tell, now: float) -> None:
        from boxer.nat_traversal import messages as m

        if isinstance(action, Launch):
            self.book.launched(action.start, action.agent_id, now)
            self._spawn(self._launch(action))
            return
        record = self.book.records[action.instance]
        if isinstance(action.message, m.Drain):
            record.draining = True
            self._spawn(self._send(action.message))
        else:
            record.stopping = True
            if not record.exited:
                self._spawn(self._send(action.message))
            self._spawn(self._stop(action.instance))

    async def _launch(self, action: Launch) -> None:
        start = action.start
        spec = InstanceSpec(
            name=start.name, service=start.service, index=start.index,
            command=action.command, env={**action.env, INSTANCE_ID_ENV: action.agent_id},
            placement=start.placement, max_lifetime=action.max_lifetime,
            # Its one credential, bound to its id: the instance never gets the deployment secret.
            token=instance_token(self.secret, action.agent_id).hex(),
        )
        try:
            handle = await self.backend.launch(spec)
        except Exception as exc:  # any backend failure: the instance counts as failed at once
            log.warning("launch of %s failed: %s", start.name, exc)
            self.metrics.inc("boxer_controller_launch_failures_total", service=start.service)
            self.book.launch_failed(start.instance_id, str(exc))
            self._last_error = f"launch of {start.name}: {exc}"
            self._note_failure(start.name, start.service, action.agent_id, str(exc), start.instance_id)
            self._log_event(start.name, start.service, f"launch failed: {exc}")
            return
        record = self.book.records.get(start.instance_id)
        if record is None or record.stopping:
            await self.backend.stop(handle)  # told to stop while it was being launched
            return
        self.handles[start.instance_id] = handle
        if self.logbook is not None:
            self.logbook.started(start.name, start.service, handle.details,
                                 region=getattr(getattr(self.backend, "facts", None), "region", None))
        # A lab host, or for Lambda the request id (what to look for in the function's logs).
        record.host = str(handle.details.get("host") or handle.details.get("request_id")
                          or "") or None
        pid = handle.details.get("pid")
        record.pid = pid if isinstance(pid, int) else None

    async def _stop(self, instance_id: str) -> None:
        self._stopping_ids.add(instance_id)
        handle = self.handles.get(instance_id)
        try:
            if handle is not None:
                await self.backend.stop(handle)
        finally:
            self.handles.pop(instance_id, None)
            self._stopping_ids.discard(instance_id)
            self._exits_logged.discard(instance_id)
            self.book.forget(instance_id)

    def _collect_exits(self, now: float) -> None:
        self._sample_logs()  # an instance's last lines are timed before its exit is logged
        for instance_id, handle in list(self.handles.items()):
            if handle.ended and instance_id not in self._stopping_ids:
                record = self.book.records.get(instance_id)
                if (record is not None and not record.exited and not record.launch_failed
                        and handle.state is HandleState.FAILED):
                    self._note_failure(record.name, record.service, record.agent_id,
                                       handle.reason or "failed", record.id)
                status = handle.details.get("exit_status")
                if record is not None and not record.exited:
                    self._exits_logged.add(instance_id)
                    self._log_event(record.name, record.service, f"exited with status {status}"
                                    if isinstance(status, int) else f"ended: {handle.reason or 'failed'}")
                self.book.exited(instance_id, status if isinstance(status, int) else None, now)

    def _check_registrations(self, now: float) -> None:
        """An instance that has not registered with the coordinator within the deadline has
        failed: say why, free what the backend holds for it, and let decide() apply the
        restart policy (it sees an exited instance)."""
        deadline = self.timings.start_timeout
        for record in list(self.book.records.values()):
            if (record.registered or record.exited or record.launch_failed or record.stopping
                    or now - record.requested_at < deadline):
                continue
            handle = self.handles.get(record.id)
            if handle is None:  # the backend is still at it (waiting for a slot, retrying)
                reason = f"not launched within {deadline:g} s (the backend was still trying)"
            else:
                reason = f"did not register with the coordinator within {deadline:g} s"
                request_id = handle.details.get("request_id")
                if request_id:
                    reason += f" (invocation {request_id}: see the function's log)"
                handle.mark_failed(reason)
            log.warning("%s failed: %s", record.name, reason)
            self._log_event(record.name, record.service, f"failed: {reason}")
            self.metrics.inc("boxer_controller_register_timeouts_total", service=record.service)
            self.book.launch_failed(record.id, reason)
            self._last_error = f"{record.name}: {reason}"
            self._note_failure(record.name, record.service, record.agent_id, reason, record.id)

    def _note_failure(self, name: str, service: str, agent_id: str, reason: str,
                      instance: str | None = None) -> dict[str, Any]:
        entry = {"at": round(self.wall(), 3), "name": name, "service": service,
                 "instance_id": agent_id, "reason": reason}
        self.failures.append(entry)
        self._events.append({"kind": "failure", "service": service or None, "text": f"{name}: {reason}"[:200]})
        if instance is not None:
            if len(self._failure_of) > 2 * FAILURES_KEPT:  # only those still listed matter
                listed = {id(f) for f in self.failures}
                self._failure_of = {k: v for k, v in self._failure_of.items() if id(v) in listed}
            self._failure_of[instance] = entry
        return entry

    def _on_failure(self, failure: Failure) -> None:
        """decide() found an instance failed: list it (once; a launch or registration failure
        is listed already, with its reason) with its exit status, the last lines of its log,
        and what follows (started again at once, after a back-off, or not at all)."""
        record = self.book.records.get(failure.instance)
        self.metrics.inc("boxer_controller_instance_failures_total", service=failure.service)
        lines = _log_tail(self.handles.get(failure.instance))
        if lines:
            self._slot_logs[(failure.service, failure.index)] = lines
        entry = self._failure_of.get(failure.instance)
        if entry is None:
            entry = self._note_failure(failure.name, failure.service, record.agent_id if record else "",
                                       failure.reason, failure.instance)
        if failure.retry_in is None:
            then = "not started again (restartPolicy)"
        elif failure.retry_in <= 0:
            then = "started again at once"
        else:
            then = f"crash loop: started again in {failure.retry_in:g} s (back-off)"
            log.warning("%s %s; %s", failure.name, failure.reason, then)
        # An exit the backend noticed was logged as such (_collect_exits): then only what follows.
        logged = failure.instance in self._exits_logged
        self._exits_logged.discard(failure.instance)
        self._log_event(failure.name, failure.service, then if logged else f"{failure.reason}; {then}")
        entry.update(exit_status=failure.exit_status, last_log=lines, restarts=failure.restarts,
                     retry_in=failure.retry_in, then=then)

    def _note_crash_loops(self) -> None:
        """Services with a slot in back-off and no ready instance are failing: the coordinator
        refuses their connects at once (ECONNREFUSED, what a host whose service is down gives)
        instead of holding them for scaleFromZeroTimeoutSeconds."""
        from boxer.nat_traversal import messages as m

        failing = frozenset(
            name for name in self.deployment.services
            if self.state.service(name).waiting and not any(
                r.service == name and r.state == "ready" for r in self.book.records.values()))
        for name in self.deployment.services:
            self.metrics.set("boxer_controller_backoff_slots", len(self.state.service(name).waiting),
                             service=name)
        if failing != self.failing:
            for name in failing - self.failing:
                log.warning("%s is crash-looping: its connects are refused until an instance is ready", name)
            self.failing = failing
            self._spawn(self._send(m.Declare(services=self._holds())))

    async def _send(self, message: Any) -> None:
        session = self._session
        if session is None:
            return
        try:
            await session.send(message)
        except OSError as exc:
            log.info("could not send %s to the coordinator: %s", message.TYPE, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_through_coordinator(self) -> None:
        """Send Stop to every registered instance and wait (up to SHUTDOWN_WAIT) until they
        have left. On a backend that cannot end an instance itself (`ends_instances = False`:
        Lambda has no call that ends an invocation) this is the only way to stop one, so an
        instance still starting is waited for too, and told to stop once it registers (or
        given up at its registration deadline)."""
        if not self.connected.is_set():
            return
        loop = asyncio.get_running_loop()
        wait_for_starting = not getattr(self.backend, "ends_instances", True)
        deadline = loop.time() + SHUTDOWN_WAIT
        sent: set[str] = set()
        while self.connected.is_set():
            now = loop.time()
            pending = False
            for record in list(self.book.records.values()):
                if record.exited or record.launch_failed or record.down_reason:
                    continue
                if record.registered:
                    pending = True
                    if record.id not in sent:
                        sent.add(record.id)
                        record.stopping = True
                        await self._send(_stop_message(record.agent_id, "deployment going down"))
                elif wait_for_starting and now - record.requested_at < self.timings.start_timeout:
                    pending = True  # it may register any moment; it gets its Stop then
            if not pending or now >= deadline:
                break
            await asyncio.sleep(0.1)
        log.info("stopped %d instance(s) through the coordinator", len(sent))

    async def _leave(self) -> None:
        """The controller stops, the deployment does not (`leaving`: a controller host's
        SIGTERM): its instances run on, the roster says which are ours, and the next controller
        adopts them (controller/resume.py). Launches in flight finish first, so the roster names
        what they started; then the backend lets go of its connections and keeps its instances."""
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=10)
        self._write_roster()
        leave = getattr(self.backend, "leave", None)
        if leave is not None:
            await leave()
        if self._session is not None:
            self._session.close()
            self._session = None
        log.info("controller stopped; %d instance(s) left running for the next controller to adopt",
                 len([r for r in self.book.records.values() if not (r.exited or r.launch_failed)]))

    async def shutdown(self) -> None:
        """Stop every instance we started (coordinator Stop, then the backend), wait for them."""
        for record in list(self.book.records.values()):
            if not record.exited:
                await self._send(_stop_message(record.agent_id, "deployment going down"))
        pending = [t for t in self._tasks if not t.done()]
        if pending:  # launches in flight finish first, so their handles can be stopped
            await asyncio.wait(pending, timeout=10)
        await asyncio.gather(*(self._stop(i) for i in list(self.handles)),
                             return_exceptions=True)
        close = getattr(self.backend, "close", None)
        if close is not None:
            await close()
        if self._session is not None:
            self._session.close()
            self._session = None
        self._write_status(final=True)

    # -- the coordinator session -----------------------------------------------------------

    async def _session_forever(self, stop: asyncio.Event) -> None:
        from boxer.agent.control import CoordinatorError, open_controller_session
        from boxer.nat_traversal import messages as m
        from boxer.nat_traversal.wire import ProtocolError

        attempt = 0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                framed, snapshot = await open_controller_session(self.coordinator, self.secret)
            except Exception as exc:  # CoordinatorError, or anything a stranger on that address causes
                if not isinstance(exc, CoordinatorError):
                    log.exception("opening the coordinator session failed")
                self._last_error = str(exc)[:300]
                delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                attempt += 1
                log.warning("coordinator: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self._session = framed
            self._last_error = None
            try:
                await framed.send(m.Declare(services=self._holds()))
                if self._resume is not None:
                    roster, self._resume = self._resume, None  # once: a bug here costs the adoption
                    try:
                        self._adopt(roster, snapshot, loop.time())
                    except Exception:
                        log.exception("could not adopt the instances of the crashed controller")
                self._on_message(snapshot, loop.time())
                self.connected.set()
                self._wake.set()  # tick now, with the snapshot, not a tick later
                self.metrics.set("boxer_controller_coordinator_connected", 1)
                log.info("watching the coordinator at %s:%d", *self.coordinator)
                pinger = loop.create_task(self._ping(framed))
                try:
                    while True:
                        message = await framed.receive_skipping(self._skipped_frame)
                        self._on_message(message, loop.time())
                finally:
                    pinger.cancel()
            except (OSError, ProtocolError, ConnectionError) as exc:
                log.warning("lost the coordinator session: %s; reconnecting", exc)
                self._last_error = f"coordinator session lost: {exc}"
            except Exception as exc:  # whatever the peer sent: a new session, never a dead loop
                log.exception("coordinator session failed; reconnecting")
                self._last_error = f"coordinator session failed: {type(exc).__name__}: {exc}"[:300]
                await asyncio.sleep(RECONNECT_DELAYS[0])
            finally:
                self.connected.clear()
                self.metrics.set("boxer_controller_coordinator_connected", 0)
                self._session = None
                framed.close()

    def _adopt(self, roster: Roster, snapshot: Any, now: float) -> None:
        """Resume after a crash: the roster's instances the coordinator lists are ours and run;
        those launched just before and not registered yet are awaited (decide() counts them as
        starting); the rest are gone. The backend has no handle of any of them (a Lambda
        invocation cannot be re-attached): they are stopped through the coordinator, and their
        end is the coordinator's InstanceDown."""
        from boxer.controller.spec import Placement

        members = [str(e.get("instance")) for e in snapshot.instances if e.get("instance")]
        wall = now + self._wall_offset
        adoption = adopt(roster, members, self.deployment.services, wall, self.timings.start_timeout)
        starting: dict[str, list[StartingInstance]] = {}
        for kept in (*adoption.running, *adoption.starting):
            record = Record(kept.id, kept.agent_id, kept.service, kept.name, kept.index, Placement(kept.placement),
                            requested_at=now - max(0.0, wall - kept.launched_at), host=kept.host,
                            revision=kept.revision)
            self.book.records[record.id] = record
            self.book.by_agent[record.agent_id] = record.id
        for kept in adoption.starting:
            record = self.book.records[kept.id]
            starting.setdefault(kept.service, []).append(StartingInstance(
                kept.id, kept.name, kept.index, record.placement, record.requested_at))
        take = getattr(self.backend, "adopt", None)  # a lab backend: the hosts they occupy
        for kept in (*adoption.running, *adoption.starting):
            if take is not None and kept.host:
                placement = Placement(kept.placement)
                rendered = self.deployment.services[kept.service].render(kept.service, kept.index, placement)
                spec = InstanceSpec(name=kept.name, service=kept.service, index=kept.index,
                                    command=rendered.command, placement=placement,
                                    env={INSTANCE_ID_ENV: kept.agent_id})  # a vm host knows it by it
                handle = take(spec, kept.host)
                if handle is not None:
                    self.handles[kept.id] = handle
        self.book.revisions.update(adoption.revisions)
        self.state = replace(self.state, serial=max(self.state.serial, adoption.serial), services={
            **self.state.services,
            **{name: replace(self.state.service(name), starting=tuple(kept)) for name, kept in starting.items()}})
        self.adoption = adoption
        log.info("resumed the deployment: %s", adoption.summary())
        for kept in adoption.gone:
            self._log_event(kept.name, kept.service, "gone while the controller was away")

    def roster(self) -> Roster:
        """What a controller resuming this deployment needs of this one (controller/resume.py)."""
        offset = self._wall_offset
        kept = tuple(
            Kept(id=r.id, agent_id=r.agent_id, service=r.service, name=r.name, index=r.index,
                 placement=r.placement.value, revision=r.revision, launched_at=round(r.requested_at + offset, 3),
                 registered=r.registered, host=r.host)
            for r in self.book.records.values() if not (r.exited or r.launch_failed))
        return Roster(serial=self.state.serial, revisions=dict(self.book.revisions), instances=kept)

    def _write_roster(self) -> None:
        if self.paths is None or self._resume is not None:
            return  # not before the roster we resume from is adopted: it would be overwritten
        data = self.roster().to_json()
        if data == self._roster_written:
            return
        try:
            write_json_atomic(self.paths.roster, data)
            self._roster_written = data
        except OSError as exc:
            log.warning("cannot write %s: %s", self.paths.roster, exc)

    def _coordinator_stalled(self, now: float) -> bool:
        """Nothing at all from the coordinator for COORDINATOR_SILENT s (it answers our pings
        every second, and forwards reports): it is stopped or cut off, and every instance's
        silence is its, not theirs. Ticking would replace them all (two instances are too few
        for the partition guard), so, as while the session is down, we do not tick."""
        if now - self._last_frame <= COORDINATOR_SILENT:
            return False
        if not self._stalled:
            self._stalled = True
            log.warning("nothing from the coordinator for %.1f s: not deciding until it is heard",
                        now - self._last_frame)
            self.metrics.inc("boxer_controller_coordinator_stalls_total")
        return True

    def _on_message(self, message: Any, now: float) -> None:
        self._last_frame = now
        if self._stalled:  # heard again: silence counts from now, as the coordinator counts it
            self._stalled = False
            self.book.heard_again(now)
            log.info("the coordinator is heard again")
        try:
            ready = len(self.book.ready_latencies)
            self.book.on_message(message, now)
        except Exception:  # a bug with one message must cost that message, not the session
            log.exception("error while handling %s from the coordinator", message.TYPE)
            self.metrics.inc("boxer_controller_message_errors_total", kind=message.TYPE)
            return
        if message.TYPE in WAKE_ON or len(self.book.ready_latencies) > ready:
            self._wake.set()

    def _skipped_frame(self, exc: Exception) -> None:
        log.warning("skipped a malformed frame from the coordinator: %s", exc)
        self.metrics.inc("boxer_controller_malformed_frames_total")

    async def _ping(self, framed: Any) -> None:
        from boxer.nat_traversal import messages as m

        seq = 0
        with contextlib.suppress(OSError):
            while True:
                await asyncio.sleep(PING_EVERY)
                seq += 1
                await framed.send(m.Ping(seq=seq))

    def _holds(self) -> dict[str, float]:
        holds = {}
        for name, service in self.deployment.services.items():
            policy = service.autoscale
            holds[name] = policy.scale_from_zero_timeout_seconds if policy else DEFAULT_HOLD
            if name in self.failing:
                holds[name] = 0.0
        return holds

    # -- what we write down ----------------------------------------------------------------

    def _record(self, now: float, decisions: Any) -> None:
        services = {}
        for name in self.deployment.services:
            counts = {"vm": 0, "function": 0}
            starting = draining = 0
            for record in self.book.records.values():
                if record.service != name:
                    continue
                state = record.state
                if state == "ready":
                    counts[record.placement.value] += 1
                elif state == "starting":
                    starting += 1
                elif state in ("draining", "stopping"):
                    draining += 1
            load = self.book.service_load(name)
            policy = self.deployment.services[name].autoscale
            memory = self.state.service(name)
            services[name] = {"load": load, "desired": self.desired.get(name, 0),
                              "ready": counts, "starting": starting, "draining": draining,
                              "pending": name in self.book.demand,
                              "target": policy.target if policy else None,
                              "panic": memory.panic_since is not None,
                              "backoff": len(memory.waiting)}
            self.metrics.set("boxer_controller_desired_instances", self.desired.get(name, 0),
                             service=name)
            self.metrics.set("boxer_controller_service_load", load, service=name)
            self.metrics.set("boxer_controller_pending_connects",
                             1 if name in self.book.demand else 0, service=name)
        self.metrics.clear("boxer_controller_instances")
        for record in self.book.records.values():
            key = dict(service=record.service, placement=record.placement.value,
                       state=record.state)
            current = self.metrics.gauges.get(
                ("boxer_controller_instances", tuple(sorted(key.items()))), 0)
            self.metrics.set("boxer_controller_instances", current + 1, **key)
        latencies = self.book.take_ready_latencies()
        for _, seconds in latencies:
            self.metrics.inc("boxer_controller_start_to_ready_seconds_total", seconds)
            self.metrics.inc("boxer_controller_instances_ready_total")
        events, self._events = self._events, []
        if self._timeline is None:
            return
        line = {
            "t": round(self.wall(), 3),
            "services": services,
            "decisions": [_describe(d) for d in decisions],
            "ready_latencies": [[n, round(s, 4)] for n, s in latencies],
            "events": events,
        }
        if self.partition.mode is not Mode.NORMAL:
            line["partition"] = _partition_summary(self.partition)
        self._timeline.write(json.dumps(line, separators=(",", ":")) + "\n")

    def status(self, final: bool = False) -> dict[str, Any]:
        now_mono = asyncio.get_running_loop().time()
        now = self.wall()
        rows = []
        for record in sorted(self.book.records.values(), key=lambda r: (r.service, r.index)):
            row = _status_row(record, now_mono, now, self.wall() - now_mono)
            slot = self.state.service(record.service).backoff.get(record.index)
            row["restarts"] = slot.restarts if slot is not None else 0
            rows.append(row)
        for name in self.deployment.services:
            for index, slot in sorted(self.state.service(name).backoff.items()):
                if slot.retry_at is not None:
                    rows.append({**_backoff_row(self.deployment, name, index, slot, now_mono, now,
                                                self._slot_logs.get((name, index), [])),
                                 "revision": self.book.revision(name)})
        rows.sort(key=lambda r: (r["service"], r["name"]))
        return {
            **self.info,
            "deployment": self.deployment.name,
            "updated_at": now,
            "started_at": self._started_at,
            "running": not final,
            "coordinator": f"{self.coordinator[0]}:{self.coordinator[1]}",
            "connected": self.connected.is_set(),
            "error": self._last_error,
            "register_timeout": self.timings.start_timeout,
            "backend_status": self._backend_status(),
            "failures": list(self.failures),
            "partition": _partition_summary(self.partition),
            "services": {
                name: {
                    "placement": svc.placement.value,
                    "min": svc.min_instances,
                    "max": svc.effective_max_instances,
                    "autoscale": None if svc.autoscale is None else {
                        "metric": svc.autoscale.metric.value, "target": svc.autoscale.target},
                    "desired": self.desired.get(name, svc.min_instances),
                    "address": self.book.services_addr.get(name),
                    "load": self.book.service_load(name),
                    "pending": name in self.book.demand,
                    "revision": self.book.revision(name),
                    # Live instances of an earlier revision: a rollout in progress.
                    "outdated": sum(1 for r in self.book.records.values() if r.service == name
                                    and self.book.outdated(r) and r.state != "exited"),
                }
                for name, svc in self.deployment.services.items()
            },
            "instances": rows,
        }

    def _backend_status(self) -> dict[str, Any] | None:
        """The backend's own figures (the lambda backend: concurrency and throttling)."""
        status = getattr(self.backend, "status", None)
        if status is None:
            return None
        try:
            figures: dict[str, Any] = status()
        except Exception as exc:  # a status table must not take the controller down
            log.warning("backend status: %s", exc)
            return None
        return figures

    def _write_status(self, final: bool = False) -> None:
        if self.paths is None:
            return
        try:
            write_json_atomic(self.paths.status, self.status(final))
        except OSError as exc:
            log.warning("cannot write %s: %s", self.paths.status, exc)


LOG_TAIL_LINES = 5
LOG_TAIL_BYTES = 4096


def _log_tail(handle: InstanceHandle | None) -> list[str]:
    """The last lines the instance wrote to its log (the local backend keeps one per instance
    name and host, appended: only what this instance wrote, from its offset, counts)."""
    path = handle.details.get("log") if handle is not None else None
    if not isinstance(path, str):
        return []
    offset = handle.details.get("log_offset", 0) if handle is not None else 0
    try:
        with open(path, "rb") as file:
            size = file.seek(0, 2)
            start = max(int(offset or 0), size - LOG_TAIL_BYTES)
            file.seek(start)
            text = file.read().decode(errors="replace")
    except OSError:
        return []
    return [line[:300] for line in text.splitlines() if line.strip()][-LOG_TAIL_LINES:]


def _backoff_row(deployment: Deployment, service: str, index: int, slot: Any, now_mono: float,
                 now: float, last_log: list[str]) -> dict[str, Any]:
    """A slot waiting in crash-loop back-off, as a row of `boxer status`."""
    assert slot.retry_at is not None
    return {
        "service": service, "name": deployment.services[service].instance_name(service, index),
        "id": None, "instance_id": None, "state": "backoff", "placement": slot.placement.value,
        "address": None, "host": None, "pid": None, "connections": 0, "cpu": 0.0, "rss": 0,
        "listening": [], "direct": 0, "relayed": 0, "accepted": 0,
        "started_at": None, "age": None, "ready_after": None, "registered_after": None,
        "lifetime_left": None,
        "exit_status": slot.exit_status, "error": slot.reason, "revision": None,
        "restarts": slot.restarts, "next_try": now + (slot.retry_at - now_mono),
        "next_try_in": max(0.0, slot.retry_at - now_mono), "last_log": last_log,
    }


def _stop_message(agent_id: str, reason: str) -> Any:
    from boxer.nat_traversal import messages as m

    return m.Stop(instance=agent_id, reason=reason)


def _partition_summary(verdict: Verdict) -> dict[str, Any]:
    return {"mode": verdict.mode.value, "quiet": verdict.quiet, "held": verdict.held,
            "lost": verdict.lost, "instances": verdict.instances, "reason": verdict.reason}


def _describe(decision: Any) -> dict[str, Any]:
    if isinstance(decision, Start):
        return {"kind": "start", "service": decision.service, "instance": decision.instance_id,
                "placement": decision.placement.value, "reason": decision.reason}
    return {"kind": type(decision).__name__.lower(), "instance": decision.instance,
            "reason": decision.reason}


def _status_row(record: Record, now_mono: float, now: float, offset: float) -> dict[str, Any]:
    """One instance as `boxer status` shows it (times turned from the loop clock to wall)."""
    report = record.report or {}
    return {
        "service": record.service,
        "name": record.name,
        "id": record.id,
        "instance_id": record.agent_id,
        "state": record.state,
        "placement": record.placement.value,
        "address": record.addr,
        "host": record.host,
        "pid": record.pid,
        "connections": int(report.get("active", 0)),
        "cpu": float(report.get("cpu", 0.0)),
        "rss": int(report.get("rss", 0)),
        "listening": sorted(record.listening),
        "direct": int(report.get("direct", 0)),
        "relayed": int(report.get("relayed", 0)),
        "accepted": int(report.get("accepted", 0)),
        "started_at": record.requested_at + offset,
        "age": now_mono - record.requested_at,
        "ready_after": None if record.ready_at is None else record.ready_at - record.requested_at,
        "registered_after": (None if record.registered_at is None
                             else record.registered_at - record.requested_at),
        "lifetime_left": record.lifetime_left(now_mono),
        "exit_status": record.exit_status,
        "error": record.launch_failed,
        "revision": record.revision,
    }

