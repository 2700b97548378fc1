"""A local Lambda: run the real handler the way AWS Lambda runs it, on this machine.

`invoke_local(event)` starts a Runtime API server (runtime_api.py) and, as a child process,
`python -m awslambdaric boxer.backends.aws_lambda.handler.handler` - the image's own entry point - with
AWS_LAMBDA_RUNTIME_API pointing at it. Like Lambda it

- hands the runtime one event with a deadline (context.get_remaining_time_in_millis works),
- caps RLIMIT_NOFILE at 1024,
- kills the whole process tree when the function timeout passes,
- and ends the sandbox once the invocation answered (Lambda would freeze it).

With `image=` (an ImageRoot: image.py) the runtime is the image's own ENTRYPOINT + CMD, run
from the image's root filesystem in a sandbox (sandbox.py: read-only root, 512 MB tmpfs on /tmp,
uid 993, no capabilities, 1024 descriptors and processes) with Lambda's environment variables
and nothing of ours: what Lambda runs when it runs the function's image.

To put the function behind the lab's NAT, pass `wrap_argv=["ip", "netns", "exec", "bx-lab-h1"]`.
The child must then reach the Runtime API server: either give `listen_host` an address the
namespace can reach, or - what LocalLambdaBackend (the `lambda-local` backend) does - run this
whole module inside the namespace (`python -m boxer.backends.emulators.lambda_local`, event on
stdin, result on stdout), so the server listens on the namespace's own loopback, as Lambda's
runtime API sits inside its sandbox.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from boxer._python import module_argv
from boxer.backends.aws_lambda.event import event_for
from boxer.backends.base import InstanceHandle, InstanceSpec, Placement
from boxer.backends.emulators.image import ImageRoot
from boxer.backends.emulators.runtime_api import RuntimeApiServer
from boxer.backends.emulators.sandbox import SandboxConfig, sandbox_argv
from boxer.backends.local import LocalBackend

__all__ = ["DEFAULT_HANDLER", "MAX_TIMEOUT", "LocalLambdaBackend", "LocalResult", "invoke_local"]

log = logging.getLogger(__name__)

DEFAULT_HANDLER = "boxer.backends.aws_lambda.handler.handler"
MAX_TIMEOUT = 900.0  # Lambda's cap, seconds
NOFILE_LIMIT = 1024
_TICK = 0.05


@dataclass(frozen=True)
class LocalResult:
    """`status`: ok (handler returned), error (handler raised / could not load),
    timeout (killed at the function timeout), crashed (runtime died without answering),
    stopped (ended from outside)."""

    status: str
    payload: Any
    duration: float
    error_type: str | None = None
    init_duration: float | None = None  # runtime start to its first /next (Lambda's Init Duration)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lambda_environment(*, runtime_api: str, timeout: float, memory_mb: int, function: str = "boxer-local",
                       region: str = "us-east-1", handler: str = DEFAULT_HANDLER,
                       image_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What Lambda puts in a function's environment: the image's ENV (when it runs an image),
    with Lambda's reserved variables on top."""
    env = {"PATH": "/usr/local/bin:/usr/bin/:/bin:/opt/bin", "LANG": "en_US.UTF-8", "TZ": ":UTC",
           "LD_LIBRARY_PATH": "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:"
                              "/var/task:/var/task/lib:/opt/lib"}
    env.update(image_env or {})
    env.update(
        _HANDLER=handler,
        AWS_LAMBDA_RUNTIME_API=runtime_api,
        AWS_LAMBDA_FUNCTION_NAME=function,
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(memory_mb),
        AWS_LAMBDA_FUNCTION_TIMEOUT=str(int(timeout)),
        AWS_LAMBDA_INITIALIZATION_TYPE="on-demand",
        AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{function}",
        AWS_LAMBDA_LOG_STREAM_NAME="local/[$LATEST]boxer",
        AWS_REGION=region,
        AWS_DEFAULT_REGION=region,
        LAMBDA_TASK_ROOT="/var/task",
        LAMBDA_RUNTIME_DIR="/var/runtime",
    )
    return env


