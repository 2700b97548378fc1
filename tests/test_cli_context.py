"""Which deployment a command means (the current one, as kubectl's context), `boxer ls`, `use`,
`rm`, `status` of a stopped or unknown one, and `top` driven in a real terminal (tmux).

Deployments here are made of their state files only: a record, a status.json, and a process
that looks like their controller (the check is its command line), so no lab is needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from status_fixture import status

BOXER = [sys.executable, "-m", "boxer"]


class State:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.controllers: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "BOXER_DEPLOY_STATE_ROOT": str(root)}

    def deployment(self, name: str, *, running: bool, file: str = "/srv/deploy.yaml") -> None:
        folder = self.root / name
        folder.mkdir(parents=True)
        pid = None
        if running:
            controller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                                           "boxer.controller.daemon"])
            self.controllers.append(controller)
            pid = controller.pid
        now = time.time()
        (folder / "deployment.json").write_text(json.dumps({
            "name": name, "file": file, "dir": str(Path(file).parent), "lab": f"{name[:8]}d",
            "backend": "local", "created_at": now - 600, "controller_pid": pid,
            "down_at": None if running else now - 125}))
        (folder / "status.json").write_text(json.dumps(status(name=name, updated_at=now, started_at=now - 600,
                                                             running=running)))

    def boxer(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BOXER, *args], env=self.env, capture_output=True, text=True, timeout=60,
                              **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    made = State(tmp_path / "deploy")
    made.root.mkdir()
    yield made
    for controller in made.controllers:
        controller.kill()
        controller.wait()


def test_two_running_and_none_current_is_one_line_that_lists_them(state: State) -> None:
    state.deployment("alpha", running=True)
    state.deployment("beta", running=True)
    for command in (["status"], ["down"], ["top"]):
        result = state.boxer(*command)
        assert result.returncode == 1, (command, result.stdout)
        assert result.stderr == ("boxer: several deployments run (alpha, beta) and none is current: pick one"
                                 " with --name alpha, or make it current with `boxer use alpha`\n")
    used = state.boxer("use", "beta")
    assert (used.returncode, used.stdout) == (0, "current deployment: beta (lab betad)\n")
    shown = state.boxer("status")
    assert shown.returncode == 0 and shown.stdout.startswith("deployment beta  lab webautosd")
    as_json = json.loads(state.boxer("status", "-o", "json").stdout)
    # -o json is the stable format (docs/cli.md), named as the file names things; json-v1 the same
    assert as_json["name"] == "beta" and as_json["services"]["api"]["minInstances"] == 0
    assert "min" not in as_json["services"]["api"] and as_json["instances"][0]["instanceId"]
    assert json.loads(state.boxer("status", "-o", "json-v1").stdout) == as_json


def test_status_of_an_unknown_or_stopped_deployment(state: State) -> None:
    nothing = state.boxer("status")
    assert (nothing.returncode, nothing.stdout) == (0, "No deployment is running. Start one with `boxer up FILE`.\n")
    assert json.loads(state.boxer("status", "-o", "json").stdout) == {"running": False}
    state.deployment("web", running=False)
    unknown = state.boxer("status", "--name", "nosuch")
    assert unknown.returncode == 1
    assert unknown.stderr == "boxer: no deployment named 'nosuch': known here: web (`boxer ls` shows them)\n"
    stopped = state.boxer("status", "--name", "web")
    assert stopped.returncode == 0
    assert stopped.stdout.startswith("deployment web is stopped (down 2m0")
    assert "`boxer up /srv/deploy.yaml` starts it again" in stopped.stdout
    assert json.loads(state.boxer("status", "--name", "web", "-o", "json").stdout) == {"name": "web",
                                                                                       "running": False}


def test_ls_lists_running_and_stopped_and_rm_removes_only_stopped(state: State) -> None:
    state.deployment("web", running=True, file="/srv/web/deploy.yaml")
    state.deployment("old", running=False, file="/srv/old/deploy.yaml")
    state.boxer("use", "web")
    listed = state.boxer("ls").stdout.splitlines()
    assert listed[0].split() == ["CURRENT", "NAME", "STATE", "BACKEND", "WHERE", "SINCE", "FILE"]
    assert listed[1].split() == ["old", "stopped", "local", "lab", "oldd", "2m", "ago", "/srv/old/deploy.yaml"]
    assert listed[2].split() == ["*", "web", "running", "local", "lab", "webd", "10m", "ago", "/srv/web/deploy.yaml"]
    as_json = json.loads(state.boxer("ls", "-o", "json").stdout)
    assert [(d["name"], d["state"], d["current"]) for d in as_json] == [("old", "stopped", False),
                                                                         ("web", "running", True)]
    refused = state.boxer("rm", "web")
    assert refused.returncode == 1
    assert refused.stderr == ("boxer: deployment 'web' is running: take it down with `boxer down --name web`"
                              " first\n")
    removed = state.boxer("rm", "old")
    assert removed.returncode == 0 and removed.stdout.startswith("removed deployment old")
    assert not (state.root / "old").exists() and (state.root / "web").exists()
    state.deployment("gone", running=False)
    pruned = state.boxer("ls", "--prune")
    assert "removed deployment gone" in pruned.stdout and not (state.root / "gone").exists()
    assert "web" in pruned.stdout


TMUX = shutil.which("tmux")


def _screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                          check=True).stdout


def _wait_screen(session: str, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = _screen(session)
        if text in screen or time.monotonic() > deadline:
            return screen
        time.sleep(0.1)


@pytest.fixture
def tmux(state: State, tmp_path: Path) -> Iterator[str]:
    if TMUX is None:
        print("skipping: the top test needs tmux (scripts/install-deps.sh installs it)")
        pytest.skip("needs tmux")
    session = f"boxertop{os.getpid()}"
    socket_dir = tmp_path / "tmux"
    socket_dir.mkdir()
    os.environ["TMUX_TMPDIR"] = str(socket_dir)  # a tmux server of our own
    yield session
    subprocess.run(["tmux", "kill-server"], capture_output=True)
    del os.environ["TMUX_TMPDIR"]


def _start_top(state: State, session: str, width: int, height: int, *args: str) -> None:
    env_args = [arg for key in ("BOXER_DEPLOY_STATE_ROOT", "BOXER_CONFIG_DIR", "PATH")
                for arg in ("-e", f"{key}={state.env[key]}")]
    done = state.root.parent / "top.exit"
    command = " ".join([*BOXER, "top", *args]) + f"; echo $? > {done}; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", str(height),
                    *env_args, command], check=True)


def test_top_draws_to_the_terminal_and_quits_on_q(state: State, tmux: str) -> None:
    state.deployment("web", running=True)
    _start_top(state, tmux, 100, 30, "--interval", "0.2")
    screen = _wait_screen(tmux, "q quits")
    assert "deployment web  lab webautosd" in screen
    assert "(connected)  up 10m0" in screen  # 82 columns: not cut at 80
    assert max(len(line) for line in screen.splitlines()) <= 100
    assert "RESTARTS" in screen and "INSTANCE-ID" not in screen  # wide does not fit in 100 columns
    subprocess.run(["tmux", "send-keys", "-t", tmux, "q"], check=True)
    done = state.root.parent / "top.exit"
    deadline = time.monotonic() + 10
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done.exists() and done.read_text().strip() == "0", _screen(tmux)


def test_top_in_a_wide_terminal_shows_the_wide_columns(state: State, tmux: str) -> None:
    state.deployment("web", running=True)
    _start_top(state, tmux, 180, 30)
    assert "INSTANCE-ID" in _wait_screen(tmux, "INSTANCE-ID")


def test_top_says_once_that_nothing_runs_and_exits(state: State, tmux: str) -> None:
    _start_top(state, tmux, 100, 30)
    done = state.root.parent / "top.exit"
    deadline = time.monotonic() + 15
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    screen = _screen(tmux)
    assert done.read_text().strip() == "0"
    assert screen.count("No deployment is running") == 1


def test_a_deployment_sent_to_a_controller_host_is_asked_there_and_only_there(state: State,
                                                                             tmp_path: Path) -> None:
    """The context remembers the controller host `boxer up --controller` sent a deployment to:
    status and down of that deployment go there (here a socket nobody serves: the one-line
    error names it), never to this machine's deployments; --name or `boxer use` of a local one
    goes back to this machine."""
    state.deployment("web", running=True)
    gone = tmp_path / "nobody.sock"
    (Path(os.environ["BOXER_CONFIG_DIR"]) / "context.json").write_text(json.dumps({
        "deployment": "far", "controller": f"unix:{gone}", "controller_deployment": "far"}))
    for command in (["status"], ["down"], ["status", "--name", "far"]):
        far = state.boxer(*command)
        assert far.returncode == 1, far
        assert far.stderr.startswith(f"boxer: no controller answers on unix:{gone}"), far.stderr
        assert len(far.stderr.splitlines()) == 1
    local = state.boxer("status", "--name", "web")
    assert local.returncode == 0 and "deployment web" in local.stdout, local
    assert state.boxer("use", "web").stdout.strip() == "current deployment: web (lab webd)"
    assert "deployment web" in state.boxer("status").stdout
    back = state.boxer("use", "far")
    assert back.returncode == 0 and back.stdout.strip() == f"current deployment: far (on the controller at unix:{gone})"
    # Options name a controller for one command, whatever the context says.
    told = state.boxer("status", "--controller", "203.0.113.9:7443")
    assert told.returncode == 2 and "needs --controller-ca and --controller-token-file" in told.stderr, told


@pytest.fixture
def watched(state: State, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A running deployment `live` whose controller is the real control API server (over a fake
    runtime that ticks every 0.3 s); the calls it answered."""
    from test_control_api import Server

    from boxer.controller.paths import DeployPaths

    state.deployment("live", running=True)
    monkeypatch.setenv("BOXER_DEPLOY_STATE_ROOT", str(state.root))
    calls: list[str] = []
    (tmp_path / "srv").mkdir()
    server = Server(tmp_path / "srv")
    server.socket = DeployPaths("live").control_socket
    service = server.service
    status, watch = service.Status, service.Watch

    async def counted_status(request: object, context: object) -> object:
        calls.append("Status")
        return await status(request, context)  # type: ignore[arg-type]

    async def counted_watch(request: object, context: object) -> AsyncIterator[object]:
        calls.append("Watch")
        async for status in watch(request, context):  # type: ignore[arg-type]
            yield status

    service.Status, service.Watch = counted_status, counted_watch  # type: ignore[method-assign]
    service.runtime.next_tick = _slow_tick(service.runtime)
    with server:
        yield calls


