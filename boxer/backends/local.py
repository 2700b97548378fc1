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

`boxer run` is forked from the lab's zygote (`boxer.backends.zygote`: the agent imported once,
the lab's analog of Lambda's init phase) rather than started with `ip netns exec`, unless the
instance's environment changes what the agent reads at import, or BOXER_LAB_ZYGOTE=0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from boxer._python import module_argv
from boxer.backends.base import InstanceHandle, InstanceSpec, Placement
from boxer.backends.errors import CapacityError, LaunchError
from boxer.nat_traversal.auth import SECRET_ENV, TOKEN_ENV

__all__ = ["INSTANCE_ID_ENV", "ZYGOTE_ENV", "LocalBackend", "lab_size"]

log = logging.getLogger(__name__)

INSTANCE_ID_ENV = "BOXER_INSTANCE_ID"  # the controller's choice of the agent's --instance-id
ZYGOTE_ENV = "BOXER_LAB_ZYGOTE"  # "0": start every instance with `ip netns exec` instead


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
        zygote: bool | None = None,
        adopt_zygote: tuple[int, int, int] | None = None,
    ) -> None:
        """`lab`: a boxer.lab.Lab (or its name). `cwd`: where instances start (the deployment
        file's folder, so relative paths in commands work). `run_options`: extra `boxer run`
        options, e.g. ("-v",). `zygote`: fork `boxer run` from a pre-initialised agent (default:
        yes, unless BOXER_LAB_ZYGOTE=0); it starts now when an event loop runs. `adopt_zygote`:
        (pid, its stdout's fd, its stdin's fd) of one already started (zygote.start_for_adoption:
        `boxer up` starts it before it builds the lab) to use instead of starting one."""
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
        # Never the deployment secret: the zygote's environment is what every agent forked from
        # it shows in /proc/PID/environ.
        self.base_env = {k: v for k, v in (os.environ if base_env is None else base_env).items()
                         if k not in SECRET_ENV}
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
        if zygote is None:
            zygote = os.environ.get(ZYGOTE_ENV, "1") != "0"
        # Only plain `boxer run` is forked (a subclass running something else never starts one).
        self._zygote_wanted = (zygote and type(self).argv is LocalBackend.argv
                               and type(self).stdin_for is LocalBackend.stdin_for)
        self._zygote: Any = None
        self._zygote_start: asyncio.Task[Any] | None = None
        self._forked: dict[int, int] = {}  # id(handle) -> pid, for instances forked by the zygote
        self._zygote_refusals: set[str] = set()
        self._adopt_zygote = adopt_zygote
        if self._zygote_wanted:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # started by the first launch
            else:
                self._begin_zygote()

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
        argv = module_argv("boxer", "run", "--name", spec.name, "--service", spec.service, python=self.python)
        instance_id = spec.env.get(INSTANCE_ID_ENV)
        if instance_id:
            argv += ["--instance-id", instance_id]
        if spec.max_lifetime is not None:
            argv += ["--lifetime", f"{spec.max_lifetime:g}"]
        return [*argv, *self.run_options, "--", *spec.command]

    def stdin_for(self, spec: InstanceSpec) -> bytes | None:
        """What the instance's process reads on stdin (nothing, for `boxer run`)."""
        return None

    def credential_env(self, spec: InstanceSpec) -> dict[str, str]:
        """How the instance gets its token (issued by the controller, in the spec): `boxer run`
        reads it from BOXER_INSTANCE_TOKEN, beside its id (--instance-id)."""
        assert spec.token is not None
        return {TOKEN_ENV: spec.token}

    def _begin_zygote(self) -> None:
        self._zygote_start = asyncio.get_running_loop().create_task(self._start_zygote())
        # A failure is reported by the first launch that waits for it, if any.
        self._zygote_start.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _start_zygote(self) -> Any:
        from boxer.backends.zygote import Zygote

        log_path = str(self.log_dir / "zygote.log") if self.log_dir is not None else None
        zygote = Zygote(self.python, self.base_env, log_path)
        if self._adopt_zygote is not None:
            await zygote.adopt(*self._adopt_zygote)
        else:
            await zygote.start()
        log.info("zygote of lab %s ready (pid %s)", self.lab.name, zygote.pid)
        self._zygote = zygote
        return zygote

    async def _zygote_for(self, env: Mapping[str, str]) -> Any:
        """The zygote to fork this instance from, or None to start it with `ip netns exec`."""
        if not self._zygote_wanted:
            return None
        from boxer.backends.zygote import ZygoteError, incompatibility

        if self._zygote_start is None:
            self._begin_zygote()
        assert self._zygote_start is not None
        try:
            zygote = await asyncio.shield(self._zygote_start)
        except (ZygoteError, OSError) as exc:
            log.warning("no zygote (%s): instances start with ip netns exec", exc)
            self._zygote_wanted = False
            return None
        if not zygote.alive:
            log.warning("the zygote is gone: instances start with ip netns exec from now on")
            self._zygote_wanted = False
            return None
        why = incompatibility(self.base_env, env)
        if why is not None:
            if why not in self._zygote_refusals:
                self._zygote_refusals.add(why)
                log.info("not forking from the zygote (%s): ip netns exec", why)
            return None
        return zygote

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
        if self.log_dir is not None:
            handle.details["log"] = str(self.log_dir / f"{spec.name}.{host}.log")
        self.busy[host] = handle  # claimed before the next await: no double booking
        env = self.lab.env(host, {**self.base_env, **spec.env})
        if spec.token is not None:
            # The instance's own token, and not the lab's secret file (which lab.env adds for
            # `boxer lab exec`): its agent holds no deployment secret.
            env = {k: v for k, v in env.items() if k not in SECRET_ENV}
            env.update(self.credential_env(spec))
        stdin_data = self.stdin_for(spec)
        log_path = self.log_dir / f"{spec.name}.{host}.log" if self.log_dir is not None else None
        if log_path is not None:  # appended per name and host: this instance's part starts here
            handle.details["log"] = str(log_path)
            handle.details["log_offset"] = log_path.stat().st_size if log_path.exists() else 0
        try:
            zygote = await self._zygote_for(env)
        except BaseException:
            self.busy.pop(host, None)
            raise
        if zygote is not None:
            return await self._fork(zygote, handle, spec, host, env, log_path)
        out: Any = asyncio.subprocess.DEVNULL
        if log_path is not None:
            out = open(log_path, "ab")  # noqa: SIM115
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

    async def _fork(self, zygote: Any, handle: InstanceHandle, spec: InstanceSpec, host: str,
                    env: Mapping[str, str], log_path: Path | None) -> InstanceHandle:
        from boxer.backends.zygote import ZygoteError

        argv = self.argv(spec)
        try:
            pid = await zygote.spawn(self.lab.netns(host), argv, env, self.cwd,
                                     None if log_path is None else str(log_path))
        except (ZygoteError, asyncio.CancelledError) as exc:
            self.busy.pop(host, None)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise LaunchError(spec.name, f"cannot start boxer run in {host}: {exc}",
                              code="SpawnFailed") from None
        handle.details["pid"] = pid
        handle.details["zygote"] = zygote.pid
        self._forked[id(handle)] = pid
        waiter = asyncio.get_running_loop().create_task(self._wait_forked(handle, zygote, pid, host))
        self._waiters.add(waiter)
        waiter.add_done_callback(self._waiters.discard)
        log.info("launched %s in %s (pid %d, forked from the zygote)", spec.name, host, pid)
        return handle

    async def _wait_forked(self, handle: InstanceHandle, zygote: Any, pid: int, host: str) -> None:
        from boxer.backends.zygote import ZygoteError

        try:
            code = await asyncio.shield(zygote.wait(pid))
        except ZygoteError:
            # Nobody can tell us when it ends now: end it, so its host can be reused safely.
            log.error("lost the zygote while %s ran (pid %d): killing it", handle.spec.name, pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            code = -signal.SIGKILL
        zygote.forget(pid)
        self._forked.pop(id(handle), None)
        self._ended(handle, host, code)

    async def _wait(self, handle: InstanceHandle, proc: asyncio.subprocess.Process,
                    host: str) -> None:
        code = await proc.wait()
        self._procs.pop(id(handle), None)
        self._ended(handle, host, code)

    def _ended(self, handle: InstanceHandle, host: str, code: int) -> None:
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

    def adopt(self, spec: InstanceSpec, host: str) -> InstanceHandle | None:
        """An instance a crashed controller launched on `host`, still running there (its own
        session: it outlives the controller and the zygote): its host counts as busy until the
        controller lets go of it, so nothing else is placed there meanwhile. No process of ours
        to wait for or signal: the coordinator's Stop ends it, its InstanceDown says it left.
        None when `host` is not one of this lab's, or is taken."""
        if host not in self.pools.get(spec.placement, ()) or host in self.busy:
            return None
        handle = InstanceHandle(spec=spec, backend=self.name, details={"host": host, "adopted": True})
        self.busy[host] = handle

        def free(ended: InstanceHandle) -> None:
            if self.busy.get(host) is ended:
                del self.busy[host]
                self._freed.set()

        handle.on_end(free)
        return handle

    async def stop(self, handle: InstanceHandle) -> None:
        if id(handle) in self._forked:
            await self._stop_forked(handle, self._forked[id(handle)])
            return
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

    async def _stop_forked(self, handle: InstanceHandle, pid: int) -> None:
        """As for a process of our own, through the zygote (the parent, which signals only an
        unreaped child)."""
        from boxer.backends.zygote import ZygoteError

        zygote = self._zygote
        try:
            exited = zygote.wait(pid)
            zygote.signal(pid, signal.SIGTERM)
            zygote.signal(pid, signal.SIGCONT, group=True)
            try:
                await asyncio.wait_for(asyncio.shield(exited), self.stop_grace)
            except asyncio.TimeoutError:
                log.warning("%s ignored SIGTERM for %.1f s; killing it", handle.spec.name,
                            self.stop_grace)
                zygote.signal(pid, signal.SIGKILL, group=True)
                await asyncio.shield(exited)
        except (ZygoteError, KeyError):
            pass  # gone already, or the zygote is (its waiter kills it)
        handle.mark_stopped("stopped")
        await asyncio.sleep(0)

    async def leave(self) -> None:
        """Let go of the instances without stopping them (a controller host's SIGTERM: the
        next controller adopts them): each runs in its own session, so it outlives the
        controller and the zygote; only our waiters and the zygote's pipe go."""
        for task in list(self._waiters):
            task.cancel()
        if self._zygote_start is not None and not self._zygote_start.done():
            self._zygote_start.cancel()
        if self._zygote is not None:
            await self._zygote.close()

    async def close(self) -> None:
        """Stop whatever still runs (the controller normally stopped everything already)."""
        running = [h for h in list(self.busy.values()) if not h.ended]
        await asyncio.gather(*(self.stop(h) for h in running), return_exceptions=True)
        await self.leave()  # nothing is left to leave running: what remains is ours to let go


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