def invoke_local(
    event: Any,
    *,
    handler: str = DEFAULT_HANDLER,
    timeout: float = MAX_TIMEOUT,
    wrap_argv: Sequence[str] = (),
    listen_host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
    memory_mb: int = 1769,
    stop: Callable[[], bool] = lambda: False,
    image: ImageRoot | None = None,
    copies: Sequence[tuple[str, str]] = (),
    deny: Sequence[str] = (),
) -> LocalResult:
    """Run one invocation of `handler` under awslambdaric; blocks until it ends.

    `stop()` is polled; when it turns true the sandbox is killed (status "stopped").
    `image`: run the image's entry point in a sandbox instead (`env` is then the function's
    configured environment, on top of Lambda's; `copies` and `deny` go to the sandbox).
    """
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout {timeout} s must be in (0, {MAX_TIMEOUT:g}] like Lambda's")
    started = time.monotonic()
    with RuntimeApiServer(listen_host) as server:
        outcome = server.invoke(event, timeout)
        if image is not None:
            child_env = lambda_environment(runtime_api=server.address, timeout=timeout, memory_mb=memory_mb,
                                           handler=" ".join(image.cmd), image_env=image.env)
            child_env.update(env or {})
            config = SandboxConfig(root=image.rootfs, argv=image.runtime_argv, workdir=image.workdir,
                                   copies=tuple(copies), deny=tuple(deny))
            argv = [*wrap_argv, *sandbox_argv(config, python)]
        else:
            child_env = dict(os.environ if env is None else env)
            child_env.update(
                AWS_LAMBDA_RUNTIME_API=server.address,
                AWS_LAMBDA_FUNCTION_NAME="boxer-local",
                AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
                AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(memory_mb),
                AWS_LAMBDA_FUNCTION_TIMEOUT=str(int(timeout)),
            )
            argv = [*wrap_argv, *module_argv("awslambdaric", handler, python=python)]
        log.info("local lambda: starting %s (timeout %g s)", argv, timeout)
        runtime = subprocess.Popen(argv, env=child_env, stdin=subprocess.DEVNULL,
                                   start_new_session=True,
                                   # setrlimit only: safe even with the server thread
                                   preexec_fn=_cap_open_files)
        runtime_started = time.monotonic()
        try:
            result = _wait(runtime, outcome, started, timeout, stop)
        finally:
            _kill_tree(runtime)
        if server.first_next_at is not None:
            result = replace(result, init_duration=round(server.first_next_at - runtime_started, 3))
        return result


