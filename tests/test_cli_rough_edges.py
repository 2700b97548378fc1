"""The CLI's rough edges a new user meets first: exit statuses, "needs root", which lab a command
means, and no traceback when an app is interrupted mid-call."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from boxer.agent.ipc import Message, Op
from boxer.agent.ipc_server import IpcServer
from boxer.cli.lab import lab as lab_cli
from boxer.controller.record import DeploymentRecord
from boxer.lab import Lab

BOXER = [sys.executable, "-m", "boxer"]


def boxer(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BOXER, *args], capture_output=True, text=True, timeout=60, check=False,
                          env=env, **kwargs)  # type: ignore[call-overload]


def test_lab_exec_as_non_root_says_it_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(lab_cli, ["exec", "h1", "--", "true"])
    assert result.exit_code == 1, result.output
    assert result.output == ("boxer: boxer lab exec needs root (network namespaces): run it as root,"
                             " e.g. with sudo\n")


@pytest.mark.lab
def test_lab_exec_of_a_missing_command_exits_127(small_lab: Lab, tmp_path: Path) -> None:
    result = boxer("lab", "exec", "--name", small_lab.name, "h1", "--", "nosuchcmd", "x")
    assert result.returncode == 127, result.stderr
    assert result.stderr.startswith("boxer: nosuchcmd: command not found on h1's PATH")
    assert result.stderr.rstrip().endswith("install it or give its full path")
    text = tmp_path / "notes.txt"
    text.write_text("not a program\n")
    result = boxer("lab", "exec", "--name", small_lab.name, "h1", "--", str(text))
    assert result.returncode == 126, result.stderr
    assert "cannot run it (not an executable file)" in result.stderr


@pytest.mark.lab
def test_lab_commands_find_the_current_lab_and_name_the_ones_there_are(small_lab: Lab) -> None:
    missing = boxer("lab", "show", "--name", "t0nosuch")
    assert missing.returncode == 1
    assert "no lab named 't0nosuch': labs on this machine: " in missing.stderr
    assert small_lab.name in missing.stderr
    # The lab made by `boxer lab up` becomes the current one: no --name needed afterwards.
    from boxer.cli import _context

    _context.set_current("lab", small_lab.name)
    shown = boxer("lab", "show")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"lab          {small_lab.name}\n")
    ran = boxer("lab", "exec", "h2", "--", "sh", "-c", "echo $BOXER_LAB_HOST")
    assert (ran.returncode, ran.stdout) == (0, "h2\n")


@pytest.mark.lab
def test_lab_down_refuses_the_lab_of_a_running_deployment(small_lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "deploy"
    (state / "web").mkdir(parents=True)
    # A process that looks like the deployment's controller (what `lab down` checks in /proc).
    controller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                   "boxer.controller.daemon"])
    try:
        record = DeploymentRecord(name="web", file=str(tmp_path / "deploy.yaml"), dir=str(tmp_path),
                                  lab=small_lab.name, controller_pid=controller.pid)
        (state / "web" / "deployment.json").write_text(json.dumps(record.to_json()))
        env = {**os.environ, "BOXER_DEPLOY_STATE_ROOT": str(state)}
        refused = boxer("lab", "down", "--name", small_lab.name, env=env)
        assert refused.returncode == 1
        assert (f"lab {small_lab.name} runs deployment 'web': take it down with "
                "`boxer down --name web` (or pass --force)") in refused.stderr
        assert Path(f"/run/boxer/lab/{small_lab.name}").exists()
        forced = boxer("lab", "down", "--name", small_lab.name, "--force", env=env)
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout.startswith(f"lab {small_lab.name} down: ")
    finally:
        controller.kill()
        controller.wait()


def test_an_app_gone_before_its_reply_leaves_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """redis-cli interrupted by Ctrl-C while the agent answers its call: the reply meets a closed
    socket (EPIPE), which is the app's exit, not an error of the agent."""

    async def answer(request: Message) -> tuple[Message, socket.socket | None]:
        return Message(op=request.op, status=0), None

    async def serve() -> None:
        ours, app = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        app.close()  # the app is gone
        ours.setblocking(False)
        server = IpcServer("unused", answer, fast=None, on_fast_event=None)  # type: ignore[arg-type]
        await server._serve(Message(op=Op.RESOLVE, name="kv").pack(), ours)
        assert ours.fileno() == -1  # closed all the same

    with caplog.at_level(logging.DEBUG, logger="boxer.agent.ipc_server"):
        asyncio.run(serve())
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "went away before its reply" in caplog.records[0].getMessage()


