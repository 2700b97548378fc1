"""The local Lambda end to end: a real awslambdaric runtime talking to our Runtime API server,
running the real handler module (with a shell command in place of `boxer run`)."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from boxer.backends.emulators.lambda_local import invoke_local

try:
    import awslambdaric  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"awslambdaric is not installed ({exc}); pip install awslambdaric",
                allow_module_level=True)

TOKEN = "cd" * 32  # the instance's, as the controller issues it in the event


@pytest.fixture
def handlers(tmp_path: Path) -> dict[str, Any]:
    """A module of test handlers built with the real make_handler, and the env to find it."""
    (tmp_path / "local_handlers.py").write_text(textwrap.dedent("""
        import os
        from boxer.backends.aws_lambda.handler import HandlerTimeouts, make_handler

        FAST = HandlerTimeouts(margin=1.0, exit_grace=0.3, term_grace=0.3, min_lifetime=0.2)
        OUT = os.environ["TEST_OUT"]
        exit3 = make_handler(
            lambda launch: ["sh", "-c", f'ulimit -n > {OUT}; cat "$BOXER_INSTANCE_TOKEN_FILE" >> {OUT};'
                                        ' exit 3'],
            timeouts=FAST)
        forever = make_handler(lambda launch: ["sleep", "61.5"],
                               timeouts=HandlerTimeouts(margin=30, exit_grace=5, term_grace=5))

        def hang(event, context):
            # A handler that overruns the function timeout, with a child in its own session.
            import subprocess, time
            subprocess.Popen(["sleep", "62.5"], start_new_session=True)
            time.sleep(60)
    """))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    env["TEST_OUT"] = str(tmp_path / "out")
    return {"env": env, "out": tmp_path / "out"}


def event(**changes: Any) -> dict[str, Any]:
    return {"version": 2, "name": "kv-1", "service": "kv", "index": 1,
            "command": ["redis-server"], "env": {}, "coordinator": "127.0.0.1:7000",
            "instance": "0123456789abcdef", "token": TOKEN, **changes}


def test_real_runtime_runs_the_handler(handlers: dict[str, Any]) -> None:
    result = invoke_local(event(), handler="local_handlers.exit3",
                          timeout=10, env=handlers["env"])
    assert result.status == "ok"
    assert result.payload["instance"] == "kv-1"
    assert result.payload["exit_status"] == 3
    assert result.payload["reason"] == "exited"
    # remaining time came from the Runtime API deadline: 10 s minus the 1 s margin
    assert 8.0 < result.payload["lifetime"] <= 9.0
    nofile, token = handlers["out"].read_text().split()
    assert int(nofile) == 1024
    assert token == TOKEN


def test_bad_event_comes_back_as_a_function_error(handlers: dict[str, Any]) -> None:
    result = invoke_local({"name": "kv-1"}, handler="local_handlers.exit3", timeout=10,
                          env=handlers["env"])
    assert result.status == "error"
    assert result.error_type == "EventError"
    assert "missing field(s): version, service, index" in result.payload["errorMessage"]
    assert not handlers["out"].exists()


def test_handler_that_cannot_load_is_an_init_error(handlers: dict[str, Any]) -> None:
    result = invoke_local(event(), handler="local_handlers.absent",
                          timeout=10, env=handlers["env"])
    assert result.status == "error"
    assert "absent" in json.dumps(result.payload)


def test_function_timeout_kills_the_whole_sandbox(handlers: dict[str, Any]) -> None:
    started = time.monotonic()
    result = invoke_local(event(), handler="local_handlers.hang",
                          timeout=2, env=handlers["env"])
    assert result.status == "timeout"
    assert result.payload == {"errorMessage": "Task timed out after 2.00 seconds"}
    assert time.monotonic() - started < 4
    # the handler's child in its own session died with the sandbox
    assert not _processes_named("sleep 62.5")


def test_timeout_is_capped_like_lambda() -> None:
    with pytest.raises(ValueError, match=r"timeout 901 s must be in \(0, 900\]"):
        invoke_local({}, timeout=901)


def test_wrap_argv_prefixes_the_runtime(handlers: dict[str, Any]) -> None:
    # In the lab this is ["ip", "netns", "exec", host]; `env` is a harmless stand-in here.
    result = invoke_local(event(), handler="local_handlers.exit3",
                          timeout=10, env=handlers["env"], wrap_argv=["env", "WRAPPED=1"])
    assert result.status == "ok" and result.payload["exit_status"] == 3


def _processes_named(cmdline: str) -> list[int]:
    import psutil

    # The sleep durations in local_handlers are unusual on purpose, so these are ours.
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if " ".join(p.info["cmdline"] or []) == cmdline]
