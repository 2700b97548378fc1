"""The function handler, called in-process with a fake context: event checks before anything
starts, the secret from SSM / Secrets Manager (moto) or a file, the agent's argv/env, limits,
and how an invocation ends. The agent is replaced by a shell command through the injectable
argv builder; the process handling around it is the real one."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from boxer._python import module_argv
from boxer.backends import EventError, SecretError
from boxer.backends.aws_lambda.event import LambdaEvent, SecretRef
from boxer.backends.aws_lambda.handler import AgentLaunch, HandlerTimeouts, agent_argv, agent_env, make_handler
from boxer.backends.aws_lambda.secrets import ALLOW_FILE_SECRET_ENV, SecretFile, read_secret

SECRET = "ab" * 32
FAST = HandlerTimeouts(margin=1.0, exit_grace=0.3, term_grace=0.3, min_lifetime=0.2)


class Context:
    def __init__(self, remaining_s: float) -> None:
        self.deadline = time.monotonic() + remaining_s

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


@pytest.fixture
def secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ALLOW_FILE_SECRET_ENV, "1")
    path = tmp_path / "deployment.secret"
    path.write_text(SECRET + "\n")
    return path


def event(secret: dict[str, str], **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": 1, "name": "kv-1", "service": "kv", "index": 1,
        "command": ["redis-server", "--port", "6379"], "env": {"MODE": "test"},
        "coordinator": "127.0.0.1:7000", "secret": secret,
    }
    base.update(changes)
    return base


def shell(script: str) -> Any:
    return lambda launch: ["sh", "-c", script]


def test_agent_argv_is_boxer_run_without_the_secret(tmp_path: Path) -> None:
    parsed = LambdaEvent.from_dict(event({"ssm_parameter": "/p"}))
    launch = AgentLaunch(parsed, tmp_path / "s", 123.4567)
    assert agent_argv(launch) == [
        *module_argv("boxer", "run"), "--name", "kv-1", "--service", "kv",
        "--coordinator", "127.0.0.1:7000", "--lifetime", "123.457",
        "--", "redis-server", "--port", "6379",
    ]
    env = agent_env(launch, {"PATH": "/bin", "MODE": "base"})
    assert env["MODE"] == "test"  # the event's env wins over the sandbox's
    assert env["BOXER_SECRET_FILE"] == str(tmp_path / "s")
    assert env["BOXER_COORDINATOR"] == "127.0.0.1:7000"
    assert (env["BOXER_INSTANCE_NAME"], env["BOXER_INSTANCE_INDEX"]) == ("kv-1", "1")


def test_exit_status_and_reason(secret_file: Path, tmp_path: Path) -> None:
    handle = make_handler(shell("exit 3"), timeouts=FAST, secret_dir=str(tmp_path))
    result = handle(event({"file": str(secret_file)}), Context(30))
    assert result["instance"] == "kv-1"
    assert result["exit_status"] == 3
    assert result["reason"] == "exited"
    assert result["lifetime"] == pytest.approx(29.0, abs=0.2)
    assert 0 <= result["duration"] < 5
    assert list(tmp_path.glob("boxer-secret-*")) == []  # secret file removed afterwards


def test_agent_sees_secret_file_env_and_limits(secret_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "seen"
    script = (f'stat -c %a "$BOXER_SECRET_FILE" > {out}; cat "$BOXER_SECRET_FILE" >> {out}; '
              f'ulimit -n >> {out}; ulimit -Hn >> {out}; echo "$MODE" >> {out}')
    handle = make_handler(shell(script), timeouts=FAST, secret_dir=str(tmp_path))
    result = handle(event({"file": str(secret_file)}), Context(30))
    assert result["exit_status"] == 0
    mode, secret, soft, hard, mode_env = out.read_text().split()
    assert mode == "600"
    assert secret == SECRET
    assert int(soft) <= 1024 and int(hard) <= 1024
    assert mode_env == "test"


def test_overrunning_agent_is_terminated_at_its_lifetime(secret_file: Path) -> None:
    handle = make_handler(shell("trap '' TERM; sleep 30"), timeouts=FAST)
    started = time.monotonic()
    result = handle(event({"file": str(secret_file)}, lifetime=0.5), Context(30))
    elapsed = time.monotonic() - started
    assert result["reason"] == "lifetime"
    assert result["exit_status"] == -9  # ignored SIGTERM, so SIGKILL
    assert result["lifetime"] == 0.5
    assert 1.0 <= elapsed < 3.0  # lifetime + exit_grace + term_grace


def test_agent_that_stops_at_its_lifetime_reports_lifetime(secret_file: Path) -> None:
    handle = make_handler(shell("sleep 0.6"), timeouts=FAST)
    result = handle(event({"file": str(secret_file)}, lifetime=0.6), Context(30))
    assert (result["exit_status"], result["reason"]) == (0, "lifetime")


def test_lifetime_is_capped_by_remaining_time(secret_file: Path) -> None:
    handle = make_handler(shell("exit 0"), timeouts=FAST)
    result = handle(event({"file": str(secret_file)}, lifetime=600), Context(5))
    assert result["lifetime"] == pytest.approx(4.0, abs=0.2)


def test_too_little_time_left_starts_nothing(secret_file: Path, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    handle = make_handler(shell(f"touch {marker}"), timeouts=FAST)
    with pytest.raises(ValueError, match="raise the function timeout"):
        handle(event({"file": str(secret_file)}), Context(1.1))
    assert not marker.exists()


def test_agent_that_cannot_start_reports_error(secret_file: Path) -> None:
    handle = make_handler(lambda launch: ["/nonexistent/boxer"], timeouts=FAST)
    result = handle(event({"file": str(secret_file)}), Context(30))
    assert (result["exit_status"], result["reason"]) == (None, "error")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"command": None}, "command None is not a list of strings"),
        ({"coordinator": "x"}, "coordinator 'x' is not 'host:port'"),
        ({"secret": {"password": "hunter2"}}, "secret kind 'password' is not one of"),
    ],
)
def test_bad_event_starts_nothing(tmp_path: Path, bad: dict[str, Any], message: str) -> None:
    marker = tmp_path / "started"
    handle = make_handler(shell(f"touch {marker}"), timeouts=FAST)
    bad_event = {**event({"ssm_parameter": "/p"}), **bad}
    with pytest.raises(EventError, match="bad boxer event") as info:
        handle(bad_event, Context(30))
    assert any(p.startswith(message) for p in info.value.problems)
    assert "hunter2" not in str(info.value)  # a secret put in the wrong place is not echoed
    assert not marker.exists()


def test_file_secret_refused_outside_the_local_lambda(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_FILE_SECRET_ENV, raising=False)
    path = tmp_path / "s"
    path.write_text(SECRET)
    marker = tmp_path / "started"
    handle = make_handler(shell(f"touch {marker}"), timeouts=FAST)
    with pytest.raises(SecretError, match="only accepted by the local Lambda"):
        handle(event({"file": str(path)}), Context(30))
    assert not marker.exists()


def test_missing_secret_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ALLOW_FILE_SECRET_ENV, "1")
    with pytest.raises(SecretError, match="cannot read secret file .*No such file"):
        read_secret(SecretRef("file", str(tmp_path / "absent")))


def test_secret_that_is_not_hex_is_refused_without_echoing_it(secret_file: Path) -> None:
    secret_file.write_text("not a hex secret at all, definitely long enough\n")
    with pytest.raises(SecretError) as info:
        read_secret(SecretRef("file", str(secret_file)))
    assert "not hex of at least 32 characters" in str(info.value)
    assert "definitely" not in str(info.value)


def test_secret_file_is_private_and_removed(tmp_path: Path) -> None:
    with SecretFile(SECRET, parent=str(tmp_path)) as secret:
        assert stat.S_IMODE(secret.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(secret.path.parent.stat().st_mode) == 0o700
        assert secret.path.read_text() == SECRET + "\n"
    assert not secret.path.exists()


# -- AWS secret stores, through moto ----------------------------------------------------------

@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    with mock_aws():
        yield


def test_secret_from_ssm_securestring(aws: None, tmp_path: Path) -> None:
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/boxer/demo/secret", Value=SECRET, Type="SecureString")
    out = tmp_path / "seen"
    handle = make_handler(shell(f'cat "$BOXER_SECRET_FILE" > {out}'), timeouts=FAST)
    result = handle(event({"ssm_parameter": "/boxer/demo/secret"}), Context(30))
    assert result["exit_status"] == 0
    assert out.read_text().strip() == SECRET


def test_secret_from_secrets_manager(aws: None) -> None:
    arn = boto3.client("secretsmanager").create_secret(Name="boxer", SecretString=SECRET)["ARN"]
    assert read_secret(SecretRef("secretsmanager_arn", arn)) == SECRET


def test_missing_ssm_parameter_is_a_clear_error_and_starts_nothing(aws: None,
                                                                    tmp_path: Path) -> None:
    marker = tmp_path / "started"
    handle = make_handler(shell(f"touch {marker}"), timeouts=FAST)
    with pytest.raises(SecretError, match=r"cannot read ssm_parameter '/boxer/absent': "
                                          r"ParameterNotFound"):
        handle(event({"ssm_parameter": "/boxer/absent"}), Context(30))
    assert not marker.exists()


def test_handler_module_does_not_import_boto3() -> None:
    import subprocess

    code = "import sys, boxer.backends.aws_lambda.handler; print('boto3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ})
    assert out.stdout.strip() == "False"