def _wait(runtime: subprocess.Popen[bytes], outcome: Any, started: float, timeout: float,
          stop: Callable[[], bool]) -> LocalResult:
    deadline = started + timeout
    while True:
        try:
            answer = outcome.result(timeout=_TICK)
        except FutureTimeout:
            pass
        else:
            status = "ok" if answer.ok else "error"
            error_type = answer.error_type
            if not answer.ok and error_type is None and isinstance(answer.payload, dict):
                error_type = answer.payload.get("errorType")
            return LocalResult(status, answer.payload, _since(started), error_type)
        if runtime.poll() is not None:
            return LocalResult("crashed", {"exit_code": runtime.returncode}, _since(started))
        if stop():
            return LocalResult("stopped", None, _since(started))
        if time.monotonic() >= deadline:
            log.warning("local lambda: timeout after %g s, killing the sandbox", timeout)
            return LocalResult("timeout", {"errorMessage": f"Task timed out after "
                                           f"{timeout:.2f} seconds"}, _since(started))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _cap_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    def limit(v):
        return NOFILE_LIMIT if v == resource.RLIM_INFINITY else min(v, NOFILE_LIMIT)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit(soft), limit(hard)))


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the runtime and every descendant, also those in their own process group
    (the handler starts the agent in a new session): Lambda ends the whole sandbox."""
    try:
        tree = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for proc in [*tree]:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


# -- the backend ----------------------------------------------------------------------------

Wrap = Sequence[str] | Callable[[InstanceSpec], Sequence[str]] | None


class LocalLambdaBackend(LocalBackend):
    """`lambda-local`: each instance is one local Lambda invocation inside its own lab host: the
    Runtime API, the real awslambdaric runtime client and our handler, which starts `boxer run`
    with the event's command, as on AWS, behind the host's NAT. Hosts, logs and stopping are the
    `local` backend's (one host per instance); the sandbox is this module's entry point, its event
    on stdin, its answer (a LocalResult) the last line of the instance's log: `result(handle)`.

    With `image_file` (an opened image, boxer.backends.emulators.image) each invocation runs the
    image's entry point from its root filesystem in a Lambda-like sandbox. As on AWS, the
    sandbox gets no deployment secret: the event carries the instance's token."""

    name = "lambda-local"

    def __init__(self, lab: Any, *, timeout: float = MAX_TIMEOUT, handler: str = DEFAULT_HANDLER,
                 image_file: str | Path | None = None, deny: Sequence[str] = (), host_daemons: bool = False,
                 host_port: int = 7100, **options: Any) -> None:
        """`deny`: system calls, `family:NAME`s and SO_REUSEPORT the sandbox refuses, as a kernel
        without them would (with image_file; boxer.backends.emulators.sandbox).

        `host_daemons`: the lab's public hosts play the EC2 vm hosts of the lambda backend's vm
        tier: each runs `boxer host serve` (started with the first `vm` instance, on
        `host_port`), and `vm` instances go through them (boxer.backends.vmhost), as on AWS,
        instead of being invocations on a public host."""
        if not 0 < timeout <= MAX_TIMEOUT:
            raise ValueError(f"timeout {timeout} s must be in (0, {MAX_TIMEOUT:g}]")
        super().__init__(lab, **options)
        self.timeout = timeout
        self.handler = handler
        self.image_file = str(image_file) if image_file is not None else None
        self.deny = tuple(deny)
        self.host_daemons = host_daemons and bool(lab.public_hosts)
        self.host_port = host_port
        self.vm_tier: Any = None
        self._daemons: dict[str, Any] = {}  # public host -> its daemon's process
        self._daemons_up: Any = None  # the task starting them
        self._token_file: Any = None  # their token (TokenFile), removed by close()
        self._binding: set[Any] = set()  # adopted vm instances' tasks, binding them to the tier
        self._kept_daemons: dict[str, int] = {}  # public host -> pid of a daemon a predecessor left

    # -- the vm tier: host daemons on the public hosts ------------------------------------------

    def vm_event(self, spec: InstanceSpec) -> dict[str, Any]:
        """What a vm host's daemon gets: the event a function instance gets (the instance's id
        and token, never the secret)."""
        return event_for(spec, coordinator=self.lab.coordinator).to_dict()

    async def _start_daemons(self) -> Any:
        import asyncio

        from boxer.backends.aws_lambda.secrets import TokenFile
        from boxer.backends.vmhost.protocol import host_token
        from boxer.backends.vmhost.tier import StaticHosts, VmTier
        from boxer.nat_traversal.auth import load_secret

        # The daemons get their token, not the lab's secret (as on EC2, where the hosts never
        # hold it): apps of vm instances run beside them.
        token = host_token(load_secret(str(self.lab.secret_file), None))
        self._token_file = TokenFile(token.hex())
        env = {key: value for key, value in self.base_env.items() if not key.startswith("BOXER_SECRET")}

        async def start(host: Any) -> str:
            argv = module_argv("boxer", "host", "serve", "--listen", f"{host.address}:{self.host_port}",
                               "--token-file", str(self._token_file.path), "--name", host.name,
                               *(["--log-dir", str(self.log_dir)] if self.log_dir is not None else []),
                               python=self.python)
            log_file = (open(self.log_dir / f"host-daemon.{host.name}.log", "ab")  # noqa: SIM115
                        if self.log_dir is not None else None)
            process = await asyncio.create_subprocess_exec(
                *self.lab.command(host.name, argv),
                env={k: v for k, v in self.lab.env(host.name, env).items() if not k.startswith("BOXER_SECRET")},
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=log_file or asyncio.subprocess.DEVNULL, start_new_session=True)
            if log_file is not None:
                log_file.close()
            self._daemons[host.name] = process
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 20)  # "... serving on ..."
            if b"serving on" not in line:
                raise RuntimeError(f"the host daemon in {host.name} did not start (see host-daemon.{host.name}.log)")
            return f"{host.address}:{self.host_port}"

        hosts = self.lab.public_hosts
        addresses = [f"{host.address}:{self.host_port}" for host in hosts]
        tier = VmTier(StaticHosts(addresses), token, backend=self.name,
                      event_for=self.vm_event, stop_grace=self.stop_grace, host_wait=self.host_wait)
        # A controller that stopped (SIGTERM) or crashed left its daemons running, with the vm
        # instances the next controller adopts: one that answers with our token is used as it
        # is (its pid kept, to stop it at the end), not started again beside itself.
        answering = await tier.reachable()
        for host, address in zip(hosts, addresses, strict=True):
            pid = _daemon_pid(self.lab.netns(host.name), address) if address in answering else None
            if pid is not None:
                self._kept_daemons[host.name] = pid
                log.info("vm tier: the host daemon in %s (pid %d) runs already; using it", host.name, pid)
        await asyncio.gather(*(start(host) for host in hosts if host.name not in self._kept_daemons))
        self.vm_tier = tier
        log.info("vm tier: host daemons on %s", ", ".join(addresses))
        return self.vm_tier

    async def vm_hosts_ready(self) -> Any:
        """The vm tier, its host daemons started (once: by the first vm launch, or before)."""
        import asyncio

        if self._daemons_up is None:
            self._daemons_up = asyncio.get_running_loop().create_task(self._start_daemons())
        return await asyncio.shield(self._daemons_up)

    async def launch(self, spec: InstanceSpec) -> InstanceHandle:
        if not (self.host_daemons and spec.placement is Placement.VM):
            return await super().launch(spec)
        tier = await self.vm_hosts_ready()
        # Its output is read from its host daemon (`logs`), as on AWS: no details["log"].
        handle: InstanceHandle = await tier.launch(spec)
        return handle

    def adopt(self, spec: InstanceSpec, host: str) -> InstanceHandle | None:
        """As the local backend's, but a vm instance with host daemons is the vm tier's: its
        handle is bound once the daemons are found (or started) and one lists it."""
        if not (self.host_daemons and spec.placement is Placement.VM):
            return super().adopt(spec, host)
        import asyncio

        handle = InstanceHandle(spec=spec, backend=self.name, details={"tier": "vm", "host": host})

        async def bind() -> None:
            tier = await self.vm_hosts_ready()
            tier.adopt(spec, handle)

        task = asyncio.get_running_loop().create_task(bind())
        self._binding.add(task)
        task.add_done_callback(self._binding.discard)
        return handle

    async def stop(self, handle: InstanceHandle) -> None:
        if handle.details.get("tier") == "vm" and self._binding:
            import asyncio

            await asyncio.gather(*self._binding, return_exceptions=True)  # adopted: its tier on its way
        if handle.details.get("tier") == "vm" and self.vm_tier is not None:
            await self.vm_tier.stop(handle)
            return
        await super().stop(handle)

    async def leave(self) -> None:
        """Let go without stopping anything (a controller host's SIGTERM): the invocations
        and the host daemons (each in its own session) run on, with the vm instances they
        started; the next controller finds the daemons on their port and uses them."""
        if self.vm_tier is not None:
            await self.vm_tier.close()
        if self._daemons_up is not None and not self._daemons_up.done():
            self._daemons_up.cancel()
        if self._token_file is not None:
            self._token_file.remove()  # the daemons read it when they started
        await super().leave()

    async def close(self) -> None:
        import asyncio
        import contextlib

        if self.vm_tier is not None:
            running = [h for link in self.vm_tier.links.values() for h in link.handles.values()]
            await asyncio.gather(*(self.vm_tier.stop(h) for h in running), return_exceptions=True)
            await self.vm_tier.close()
        if self._daemons_up is not None and not self._daemons_up.done():
            self._daemons_up.cancel()
        for process in self._daemons.values():  # SIGTERM: each stops what it still runs, then exits
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in self._daemons.values():
            try:
                await asyncio.wait_for(process.wait(), self.stop_grace + 3)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        for pid in self._kept_daemons.values():  # not our children: signal, then watch /proc
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace + 3
        while any(os.path.exists(f"/proc/{pid}") for pid in self._kept_daemons.values()):
            if time.monotonic() > deadline:
                for pid in self._kept_daemons.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                break
            await asyncio.sleep(0.05)
        self._kept_daemons.clear()
        if self._token_file is not None:
            self._token_file.remove()
        await super().close()

    def argv(self, spec: InstanceSpec) -> list[str]:
        argv = module_argv("boxer.backends.emulators.lambda_local", "--timeout", f"{self.timeout:g}",
                           python=self.python)
        if self.image_file is not None:
            argv += ["--image", self.image_file]
            if self.deny:
                argv += ["--deny", ",".join(self.deny)]
        elif self.handler != DEFAULT_HANDLER:
            argv += ["--handler", self.handler]
        return argv

    def credential_env(self, spec: InstanceSpec) -> dict[str, str]:
        return {}  # the token travels in the event, as on AWS; the sandbox's environment has none

    def stdin_for(self, spec: InstanceSpec) -> bytes | None:
        event = event_for(spec, coordinator=self.lab.coordinator)
        return json.dumps(event.to_dict()).encode()

    @staticmethod
    def result(handle: InstanceHandle) -> dict[str, Any] | None:
        """The invocation's LocalResult (as a dict) once its sandbox has answered: the last line
        of the instance's log. None without a log, or before the answer."""
        path = handle.details.get("log")
        if path is None:
            return None
        try:
            last = Path(path).read_text(errors="replace").strip().splitlines()[-1]
            found = json.loads(last)
        except (OSError, IndexError, json.JSONDecodeError):
            return None
        return found if isinstance(found, dict) and "status" in found else None


