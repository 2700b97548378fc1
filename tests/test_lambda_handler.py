"""The function handler, called in-process with a fake context: event checks before anything
starts, the instance's token handed to the agent as a private file (the function never holds
nor reads the deployment secret), the agent's argv/env, limits, and how an invocation ends. The
agent is replaced by a shell command through the injectable argv builder; the process handling
around it is the real one."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from boxer._python import module_argv
from boxer.backends import EventError
from boxer.backends.aws_lambda.event import LambdaEvent
from boxer.backends.aws_lambda.handler import AgentLaunch, HandlerTimeouts, agent_argv, agent_env, make_handler
from boxer.backends.aws_lambda.secrets import TokenFile

TOKEN = "ab" * 32
INSTANCE = "0123456789abcdef"
FAST = HandlerTimeouts(margin=1.0, exit_grace=0.3, term_grace=0.3, min_lifetime=0.2)


class Context:
    def __init__(self, remaining_s: float) -> None:
        self.deadline = time.monotonic() + remaining_s

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": 2, "name": "kv-1", "service": "kv", "index": 1,
        "command": ["redis-server", "--port", "6379"], "env": {"MODE": "test"},
        "coordinator": "127.0.0.1:7000", "instance": INSTANCE, "token": TOKEN,
    }
    base.update(changes)
    return base


def shell(script: str) -> Any:
    return lambda launch: ["sh", "-c", script]


def test_agent_argv_is_boxer_run_without_a_credential(tmp_path: Path) -> None:
    parsed = LambdaEvent.from_dict(event())
    launch = AgentLaunch(parsed, tmp_path / "s", 123.4567)
    assert agent_argv(launch) == [
        *module_argv("boxer", "run"), "--name", "kv-1", "--service", "kv",
        "--coordinator", "127.0.0.1:7000", "--lifetime", "123.457",
        "--", "redis-server", "--port", "6379",
    ]
    env = agent_env(launch, {"PATH": "/bin", "MODE": "base"})
    assert env["MODE"] == "test"  # the event's env wins over the sandbox's
    assert env["BOXER_INSTANCE_TOKEN_FILE"] == str(tmp_path / "s") and env["BOXER_INSTANCE_ID"] == INSTANCE
    assert not {"BOXER_SECRET", "BOXER_SECRET_FILE", "BOXER_INSTANCE_TOKEN"} & set(env)
    assert TOKEN not in " ".join([*agent_argv(launch), *env.values()])
    assert env["BOXER_COORDINATOR"] == "127.0.0.1:7000"
    assert (env["BOXER_INSTANCE_NAME"], env["BOXER_INSTANCE_INDEX"]) == ("kv-1", "1")


def test_exit_status_and_reason(tmp_path: Path) -> None:
    handle = make_handler(shell("exit 3"), timeouts=FAST, token_dir=str(tmp_path))
    result = handle(event(), Context(30))
    assert result["instance"] == "kv-1"
    assert result["exit_status"] == 3
    assert result["reason"] == "exited"
    assert result["lifetime"] == pytest.approx(29.0, abs=0.2)
    assert 0 <= result["duration"] < 5
    assert list(tmp_path.glob("boxer-token-*")) == []  # token file removed afterwards


def test_agent_sees_its_token_file_env_and_limits(tmp_path: Path) -> None:
    out = tmp_path / "seen"
    script = (f'stat -c %a "$BOXER_INSTANCE_TOKEN_FILE" > {out}; cat "$BOXER_INSTANCE_TOKEN_FILE" >> {out}; '
              f'ulimit -n >> {out}; ulimit -Hn >> {out}; echo "$MODE" >> {out}')
    handle = make_handler(shell(script), timeouts=FAST, token_dir=str(tmp_path))
    result = handle(event(), Context(30))
    assert result["exit_status"] == 0
    mode, token, soft, hard, mode_env = out.read_text().split()
    assert mode == "600"
    assert token == TOKEN
    assert int(soft) <= 1024 and int(hard) <= 1024
    assert mode_env == "test"


def test_overrunning_agent_is_terminated_at_its_lifetime() -> None:
    handle = make_handler(shell("trap '' TERM; sleep 30"), timeouts=FAST)
    started = time.monotonic()
    result = handle(event(lifetime=0.5), Context(30))
    elapsed = time.monotonic() - started
    assert result["reason"] == "lifetime"
    assert result["exit_status"] == -9  # ignored SIGTERM, so SIGKILL
    assert result["lifetime"] == 0.5
    assert 1.0 <= elapsed < 3.0  # lifetime + exit_grace + term_grace


def test_agent_that_stops_at_its_lifetime_reports_lifetime() -> None:
    handle = make_handler(shell("sleep 0.6"), timeouts=FAST)
    result = handle(event(lifetime=0.6), Context(30))
    assert (result["exit_status"], result["reason"]) == (0, "lifetime")


def test_lifetime_is_capped_by_remaining_time() -> None:
    handle = make_handler(shell("exit 0"), timeouts=FAST)
    result = handle(event(lifetime=600), Context(5))
    assert result["lifetime"] == pytest.approx(4.0, abs=0.2)


def test_too_little_time_left_starts_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    handle = make_handler(shell(f"touch {marker}"), timeouts=FAST)
    with pytest.raises(ValueError, match="raise the function timeout"):
        handle(event(), Context(1.1))
    assert not marker.exists()


def test_agent_that_cannot_start_reports_error() -> None:
    handle = make_handler(lambda launch: ["/nonexistent/boxer"], timeouts=FAST)
    result = handle(event(), Context(30))
    assert (result["exit_status"], result["reason"]) == (None, "error")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"command": None}, "command None is not a list of strings"),
        ({"coordinator": "x"}, "coordinator 'x' is not 'host:port'"),
        ({"token": "hunter2"}, "token is not 64 lowercase hex digits"),
    ],
)
def test_bad_event_starts_nothing(tmp_path: Path, bad: dict[str, Any], message: str) -> None:
    marker = tmp_path / "started"
    handle = make_handler(shell(f"touch {marker}"), timeouts=FAST)
    bad_event = {**event(), **bad}
    with pytest.raises(EventError, match="bad boxer event") as info:
        handle(bad_event, Context(30))
    assert any(p.startswith(message) for p in info.value.problems)
    assert "hunter2" not in str(info.value)  # a secret put in the wrong place is not echoed
    assert not marker.exists()


def test_token_file_is_private_and_removed(tmp_path: Path) -> None:
    with TokenFile(TOKEN, parent=str(tmp_path)) as token:
        assert stat.S_IMODE(token.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(token.path.parent.stat().st_mode) == 0o700
        assert token.path.read_text() == TOKEN + "\n"
    assert not token.path.exists()


def test_an_invocation_calls_no_aws_api() -> None:
    """The function reads nothing from SSM or anywhere else (its role needs no secret): a whole
    invocation never even imports boto3."""
    import subprocess

    code = ("import sys, time; from boxer.backends.aws_lambda.handler import HandlerTimeouts, make_handler\n"
            "class C:\n    def get_remaining_time_in_millis(self): return 30000\n"
            "event = {'version': 2, 'name': 'kv-1', 'service': 'kv', 'index': 1, 'command': ['true'], 'env': {},\n"
            f"         'coordinator': '127.0.0.1:7000', 'instance': '{INSTANCE}', 'token': '{TOKEN}'}}\n"
            "fast = HandlerTimeouts(margin=1.0, exit_grace=0.3, term_grace=0.3, min_lifetime=0.2)\n"
            "result = make_handler(lambda launch: ['true'], timeouts=fast)(event, C())\n"
            "print(result['exit_status'], 'boto3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ})
    assert out.stdout.strip() == "0 False"