@pytest.fixture
def small_lab(lab_factory, standin_coordinator) -> Lab:  # type: ignore[no-untyped-def]
    return lab_factory(hosts=2, coordinator_cmd=standin_coordinator)


# -- every error a person can cause: one line that says what to do, a conventional exit status ----

@pytest.fixture
def nothing_here(tmp_path: Path) -> dict[str, str]:
    """A machine (as boxer sees it) where no deployment ever ran."""
    return {**os.environ, "BOXER_DEPLOY_STATE_ROOT": str(tmp_path / "deploy"),
            "BOXER_CONFIG_DIR": str(tmp_path / "config")}


def test_report_and_logs_where_nothing_ran_say_so(nothing_here: dict[str, str]) -> None:
    for command in (["report"], ["logs", "web"]):
        result = boxer(*command, env=nothing_here)
        assert (result.returncode, result.stdout) == (1, ""), command
        assert result.stderr == ("boxer: no deployment has run on this machine (or `boxer rm` removed what it "
                                 "left): start one with `boxer up FILE`\n"), command


def test_up_of_a_missing_file_names_it_in_the_checks_words(nothing_here: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nosuch.yaml"
    for command in ("up", "check"):
        result = boxer(command, str(missing), env=nothing_here)
        assert result.returncode == 1, command
        assert result.stderr == (f"{missing}: 1 problem\n"
                                 f"{missing}: (top level): cannot read the file: no such file or directory\n"), command


def test_a_commands_plain_error_reads_as_boxers_one_line(nothing_here: dict[str, str]) -> None:
    """Errors raised as click's plain ClickException (probe-nat, lambda-local, lab exec) read
    `boxer: ...` as every other, not click's `Error: ...`; usage errors keep click's form."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: refused
        result = boxer("probe-nat", "--coordinator", f"127.0.0.1:{port}", env=nothing_here)
    assert result.returncode == 1
    assert result.stderr == (f"boxer: cannot probe against 127.0.0.1:{port} (relay port {port + 1}): connection "
                             "refused; is a coordinator listening there? (--coordinator HOST:PORT)\n")
    usage = boxer("status", "-o", "yaml", env=nothing_here)
    assert usage.returncode == 2 and usage.stderr.startswith("Usage: ")


@pytest.mark.lab
def test_lab_up_and_down_count_in_words(nothing_here: dict[str, str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("lab up needs root")
    from boxer.lab import lab_down

    name = f"re{os.getpid() % 100000}"
    try:
        up = boxer("lab", "up", "--name", name, "--hosts", "1", env=nothing_here)
        assert up.returncode == 0, up.stderr
        assert up.stdout.startswith(f"lab {name} up: 1 host in "), up.stdout
        down = boxer("lab", "down", "--name", name, env=nothing_here)
        assert down.stdout == f"lab {name} down: 4 namespaces, 1 process stopped\n"
    finally:
        lab_down(name)


def test_sigterm_to_a_foreground_up_is_a_ctrl_c() -> None:
    """`boxer up` in the foreground (or against a controller host) takes the deployment down on
    SIGTERM as on Ctrl-C: the signal becomes the KeyboardInterrupt its wait catches."""
    import signal
    import time

    from boxer.cli.deploy import _sigterm_is_ctrl_c

    before = signal.getsignal(signal.SIGTERM)
    try:
        _sigterm_is_ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2.0)  # never reached: the handler raises as soon as the signal arrives
    finally:
        signal.signal(signal.SIGTERM, before)
