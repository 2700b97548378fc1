"""A coordinator that freezes, restarts or is cut off costs at most a second of failed connects
(issue 13).

During traffic (an 8 s stream between two instances, whose connection must carry on), the
coordinator is stopped (SIGSTOP) for 4 s, or its link is cut (100 % loss, the lab's own link
conditions) for 10 s, or it is killed and started again. From the moment it is back (for a
restart: listening, as its --ready-file says), a client (an unmodified program under `boxer run`)
connects every 20 ms; its first connect that echoes back must come within NEW_CONNECTS_WITHIN.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from labkit import stop_all

APPS = Path(__file__).parent / "apps"
BOXER = [sys.executable, "-m", "boxer"]
pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    pytest.skip("lab tests need root (network namespaces, iptables)", allow_module_level=True)

NEW_CONNECTS_WITHIN = 1.0  # seconds after the coordinator is back: the bound
ATTEMPT = 0.25  # seconds an app's connect waits before it gives up and tries again
LEAD = 4.0  # seconds from starting the clients to the fault (they register meanwhile)


def _client(lab, name: str, *args: str, **kwargs) -> subprocess.Popen:
    return lab.popen("h2", [*BOXER, "run", "--name", name, "--", sys.executable, str(APPS / "client.py"), *args],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_registered(lab, *names: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(f"registered {n} " in lab.coordinator_log.read_text() for n in names):
        assert time.monotonic() < deadline, f"{names} did not register"
        time.sleep(0.1)


@pytest.fixture
def echo_lab():
    from boxer.lab import lab_down, lab_up

    name = f"fzc{os.getpid() % 100000}"
    lab = lab_up(name, hosts=2)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(lab.popen("h1", [*BOXER, "run", "--name", "echo", "--", sys.executable,
                                      str(APPS / "echo_server.py"), "7777"]))
        deadline = time.monotonic() + 20
        while '"errno": null' not in lab.run("h2", [*BOXER, "run", "--name", "probe", "--", sys.executable,
                                                    str(APPS / "client.py"), "connect", "echo", "7777"],
                                             capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, "echo server did not come up"
            time.sleep(0.2)
        yield lab, procs
    finally:
        stop_all(procs)
        lab_down(name)


class _RestartWatch(threading.Thread):
    """Notes when the restarted coordinator listens and when each agent re-registers with it."""

    def __init__(self, log: Path, ready: Path, started: float, names: tuple[str, ...]) -> None:
        super().__init__(daemon=True)
        self.log, self.ready, self.started, self.names = log, ready, started, names
        self.marks: dict[str, float] = {}

    def run(self) -> None:
        deadline = time.time() + 20
        while time.time() < deadline and len(self.marks) < len(self.names) + 1:
            if "listening" not in self.marks and self.ready.exists():
                self.marks["listening"] = time.time() - self.started
            text = self.log.read_text() if self.log.exists() else ""
            for n in self.names:
                if n not in self.marks and f"registered {n} " in text:
                    self.marks[n] = time.time() - self.started
            time.sleep(0.005)


def _watch_restart(log: Path, ready: Path, started: float, names: tuple[str, ...]) -> _RestartWatch:
    watch = _RestartWatch(log, ready, started, names)
    watch.start()
    return watch


def _through(lab, procs, fault: str, seconds: float, tag: str) -> float:
    """Run the stream and the retrying client across `fault`; the recovery time in seconds."""
    back_at = time.time() + LEAD + seconds
    stream = _client(lab, f"st{tag}", "stream", "echo", "7777", str(LEAD + seconds + 3))
    # Connects from just after the fault began (they fail while it lasts), each given up after
    # ATTEMPT s: what happened to them must not slow the first ones after it.
    # (A connect may succeed during a cut: a warm spare connection needs no coordinator.)
    retry = _client(lab, f"rt{tag}", "retry_connect", "echo", "7777", str(back_at - seconds + 0.5), str(seconds + 15),
                    str(ATTEMPT), str(back_at))
    procs += [stream, retry]
    _wait_registered(lab, f"st{tag}", f"rt{tag}")
    while time.time() < back_at - seconds:
        time.sleep(0.01)
    coordinator = lab.processes[0]
    assert coordinator.role == "coordinator", lab.processes
    if fault == "freeze":
        os.kill(coordinator.pid, signal.SIGSTOP)
        time.sleep(max(0.0, back_at - time.time()))
        os.kill(coordinator.pid, signal.SIGCONT)
    elif fault == "cut":
        lab.set_link("coord", loss=100)
        time.sleep(max(0.0, back_at - time.time()))
        lab.set_link("coord")
    elif fault == "restart":
        os.kill(coordinator.pid, signal.SIGKILL)
        time.sleep(max(0.0, back_at - time.time()))
        log = lab.state_dir / "restarted-coordinator.log"
        ready = lab.state_dir / "restarted-coordinator.ready"
        ready.unlink(missing_ok=True)
        sink = log.open("w")
        started = time.time()
        procs.append(lab.popen("coord", [*BOXER, "coordinator", "--listen", lab.coordinator,
                                         "--secret-file", str(lab.secret_file), "--ready-file", str(ready)],
                               stderr=sink))
        sink.close()
        phases = _watch_restart(log, ready, started, ("echo", f"st{tag}", f"rt{tag}"))
    back = time.time()
    streamed = json.loads(stream.communicate(timeout=40)[0])
    out, err = retry.communicate(timeout=40)
    retried = json.loads(out)
    assert streamed["ok"] is True, streamed
    assert retried["connected_at"] is not None, (retried, err[-3000:])
    if fault == "restart":
        # Back is when the new coordinator listens, as it is SIGCONT for a freeze and the link
        # restored for a cut: its own start (an interpreter and imports, 0.1 s idle, 1.5 s at
        # load 6) is not what the agents' recovery is measured by.
        phases.join()
        assert "listening" in phases.marks, "the restarted coordinator did not listen within 20 s"
        back = started + phases.marks["listening"]
        print("restart phases (s after spawning the coordinator): " + ", ".join(
            f"{k} {v:.3f}" for k, v in phases.marks.items()) + f", connected {retried['connected_at'] - started:.3f}")
    recovery = retried["connected_at"] - back
    print(f"{fault} {seconds:g} s: new connects work {recovery:.3f} s after the coordinator is back "
          f"({retried['attempts']} attempts, {retried['early']} through during it)")
    if recovery > NEW_CONNECTS_WITHIN:
        print(err[-4000:])
    return recovery


def test_new_connects_work_within_a_second_of_a_frozen_coordinator_resuming(echo_lab):
    lab, procs = echo_lab
    assert _through(lab, procs, "freeze", 4.0, "f") <= NEW_CONNECTS_WITHIN


def test_new_connects_work_within_a_second_of_a_10_s_network_cut(echo_lab):
    lab, procs = echo_lab
    assert _through(lab, procs, "cut", 10.0, "c") <= NEW_CONNECTS_WITHIN


def test_new_connects_work_within_a_second_of_a_coordinator_restart(echo_lab):
    lab, procs = echo_lab
    assert _through(lab, procs, "restart", 1.0, "r") <= NEW_CONNECTS_WITHIN


DEPLOYED_ECHO = """
name: {name}
services:
  echo:
    command: [python3, {echo}, "7777"]
    placement: function
    minInstances: 2
