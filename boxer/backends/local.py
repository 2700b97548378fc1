"""`local`: instances as `boxer run` processes in the hosts of a lab.

One lab host per running instance: an app binds its ports in its host's network namespace, so
two instances of one service could not share a host. `vm` placement goes to the lab's public
hosts (p1..pK, no NAT: the VM tier) when it has any, `function` placement to the NATed hosts
(h1..hN, Lambda's network). A host is free again once the process on it has exited.

    backend = LocalBackend(load_lab("web"), log_dir=Path("/run/boxer/deploy/web/instances"))
    handle = await backend.launch(spec)      # handle.details: pid, host
    await backend.stop(handle)               # SIGTERM, then SIGKILL after `stop_grace`

The process's exit is noticed at once (a task waits on it) and ends the handle with the exit
status in `handle.details["exit_status"]`; the controller reads that to replace failed
instances. Only pids this backend started are ever signalled.
"""

from __future__ import annotations

import asyncio
import json
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from boxer.backends.base import InstanceHandle, InstanceSpec, Placement
from boxer.backends.errors import CapacityError, LaunchError

__all__ = ["INSTANCE_ID_ENV", "LabLambdaBackend", "LocalBackend"]

log = logging.getLogger(__name__)

INSTANCE_ID_ENV = "BOXER_INSTANCE_ID"  # the controller's choice of the agent's --instance-id


