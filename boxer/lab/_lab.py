"""Bring a lab up, find it again, run things in it, and take it down (also after a crash)."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from boxer._python import module_argv
from boxer.lab import _firewall, _netns, _process, _shaping, _state
from boxer.lab._conditions import LinkConditions, validate_mapping_timeout
from boxer.lab._plan import (
    COORDINATOR_HOST,
    DEFAULT_NAME,
    LabHost,
    LabPlan,
    PublicHost,
    lab_plan,
    netns_prefix,
    parse_endpoint,
    parse_host_name,
    validate_name,
)
from boxer.lab.errors import (
    CoordinatorStartError,
    LabExistsError,
    LabNotFoundError,
    LabUsageError,
    NotRootError,
)

log = logging.getLogger(__name__)

COORDINATOR_CMD_ENV = "BOXER_LAB_COORDINATOR_CMD"
COORDINATOR_READY_TIMEOUT = 10.0
# Buckets of each instance host's own TCP table: what a small VM (a Lambda sandbox) gets from
# its own kernel, rather than a share of this machine's, which every socket listing walks.
HOST_TCP_TABLE = 4096


def default_coordinator_cmd() -> list[str]:
    """The program part of the coordinator's command line; the lab appends --listen,
    --secret-file and --ready-file. `BOXER_LAB_COORDINATOR_CMD` (shell words) replaces it,
    e.g. with a stand-in while testing the lab alone."""
    override = os.environ.get(COORDINATOR_CMD_ENV)
    if override:
        return shlex.split(override)
    return module_argv("boxer", "coordinator")


@dataclass(frozen=True)
class LabProcess:
    """A process the lab started itself (the coordinator), recorded to kill it on `down`."""

    role: str
    pid: int
    netns: str
    argv: tuple[str, ...]


@dataclass(eq=False)
class Lab:
    """A running lab: its topology and where its state lives.

    A handle, not a value: set_link and port_forward change the lab (and its state file) and
    bring `processes`, `port_forwards` and `links` up to date in place, so it is not frozen.
    Compared by identity."""

    plan: LabPlan
    created_at: float
    setup_seconds: float
    processes: tuple[LabProcess, ...] = ()
    port_forwards: tuple[tuple[str, int], ...] = field(default=())
    # Per endpoint ("coord", "h<i>", "p<k>"); a missing one is a clean link.
    links: Mapping[str, LinkConditions] = field(default_factory=dict)
    mapping_timeout: int | None = None  # seconds; None: the kernel's conntrack defaults

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def hosts(self) -> tuple[LabHost, ...]:
        return self.plan.hosts

    @property
    def coordinator(self) -> str:
        """host:port of the coordinator, on the lab's public segment."""
        return self.plan.coordinator

    @property
    def coordinator_netns(self) -> str:
        return self.plan.coordinator_netns

    @property
    def internet_netns(self) -> str:
        return self.plan.internet_netns

    @property
    def state_dir(self) -> Path:
        return _state.state_dir(self.name)

    @property
    def secret_file(self) -> Path:
        return _state.secret_path(self.name)

    @property
    def coordinator_log(self) -> Path:
        return _state.coordinator_log(self.name)

    @property
    def public_hosts(self) -> tuple[PublicHost, ...]:
        return self.plan.public_hosts

    def host(self, name: str) -> LabHost:
        """The NATed host called `name` ("h1", "h2", ...)."""
        if name.startswith("p") and self.public_hosts:
            parse_endpoint(name, len(self.hosts), len(self.public_hosts))  # or a usage error
            raise LabUsageError(f"{name!r} is a public host: use Lab.public_host({name!r})")
        index = parse_host_name(name, len(self.hosts))
        if index is None:
            raise LabUsageError(f"{name!r} is the coordinator host, not an instance host")
        return self.hosts[index - 1]

    def public_host(self, name: str) -> PublicHost:
        """The public (no NAT) host called `name` ("p1", "p2", ...)."""
        kind, index = parse_endpoint(name, len(self.hosts), len(self.public_hosts))
        if kind != "p":
            raise LabUsageError(f"{name!r} is a NATed host: use Lab.host({name!r})")
        return self.public_hosts[index - 1]

    def netns(self, host: str) -> str:
        """The namespace of `host`: "coord", "h<i>" or "p<k>"."""
        return self.plan.netns_of(host)

    def link(self, host: str) -> LinkConditions:
        """The conditions `host`'s link adds (see boxer.lab._conditions)."""
        self.netns(host)  # validates the host name
        return self.links.get(host, LinkConditions())

    def set_link(
        self, host: str, *, rtt: float = 0.0, jitter: float = 0.0, loss: float = 0.0
    ) -> LinkConditions:
        """Give `host`'s link (h<i>: its router's uplink; p<k>, coord: their port on the
        internet bridge, one hop after them) exactly these conditions now: RTT and jitter in
        ms, loss in percent; all zero cleans it.
        Open connections see the new delay and loss at once."""
        self.netns(host)
        link = LinkConditions(rtt=rtt, jitter=jitter, loss=loss)
        if link.clean:  # stop queueing first: nothing new waits for the shaper
            _shaping.apply_queue_rules(self.plan, {host: link})
        with _state.locked(self.name):
            data = _state.read(self.name) or {}
            _put_link(data, host, link)
            _state.write(self.name, data)
            shaper = self._shaper()
            if shaper is not None:
                before = _shaping.reload_count(self.state_dir)
                os.kill(shaper.pid, signal.SIGHUP)
                _shaping.wait_reloaded(shaper.pid, self.state_dir, before, self.shaper_log)
            elif not link.clean:
                shaper = _start_shaper(self)
                data = _state.read(self.name) or {}
                data.setdefault("processes", []).append(_process_entry(shaper))
                _state.write(self.name, data)
                self.processes = (*self.processes, shaper)
        if not link.clean:  # the shaper listens now: queue
            _shaping.apply_queue_rules(self.plan, {host: link})
        self.links = {**self.links, host: link}
        log.info("lab %s: %s link %s", self.name, host, link.summary())
        return link

    @property
    def shaper_log(self) -> Path:
        return self.state_dir / "shaper.log"

    def _shaper(self) -> LabProcess | None:
        for process in self.processes:
            if process.role == "shaper" and _process.is_ours(process.pid, process.netns,
                                                              process.argv):
                return process
        return None

    def flush_mappings(self, host: str) -> None:
        """Drop every NAT mapping of NATed `host`'s router at once, as if all had expired."""
        _shaping.flush_mappings(self.host(host).router_netns)

    def freeze(self, host: str) -> list[int]:
        """SIGSTOP every process inside `host`, as Lambda freezes a sandbox between
        invocations; return their pids. `thaw` resumes them."""
        return self._signal_inside(host, signal.SIGSTOP)

    def thaw(self, host: str) -> list[int]:
        return self._signal_inside(host, signal.SIGCONT)

    def _signal_inside(self, host: str, signum: int) -> list[int]:
        pids = [pid for pid in _netns.pids_inside([self.netns(host)]) if pid != os.getpid()]
        signalled = []
        for pid in pids:
            try:
                os.kill(pid, signum)
                signalled.append(pid)
            except ProcessLookupError:
                pass
        return signalled

    def env(self, host: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: ours) plus the BOXER_* variables a program in `host` sees."""
        self.netns(host)  # validates the host name
        return _process.lab_env(
            base,
            lab=self.name,
            host=host,
            coordinator=self.coordinator,
            secret_file=str(self.secret_file),
        )

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside `host` (without the BOXER_* environment)."""
        return _process.netns_argv(self.netns(host), argv)

    def popen(self, host: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside `host`, like `boxer lab exec`; keyword arguments go to Popen
        (`env`, if given, is the base the BOXER_* variables are added to)."""
        env = self.env(host, popen_kwargs.pop("env", None))
        return subprocess.Popen(self.command(host, argv), env=env, **popen_kwargs)

    def run(
        self, host: str, argv: Sequence[str], *, check: bool = False, **run_kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run `argv` inside `host` to completion (subprocess.run keyword arguments)."""
        env = self.env(host, run_kwargs.pop("env", None))
        return subprocess.run(self.command(host, argv), env=env, check=check, **run_kwargs)

    def port_forward(self, host: str, port: int) -> str:
        """Open public_address:port on `host`'s router to host:port (DNAT); return the public
        "address:port". Only for baselines that measure the network without NAT traversal."""
        target = self.host(host)
        if (host, port) not in self.port_forwards:
            rules = _firewall.port_forward_rules(target.address, port)
            _firewall.apply([(target.router_netns, rules)], noflush=True)
            with _state.locked(self.name):
                data = _state.read(self.name) or {}
                forwards = data.setdefault("port_forwards", [])
                if [host, port] not in forwards:
                    forwards.append([host, port])
                _state.write(self.name, data)
            self.port_forwards = (*self.port_forwards, (host, port))
            log.info("lab %s: %s:%d -> %s:%d", self.name, target.public_address, port,
                     target.address, port)
        return f"{target.public_address}:{port}"

    def describe(self) -> dict[str, Any]:
        """What `boxer lab show -o json` prints."""
        return {
            "name": self.name,
            "coordinator": self.coordinator,
            "coordinator_netns": self.coordinator_netns,
            "internet_netns": self.internet_netns,
            "secret_file": str(self.secret_file),
            "state_dir": str(self.state_dir),
            "created_at": self.created_at,
            "setup_seconds": round(self.setup_seconds, 3),
            "mapping_timeout": self.mapping_timeout,
            "coordinator_link": self.link(COORDINATOR_HOST).describe(),
            "hosts": [
                {
                    "name": h.name,
                    "netns": h.netns,
                    "address": h.address,
                    "public_address": h.public_address,
                    "router_netns": h.router_netns,
                    "nat": h.nat,
                    "link": self.link(h.name).describe(),
                }
                for h in self.hosts
            ]
            + [
                {
                    "name": p.name,
                    "netns": p.netns,
                    "address": p.address,
                    "public_address": p.public_address,
                    "router_netns": None,
                    "nat": None,  # reachable from anywhere on the internet segment
                    "link": self.link(p.name).describe(),
                }
                for p in self.public_hosts
            ],
        }

    def _to_state(self) -> dict[str, Any]:
        return {
            "version": _state.STATE_VERSION,
            **self.describe(),
            "host_count": len(self.hosts),
            "public_count": len(self.public_hosts),
            "processes": [_process_entry(p) for p in self.processes],
            "port_forwards": [list(pf) for pf in self.port_forwards],
        }


def _process_entry(p: LabProcess) -> dict[str, Any]:
    return {"role": p.role, "pid": p.pid, "netns": p.netns, "argv": list(p.argv)}


def _start_shaper(lab: Lab) -> LabProcess:
    """The link emulator, inside the internet namespace (so `down` finds it there too)."""
    pid, argv = _shaping.start_shaper(lab.internet_netns, lab.state_dir, lab.shaper_log)
    log.info("lab %s: shaper pid %d", lab.name, pid)
    return LabProcess(role="shaper", pid=pid, netns=lab.internet_netns, argv=tuple(argv))


def _put_link(data: dict[str, Any], host: str, link: LinkConditions) -> None:
    """Record `host`'s link in lab.json data (the shape `describe` gives it)."""
    if host == COORDINATOR_HOST:
        data["coordinator_link"] = link.describe()
        return
    for entry in data.get("hosts", []):
        if entry.get("name") == host:
            entry["link"] = link.describe()


def _require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError("the lab needs root (network namespaces and iptables): run as root")


def lab_up(
    name: str = DEFAULT_NAME,
    hosts: int = 1,
    *,
    nat: str | Mapping[str, str] | None = None,
    public: int = 0,
    rtt: float = 0.0,
    jitter: float = 0.0,
    loss: float = 0.0,
    mapping_timeout: int | None = None,
    coordinator_cmd: Sequence[str] | None = None,
    ready_timeout: float = COORDINATOR_READY_TIMEOUT,
) -> Lab:
    """Create lab `name` with `hosts` NATed hosts and start its coordinator.

    `nat`: "eim" (default), "symmetric", or per host, "eim,h2=symmetric" or {"h2": "symmetric"}.
    `public`: that many hosts p1..pK with a public address and no NAT.
    `rtt`, `jitter` (ms) and `loss` (percent): conditions of every endpoint's link, so that
    any two endpoints see that RTT and one-way loss (see boxer.lab._conditions).
    `mapping_timeout` (s): idle NAT mappings (TCP established, UDP) expire after it.
    `coordinator_cmd` replaces the coordinator program (see `default_coordinator_cmd`).
    On any failure everything created so far is removed again before the error propagates."""
    plan = lab_plan(name, hosts, nat=nat, public=public)
    link = LinkConditions(rtt=rtt, jitter=jitter, loss=loss)
    timeout = validate_mapping_timeout(mapping_timeout)
    links = {endpoint: link for endpoint in plan.endpoint_names()}
    _require_root()
    if _netns.list_names(netns_prefix(name)) or not _state.claim(name):
        raise LabExistsError(name)
    started = time.monotonic()
    try:
        from boxer.lab import _topology  # pyroute2 is slow to import; only `up` needs it

        hosts = set(plan.instance_netns())
        _netns.create([ns for ns in plan.all_netns() if ns not in hosts])
        _netns.create(plan.instance_netns(), tcp_table=HOST_TCP_TABLE)
        _topology.build(plan)
        for host in plan.hosts:
            _firewall.enable_forwarding(host.router_netns)
        _firewall.apply(
            [(h.router_netns, _firewall.router_rules(nat=h.nat)) for h in plan.hosts]
        )
        if timeout is not None:
            _shaping.apply_mapping_timeout(plan, timeout)
        network_seconds = time.monotonic() - started
        _state.write_secret(name)
        lab = Lab(plan=plan, created_at=time.time(), setup_seconds=network_seconds,
                  links=links, mapping_timeout=timeout)
        _state.write(name, lab._to_state())
        log.info("lab %s: network of %d hosts ready in %.3f s", name, hosts, network_seconds)

        coordinator = _start_coordinator(lab, coordinator_cmd)
        lab = Lab(
            plan=plan,
            created_at=lab.created_at,
            setup_seconds=time.monotonic() - started,
            processes=(coordinator,),
            links=links,
            mapping_timeout=timeout,
        )
        _state.write(name, lab._to_state())
        _wait_ready(lab, coordinator, ready_timeout)
        processes: tuple[LabProcess, ...] = (coordinator,)
        if not link.clean:
            processes += (_start_shaper(lab),)
            _state.write(name, replace(lab, processes=processes)._to_state())
            _shaping.apply_queue_rules(plan, links)
        lab = Lab(plan=plan, created_at=lab.created_at, setup_seconds=time.monotonic() - started,
                  processes=processes, links=links, mapping_timeout=timeout)
        _state.write(name, lab._to_state())
    except BaseException:
        log.info("lab %s: setup failed, removing what was created", name)
        lab_down(name)
        raise
    log.info("lab %s up in %.3f s", name, lab.setup_seconds)
    return lab


def _start_coordinator(lab: Lab, cmd: Sequence[str] | None) -> LabProcess:
    argv = [
        *(default_coordinator_cmd() if cmd is None else cmd),
        "--listen",
        lab.coordinator,
        "--secret-file",
        str(lab.secret_file),
        "--ready-file",
        str(_state.coordinator_ready_file(lab.name)),
    ]
    env = lab.env(COORDINATOR_HOST)
    pid = _process.spawn_detached(lab.coordinator_netns, argv, lab.coordinator_log, env)
    log.info("lab %s: coordinator pid %d: %s", lab.name, pid, shlex.join(argv))
    return LabProcess(role="coordinator", pid=pid, netns=lab.coordinator_netns, argv=tuple(argv))


def _wait_ready(lab: Lab, coordinator: LabProcess, timeout: float) -> None:
    ready = _state.coordinator_ready_file(lab.name)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if not _process.alive(coordinator.pid):
            raise CoordinatorStartError(
                "exited before it was ready", str(lab.coordinator_log),
                _process.tail(lab.coordinator_log),
            )
        if time.monotonic() > deadline:
            raise CoordinatorStartError(
                f"was not ready within {timeout:g} s (no {ready})", str(lab.coordinator_log),
                _process.tail(lab.coordinator_log),
            )
        time.sleep(0.01)


def load_lab(name: str = DEFAULT_NAME) -> Lab:
    """The running lab `name`, from its state file."""
    validate_name(name)
    try:
        data = _state.read(name)
    except json.JSONDecodeError as exc:
        raise LabNotFoundError(name, list_labs()) from exc
    if data is None:
        raise LabNotFoundError(name, list_labs())
    # Labs made before NAT types and public hosts existed have neither recorded: eim, none.
    entries = data.get("hosts", [])
    nat = {h["name"]: h["nat"] for h in entries if h.get("nat")}
    links = {h["name"]: LinkConditions.from_description(h.get("link")) for h in entries}
    links[COORDINATOR_HOST] = LinkConditions.from_description(data.get("coordinator_link"))
    return Lab(
        plan=lab_plan(name, int(data["host_count"]), nat=nat,
                      public=int(data.get("public_count", 0))),
        links=links,
        mapping_timeout=data.get("mapping_timeout"),
        created_at=float(data["created_at"]),
        setup_seconds=float(data["setup_seconds"]),
        processes=tuple(
            LabProcess(role=p["role"], pid=int(p["pid"]), netns=p["netns"], argv=tuple(p["argv"]))
            for p in data.get("processes", [])
        ),
        port_forwards=tuple((str(h), int(p)) for h, p in data.get("port_forwards", [])),
    )


@dataclass(frozen=True)
class DownReport:
    """What `lab_down` removed (all empty: there was nothing left to remove)."""

    name: str
    killed: tuple[int, ...]
    namespaces: tuple[str, ...]
    state_removed: bool

    @property
    def found(self) -> bool:
        return bool(self.killed or self.namespaces or self.state_removed)


def _recorded_processes(name: str) -> list[LabProcess]:
    try:
        data = _state.read(name)
    except (json.JSONDecodeError, OSError) as exc:
        log.warning("lab %s: unreadable state file (%s); removing by namespace names", name, exc)
        return []
    if not data:
        return []
    return [
        LabProcess(role=p["role"], pid=int(p["pid"]), netns=p["netns"], argv=tuple(p["argv"]))
        for p in data.get("processes", [])
    ]


def lab_down(name: str = DEFAULT_NAME) -> DownReport:
    """Remove lab `name` entirely; idempotent, and it needs no state file (after a crash)."""
    validate_name(name)
    _require_root()
    pids = [
        p.pid for p in _recorded_processes(name) if _process.is_ours(p.pid, p.netns, p.argv)
    ]
    names = _netns.list_names(netns_prefix(name))
    # Whatever else still runs inside the lab (agents, apps started with `lab exec`) would
    # keep the namespaces alive after we unmount them; it goes down with the lab.
    inside = [pid for pid in _netns.pids_inside(names) if pid != os.getpid()]
    for pid in sorted(set(inside) - set(pids)):
        log.info("lab %s: stopping pid %d still running inside it", name, pid)
    killed = _process.terminate(pids + inside)
    removed = [ns for ns in names if _netns.remove(ns)]
    state_removed = _state.remove(name)
    report = DownReport(name, tuple(sorted(killed)), tuple(removed), state_removed)
    log.info("lab %s down: %d processes, %d namespaces", name, len(killed), len(removed))
    return report


_LAB_NETNS_RE = re.compile(r"bx-([a-z0-9]{1,10})-(?:inet|coord|[rhp][0-9]+)")


def list_labs() -> list[str]:
    """Names of labs with any trace on this machine (state dir or namespaces)."""
    names = set(_state.list_names())
    for ns in _netns.list_names("bx-"):
        match = _LAB_NETNS_RE.fullmatch(ns)
        if match:
            names.add(match.group(1))
    return sorted(names)


def lab_down_all() -> list[DownReport]:
    return [lab_down(name) for name in list_labs()]