"""


def test_new_connects_to_a_deployed_service_work_within_a_second_of_a_frozen_coordinator(tmp_path):
    """As a user meets it: a deployment (controller and all), clients connecting to the service
    name, the coordinator stopped 4 s during traffic."""
    import labkit

    from boxer.controller.paths import DeployPaths, read_json
    from boxer.lab import load_lab

    name = f"fzd{os.getpid() % 100000}"
    (tmp_path / "deploy.yaml").write_text(DEPLOYED_ECHO.format(name=name, echo=APPS / "echo_server.py"))
    try:
        up = subprocess.run([*BOXER, "up", "--wait", str(tmp_path / "deploy.yaml")], capture_output=True,
                            text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        status = read_json(DeployPaths(name).status)
        lab = load_lab(status["lab"])
        spare = lab.hosts[-1].name
        before = {i["instance_id"] for i in status["instances"]}
        seconds = 4.0
        back_at = time.time() + LEAD + seconds
        procs: list[subprocess.Popen] = []
        for tag, args in (("st", ["stream", "echo", "7777", str(LEAD + seconds + 3)]),
                          ("rt", ["retry_connect", "echo", "7777", str(back_at - seconds + 0.5), str(seconds + 15),
                                  str(ATTEMPT)])):
            procs.append(lab.popen(spare, [*BOXER, "run", "--name", f"{tag}{name}", "--", sys.executable,
                                           str(APPS / "client.py"), *args],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        try:
            _wait_registered(lab, f"st{name}", f"rt{name}")
            while time.time() < back_at - seconds:
                time.sleep(0.01)
            coordinator = lab.processes[0]
            os.kill(coordinator.pid, signal.SIGSTOP)
            time.sleep(max(0.0, back_at - time.time()))
            os.kill(coordinator.pid, signal.SIGCONT)
            back = time.time()
            streamed = json.loads(procs[0].communicate(timeout=40)[0])
            out, err = procs[1].communicate(timeout=40)
        finally:
            stop_all(procs)
        retried = json.loads(out)
        assert retried["connected_at"] is not None, (retried, err[-3000:])
        recovery = retried["connected_at"] - back
        print(f"deployed, freeze {seconds:g} s: new connects to the service work {recovery:.3f} s after "
              f"SIGCONT ({retried['attempts']} attempts); stream {streamed}")
        # The controller heard nothing for 4 s and must not take that for its instances'
        # silence: replacing them cut the stream and cost the new connects seconds.
        assert streamed["ok"] is True, streamed
        assert recovery <= NEW_CONNECTS_WITHIN, err[-4000:]
        after = read_json(DeployPaths(name).status)
        assert {i["instance_id"] for i in after["instances"] if i["state"] == "ready"} == before
    finally:
        labkit.deployment_down(name)