def _slow_tick(runtime: object) -> object:
    import asyncio

    async def tick() -> None:  # a tick every 0.3 s, as a controller's (redrawn at most once a second)
        await asyncio.sleep(0.3)
        runtime.ticks += 1  # type: ignore[attr-defined]

    return tick


def test_status_watch_draws_from_the_watch_stream(state: State, watched: list[str]) -> None:
    """`status --watch` asks Status once (which deployment, is it running) and then redraws from
    the control API's Watch stream: a new status each tick, no call per frame."""
    proc = subprocess.Popen([*BOXER, "status", "--watch", "-o", "json"], env=state.env, stdout=subprocess.PIPE,
                            text=True)
    time.sleep(3.5)
    proc.send_signal(2)
    out, _ = proc.communicate(timeout=30)
    frames = [json.loads("{" + part) for part in ("\n" + out).split("\n{")[1:]]
    assert proc.returncode == 0
    assert len(frames) >= 3 and [f["updatedAt"] for f in frames] == sorted(f["updatedAt"] for f in frames)
    assert frames[-1]["updatedAt"] > frames[0]["updatedAt"]
    assert watched == ["Status", "Watch"]


def test_top_draws_from_the_watch_stream(state: State, watched: list[str], tmux: str) -> None:
    _start_top(state, tmux, 100, 30, "--interval", "0.2")
    assert "deployment web" in _wait_screen(tmux, "web-1")
    time.sleep(1.0)  # five more frames
    subprocess.run(["tmux", "send-keys", "-t", tmux, "q"], check=True)
    done = state.root.parent / "top.exit"
    deadline = time.monotonic() + 10
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done.exists() and done.read_text().strip() == "0", _screen(tmux)
    assert watched == ["Status", "Watch"]


