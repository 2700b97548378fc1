"""`boxer run`: one application process as a host of the overlay, from start to exit."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import signal
import tempfile
from dataclasses import dataclass

from boxer.agent.agent import WAKE_ADDR, Agent, Timeouts, nat_idle_timeout
from boxer.agent.child import (
    AppProcess,
    become_subreaper,
    child_environment,
    descendants,
    exit_status,
    start_child,
    stop_child,
    stop_descendants,
    wait_descendants,
)
from boxer.agent.control import CoordinatorError, open_session
from boxer.agent.fastpath import FastPath
from boxer.agent.ipc_server import IpcServer
from boxer.agent.link import CoordinatorLink, LinkTimeouts
from boxer.agent.spares import warm_spares
from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 5.0
# A drain arrives while connections brokered just before it are still being punched or woken:
# they are not counted as open yet. Wait this long before believing "no connections".
DRAIN_SETTLE = 1.0


class RunError(Exception):
    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RunOptions:
    argv: list[str]
    name: str
    service: str
    coordinator: tuple[str, int]
    # The instance's id and token (auth.Credential): all the agent holds. The deployment secret
    # never reaches it when a controller starts it; `boxer run` given the secret derives the
    # token and forgets the secret (boxer/cli/run.py).
    credential: auth.Credential
    lifetime: float | None = None
    connect_timeout: float = 5.0


def _raise_fd_limit() -> None:
    """The agent holds a few descriptors per connection in flight: use all the hard limit allows
    (on Lambda both are 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run_instance(opts: RunOptions) -> int:
    from boxer.agent.features import current

    try:  # the settings read from the environment, checked before anything starts
        nat_idle = nat_idle_timeout()
        warm_spares()
    except ValueError as exc:
        raise RunError(f"{exc}; {opts.argv[0]} was not started") from None
    _raise_fd_limit()
    current()  # probe the kernel and sandbox once, now; what is missing is logged with its fallback
    become_subreaper()
    assert opts.credential.instance is not None, "an agent authenticates as an instance"
    register = m.Register(name=opts.name, service=opts.service, instance=opts.credential.instance)
    try:
        session = await open_session(opts.coordinator, opts.credential, register)
    except CoordinatorError as exc:
        raise RunError(f"{exc}; {opts.argv[0]} was not started") from None
    reg = session.registration
    log.info("registered as %s at %s", reg.name, reg.addr)
    link = CoordinatorLink(session, opts.coordinator, opts.credential, register,
                           LinkTimeouts(ping_interval=min(5.0, nat_idle / 3)))
    timeouts = Timeouts(connect=opts.connect_timeout, punch=min(3.0, opts.connect_timeout),
                        ticket_max_age=nat_idle / 3)
    fast = FastPath(reg.addr, WAKE_ADDR, timeouts.accept_pickup)
    agent = Agent(link, opts.coordinator, opts.credential.key, fast, timeouts=timeouts)
    workdir = tempfile.mkdtemp(prefix="boxer-agent-")
    # 0711: the app's descendants that dropped to another user reach the socket and resolv.conf by
    # their paths (from the environment) but cannot list the folder; who may talk to the agent
    # is decided by the peer check (boxer/agent/peercheck.c), not by these modes.
    os.chmod(workdir, 0o711)
    server = IpcServer(os.path.join(workdir, "agent.sock"), agent.handle_ipc, fast, agent.on_fast_event)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    proc = None
    dns_server = None
    try:
        await server.start()
        agent.start()
        env = child_environment(dict(os.environ), agent_sock=server.path, name=reg.name, addr=reg.addr,
                                prefix=reg.prefix, wake_addr=WAKE_ADDR)
        dns_server = await _start_dns(agent, reg.addr, workdir, env)
        proc = await start_child(opts.argv, env)
        await _confirm_interposer(agent, proc, opts.argv[0])
        agent.attach_app(proc.pid, opts.lifetime)
        waiters = {asyncio.create_task(proc.wait()): "exit", asyncio.create_task(stopping.wait()): "signal",
                   agent.stop_request: "controller"}
        if opts.lifetime is not None:
            waiters[asyncio.create_task(asyncio.sleep(opts.lifetime))] = "lifetime"
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            if task is not agent.stop_request:
                task.cancel()
        reason = waiters[next(iter(done))]
        if reason == "exit" and descendants():
            reason = await _follow_daemon(opts, agent, stopping)
        if reason == "controller":
            kind, detail = agent.stop_request.result()
            if kind == "drain":
                await _drain(agent, proc, float(detail))  # type: ignore[arg-type]
            reason = f"{kind} requested by the controller"
        if reason != "exit":
            log.info("stopping %s (%s)", opts.argv[0], reason)
            await stop_child(proc)
        assert proc.returncode is not None
        if descendants():
            await stop_descendants()
        await agent.send_report(exited=exit_status(proc.returncode))
        return exit_status(proc.returncode)
    finally:
        if proc is not None and proc.returncode is None:
            await stop_child(proc)
        if dns_server is not None:
            dns_server[0].close()
            dns_server[1].close()
        agent.close()
        await link.close()
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


async def _start_dns(agent: Agent, addr: str, workdir: str, env: dict[str, str]):
    """A DNS responder for programs that send their own queries (nginx `resolver`, dig): on a
    loopback address of this instance's own, and a resolv.conf naming it, which the interposer
    shows the app in place of /etc/resolv.conf. Port 53 needs privileges (not on Lambda): then
    such programs simply keep the machine's resolver."""
    from boxer.agent import dns

    host = dns.loopback_for(addr)
    try:
        served = await dns.serve_dns(agent.names, host, 53, upstream=dns.first_nameserver())
    except OSError as exc:
        log.info("no DNS responder on %s:53 (%s); getaddrinfo still resolves overlay names", host, exc)
        return None
    resolv = os.path.join(workdir, "resolv.conf")
    with open(resolv, "w") as f:
        f.write(f"# written by boxer: overlay names first, the rest forwarded\nnameserver {host}\n")
    os.chmod(resolv, 0o644)  # read by the app's descendants whatever their user (and the agent's umask)
    env["BOXER_RESOLV_CONF"] = resolv
    return served


async def _follow_daemon(opts: RunOptions, agent: Agent, stopping: asyncio.Event) -> str:
    """The program daemonized: keep serving its descendants until they are gone, or we are told
    to stop (their exit status is not ours to know; the direct child's is reported)."""
    log.info("%s daemonized; following its descendants %s", opts.argv[0], descendants())
    stop = asyncio.create_task(stopping.wait())
    gone = asyncio.create_task(wait_descendants())
    done, _ = await asyncio.wait({stop, gone, agent.stop_request}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    gone.cancel()
    if agent.stop_request in done:
        return "controller"
    return "signal" if stopping.is_set() else "exit"


async def _drain(agent: Agent, proc: AppProcess, grace: float) -> None:
    """No new connections come (the coordinator stopped routing them here); let the open ones
    finish, up to `grace` seconds, or until the app exits on its own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    settled = loop.time() + min(grace, DRAIN_SETTLE)
    while proc.returncode is None and loop.time() < deadline:
        if loop.time() >= settled and agent.open_connections() == 0:
            return
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), 0.2)
        except asyncio.TimeoutError:
            pass


async def _confirm_interposer(agent: Agent, proc: AppProcess, program: str) -> None:
    """glibc runs a program unwrapped when LD_PRELOAD cannot be loaded: refuse to carry on then."""
    hello = asyncio.create_task(agent.hello_event.wait())
    exited = asyncio.create_task(proc.wait())
    done, _ = await asyncio.wait({hello, exited}, timeout=HELLO_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if hello not in done and exited in done:
        # A short-lived program exits right after its constructor said hello: give it a moment.
        try:
            await asyncio.wait_for(hello, 0.5)
        except asyncio.TimeoutError:
            pass
    exited.cancel()
    if not hello.done():
        hello.cancel()
        await stop_child(proc, grace=1.0)
        raise RunError(f"the interposer did not load in {program} (LD_PRELOAD was not applied), so it "
                       "was stopped rather than run outside the overlay", status=126)