def _daemon_pid(netns: str, address: str) -> int | None:
    """The pid of the `boxer host serve --listen ADDRESS` in lab namespace `netns`, if one runs
    (what a stopped controller left: its sessions outlive it)."""
    try:
        inode = os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            same = os.stat(f"/proc/{entry}/ns/net").st_ino == inode
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in argv]
        if same and "serve" in words and "--listen" in words and address in words and "host" in words:
            return int(entry)
    return None


# -- the sandbox entry point: python -m boxer.backends.emulators.lambda_local ----------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m boxer.backends.emulators.lambda_local",
        description="Run one Lambda invocation locally: event JSON on stdin, result on stdout.")
    parser.add_argument("--timeout", type=float, default=MAX_TIMEOUT)
    parser.add_argument("--handler", default=DEFAULT_HANDLER)
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--image", metavar="FILE", help="an opened image (JSON, image.py): run its "
                        "entry point from its root filesystem, in a sandbox")
    parser.add_argument("--copy", action="append", default=[], metavar="SRC:DEST",
                        help="with --image: a file to put in the sandbox's /tmp")
    parser.add_argument("--deny", default="", metavar="SYSCALL,...",
                        help="with --image: what the sandbox refuses (sandbox.py)")
    args = parser.parse_args(argv)
    image = None
    if args.image:
        with open(args.image) as file:
            image = ImageRoot.from_dict(json.load(file))
    copies = [tuple(item.split(":", 1)) for item in args.copy]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        event = json.load(sys.stdin)
    except json.JSONDecodeError as exc:
        parser.error(f"stdin is not a JSON event: {exc}")
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    result = invoke_local(event, handler=args.handler, timeout=args.timeout,
                          listen_host=args.listen_host, stop=lambda: stopping, image=image,
                          copies=copies, deny=[d for d in args.deny.split(",") if d])  # type: ignore[arg-type]
    sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
