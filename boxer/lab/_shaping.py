"""Apply link conditions (NFQUEUE rules + the shaper daemon), NAT mapping timeouts
(conntrack sysctls) and mapping flushes inside a lab's namespaces.

Where each endpoint's conditions apply (always the egress of its leg on the internet segment):

    endpoint   namespace with the NFQUEUE rule   device
    h<i>       its router bx-N-r<i>               bx-up (before the NAT rewrites the source)
    coord      bx-N-coord                         bx-up
    p<k>       bx-N-p<k>                          bx-up

The delay itself is held by the shaper daemon (`_shaper.py`; netem is not in every kernel).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from boxer.lab import _firewall, _netns, _process
from boxer.lab._conditions import LinkConditions, mapping_timeout_sysctls
from boxer.lab._plan import COORDINATOR_HOST, UPLINK_IF, LabPlan, parse_endpoint
from boxer.lab.errors import LabSetupError

log = logging.getLogger(__name__)

SHAPER_READY_TIMEOUT = 5.0


def queue_netns(plan: LabPlan, host: str) -> str:
    """The namespace whose uplink egress carries `host`'s packets onto the internet segment."""
    if host == COORDINATOR_HOST:
        return plan.coordinator_netns
    kind, index = parse_endpoint(host, len(plan.hosts), len(plan.public_hosts))
    if kind == "h":
        return plan.hosts[index - 1].router_netns
    return plan.public_hosts[index - 1].netns


def queue_rules(shaped: bool, uplink: str = UPLINK_IF) -> str:
    """The whole mangle table of an endpoint (iptables-restore replaces only the tables it is
    given, so the router's nat and filter tables, port forwards included, stay as they are).
    No --queue-bypass: if the shaper died, a shaped link goes dark instead of silently clean."""
    lines = ["*mangle"]
    if shaped:
        lines.append(f"-A POSTROUTING -o {uplink} -j NFQUEUE --queue-num 0")
    return "\n".join([*lines, "COMMIT", ""])


def apply_queue_rules(plan: LabPlan, links: Mapping[str, LinkConditions]) -> None:
    _firewall.apply(
        [(queue_netns(plan, host), queue_rules(not link.clean)) for host, link in links.items()]
    )


def shaper_argv(state_dir: Path) -> list[str]:
    return [sys.executable, "-m", "boxer.lab._shaper", str(state_dir)]


def _ready_path(state_dir: Path) -> Path:
    return state_dir / "shaper.ready"


def reload_count(state_dir: Path) -> int:
    try:
        return int(_ready_path(state_dir).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def start_shaper(netns: str, state_dir: Path, log_path: Path) -> tuple[int, list[str]]:
    """Start the shaper inside `netns` and wait until it has read lab.json; (pid, argv)."""
    argv = shaper_argv(state_dir)
    before = reload_count(state_dir)
    pid = _process.spawn_detached(netns, argv, log_path, dict(os.environ))
    wait_reloaded(pid, state_dir, before, log_path)
    return pid, argv


def wait_reloaded(pid: int, state_dir: Path, before: int, log_path: Path) -> None:
    deadline = time.monotonic() + SHAPER_READY_TIMEOUT
    while reload_count(state_dir) <= before:
        if not _process.alive(pid):
            raise LabSetupError(
                f"the lab's shaper (pid {pid}) exited; last lines of {log_path}:\n"
                + (_process.tail(log_path) or "(empty)")
            )
        if time.monotonic() > deadline:
            raise LabSetupError(f"the lab's shaper (pid {pid}) did not (re)load its links "
                                f"within {SHAPER_READY_TIMEOUT:g} s; see {log_path}")
        time.sleep(0.005)


def apply_mapping_timeout(plan: LabPlan, seconds: int) -> None:
    """Set the conntrack timeouts in every router namespace (they are per namespace: the
    machine's own and other labs' are untouched)."""
    for host in plan.hosts:
        for key, value in mapping_timeout_sysctls(seconds).items():
            _netns.write_sysctl(host.router_netns, key, value)


def flush_mappings(router_netns: str) -> None:
    """Forget every NAT mapping (conntrack entry) of one router at once, as if all had timed
    out: established flows through it stop, new ones get fresh mappings."""
    result = subprocess.run(
        ["ip", "netns", "exec", router_netns, "conntrack", "-F"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise LabSetupError(f"conntrack -F in {router_netns} failed: {result.stderr.strip()}")