class LocalBackend:
    name = "local"

    def __init__(
        self,
        lab: Any,
        *,
        python: str = sys.executable,
        log_dir: Path | None = None,
        cwd: str | Path | None = None,
        stop_grace: float = 3.0,
        host_wait: float = 10.0,
        base_env: Mapping[str, str] | None = None,
        run_options: Sequence[str] = (),
        spare_hosts: int = 0,
    ) -> None:
        """`lab`: a boxer.lab.Lab (or its name). `cwd`: where instances start (the deployment
        file's folder, so relative paths in commands work). `run_options`: extra `boxer run`
        options, e.g. ("-v",)."""
        if isinstance(lab, str):
            from boxer.lab import load_lab

            lab = load_lab(lab)
        self.lab = lab
        self.python = python
        self.log_dir = log_dir
        self.cwd = str(cwd) if cwd is not None else None
        self.stop_grace = stop_grace
        self.host_wait = host_wait
        self._freed = asyncio.Event()  # set whenever a host becomes free
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.run_options = tuple(run_options)
        public = [h.name for h in lab.public_hosts]
        # The last `spare_hosts` NATed hosts are never used: they are for the user's clients
        # (`boxer lab exec --name LAB h<N> -- boxer run -- wrk ...`).
        nated = [h.name for h in lab.hosts][: max(1, len(lab.hosts) - spare_hosts)]
        # Without public hosts the VM tier shares the NATed ones (said in `describe()`).
        self.pools: dict[Placement, list[str]] = {
            Placement.VM: public or nated,
            Placement.FUNCTION: nated,
        }
        self.busy: dict[str, InstanceHandle] = {}  # host -> the instance on it
        self._procs: dict[int, asyncio.subprocess.Process] = {}  # id(handle) -> process
        self._waiters: set[asyncio.Task[None]] = set()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "lab": self.lab.name,
            "vm_hosts": len(self.pools[Placement.VM]),
            "function_hosts": len(self.pools[Placement.FUNCTION]),
            "vm_on_public_hosts": bool(self.lab.public_hosts),
            "busy": len(self.busy),
        }

    def argv(self, spec: InstanceSpec) -> list[str]:
        """The `boxer run` command line of an instance (inside its host)."""
        argv = [self.python, "-m", "boxer", "run", "--name", spec.name, "--service", spec.service]
        instance_id = spec.env.get(INSTANCE_ID_ENV)
        if instance_id:
            argv += ["--instance-id", instance_id]
        if spec.max_lifetime is not None:
            argv += ["--lifetime", f"{spec.max_lifetime:g}"]
        return [*argv, *self.run_options, "--", *spec.command]

    def stdin_for(self, spec: InstanceSpec) -> bytes | None:
        """What the instance's process reads on stdin (nothing, for `boxer run`)."""
        return None

    def _free_host(self, placement: Placement) -> str | None:
        return next((h for h in self.pools[placement] if h not in self.busy), None)

    async def _claim_host(self, spec: InstanceSpec) -> str:
        """A free host of the spec's placement. A replacement is usually asked for in the same
        tick its predecessor is told to stop, so wait (up to `host_wait`) for one to free up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.host_wait
        while (host := self._free_host(spec.placement)) is None:
            left = deadline - loop.time()
            if left <= 0:
                raise CapacityError(spec.name, len(self.pools[spec.placement]), self.host_wait)
            self._freed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._freed.wait(), left)
        return host

    async def launch(self, spec: InstanceSpec) -> InstanceHandle:
        host = await self._claim_host(spec)
        handle = InstanceHandle(spec=spec, backend=self.name, details={"host": host})
        self.busy[host] = handle  # claimed before the next await: no double booking
        env = self.lab.env(host, {**self.base_env, **spec.env})
        stdin_data = self.stdin_for(spec)
        out: Any = asyncio.subprocess.DEVNULL
        if self.log_dir is not None:
            out = open(self.log_dir / f"{spec.name}.{handle.details['host']}.log", "ab")  # noqa: SIM115
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.lab.command(host, self.argv(spec)), env=env, cwd=self.cwd,
                stdin=asyncio.subprocess.PIPE if stdin_data is not None else asyncio.subprocess.DEVNULL,
                stdout=out, stderr=asyncio.subprocess.STDOUT,
                # Its own process group: a Ctrl-C meant for `boxer up` must not reach the
                # instances directly; the controller stops them in order.
                start_new_session=True,
            )
        except OSError as exc:
            self.busy.pop(host, None)
            raise LaunchError(spec.name, f"cannot start boxer run in {host}: {exc.strerror}",
                              code="SpawnFailed") from None
        finally:
            if out is not asyncio.subprocess.DEVNULL:
                out.close()
        if stdin_data is not None and proc.stdin is not None:
            proc.stdin.write(stdin_data)
            await proc.stdin.drain()
            proc.stdin.close()
        handle.details["pid"] = proc.pid
        self._procs[id(handle)] = proc
        waiter = asyncio.get_running_loop().create_task(self._wait(handle, proc, host))
        self._waiters.add(waiter)
        waiter.add_done_callback(self._waiters.discard)
        log.info("launched %s in %s (pid %d)", spec.name, host, proc.pid)
        return handle

    async def _wait(self, handle: InstanceHandle, proc: asyncio.subprocess.Process,
                    host: str) -> None:
        code = await proc.wait()
        self._procs.pop(id(handle), None)
        if self.busy.get(host) is handle:
            del self.busy[host]
            self._freed.set()
        # Shell convention for signals (128 + n), the status an exited app is known by.
        status = code if code >= 0 else 128 - code
        handle.details["exit_status"] = status
        if status == 0:
            handle.mark_stopped(f"exited with status 0 in {host}")
        else:
            handle.mark_failed(f"exited with status {status} in {host}")

    async def stop(self, handle: InstanceHandle) -> None:
        proc = self._procs.get(id(handle))
        if proc is None or proc.returncode is not None:
            handle.mark_stopped()
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # the agent stops its app, then exits
            # A stopped instance (SIGSTOP, a frozen host: what the coordinator reports quiet)
            # acts on SIGTERM only once resumed: resume its process group, app included.
            os.killpg(proc.pid, signal.SIGCONT)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), self.stop_grace)
        except asyncio.TimeoutError:
            log.warning("%s ignored SIGTERM for %.1f s; killing it", handle.spec.name,
                        self.stop_grace)
            # The whole group: the app is the agent's child, and must not outlive it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        handle.mark_stopped("stopped")
        # Let the waiter record the exit and free the host before we return.
        await asyncio.sleep(0)

    async def close(self) -> None:
        """Stop whatever still runs (the controller normally stopped everything already)."""
        running = [h for h in list(self.busy.values()) if not h.ended]
        await asyncio.gather(*(self.stop(h) for h in running), return_exceptions=True)
        for task in list(self._waiters):
            task.cancel()


class LabLambdaBackend(LocalBackend):
    """`lambda-local` under `boxer up`: each instance is one local Lambda invocation inside its own
    lab host: the Runtime API, the real awslambdaric runtime client and our handler, which
    starts `boxer run` with the event's command, as on AWS, behind the host's NAT."""

    name = "lambda-local"

    def __init__(self, lab: Any, *, timeout: float = 900.0, **options: Any) -> None:
        super().__init__(lab, **options)
        self.timeout = timeout

    def argv(self, spec: InstanceSpec) -> list[str]:
        return [self.python, "-m", "boxer.backends.lambda_local", "--timeout", f"{self.timeout:g}"]

    def stdin_for(self, spec: InstanceSpec) -> bytes | None:
        from boxer.backends.lambda_event import SecretRef, event_for

        event = event_for(spec, coordinator=self.lab.coordinator,
                          secret=SecretRef("file", str(self.lab.secret_file)))
        return json.dumps(event.to_dict()).encode()


def lab_size(services: Sequence[tuple[str, int, int, bool]], max_hosts: int = 200) -> tuple[int, int]:
    """(NATed hosts, public hosts) a lab needs for services given as (placement, maxInstances,
    baseCapacity, has_lifetime): one host per instance slot, plus room for the replacements that
    overlap a renewal (a tenth, at least one) on lifetime-capped services, plus one last NATed
    host for clients (LocalBackend(spare_hosts=1) leaves it alone). Capped at the lab's limits."""
    hosts = public = 0
    for placement, maximum, base, lifetime in services:
        overlap = max(1, maximum // 10) if lifetime else 0
        if placement == Placement.VM.value:
            public += maximum
        else:
            public += min(base, maximum)
            hosts += maximum - min(base, maximum) + overlap
    return max(1, min(hosts, max_hosts - 1)) + 1, min(public, max_hosts)