def test_rm_of_a_deployment_on_a_controller_host_forgets_that_controller(state: State, tmp_path: Path) -> None:
    """After `boxer down` the context still sends the deployment to its controller host (as a
    kubectl context outlives what it ran); `boxer rm NAME` forgets it, so commands act on this
    machine again. A controller that does not answer is forgotten all the same."""
    gone = tmp_path / "nobody.sock"
    context = Path(os.environ["BOXER_CONFIG_DIR"]) / "context.json"
    context.write_text(json.dumps({"deployment": "far", "controller": f"unix:{gone}", "controller_deployment": "far",
                                   "lab": "mylab"}))
    assert state.boxer("status").stderr.startswith(f"boxer: no controller answers on unix:{gone}")
    other = state.boxer("rm", "near")  # not the context's: an unknown name, as before
    assert other.returncode == 1 and "no deployment named 'near'" in other.stderr, other
    forgot = state.boxer("rm", "far")
    assert forgot.returncode == 0, forgot
    assert forgot.stdout.startswith(f"forgot deployment far on the controller at unix:{gone} (it did not answer"), forgot
    assert json.loads(context.read_text()) == {"lab": "mylab"}
    after = state.boxer("status")
    assert after.returncode == 0 and "no controller" not in after.stderr, after
    again = state.boxer("rm", "far")
    assert again.returncode == 1 and "no deployment named 'far'" in again.stderr, again
