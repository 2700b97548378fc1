"""The whole Lambda path, locally: a real awslambdaric runtime in a NATed lab host runs the real
handler, which starts `boxer run`; the instance serves redis to an instance on another host."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time

import labkit
import pytest

pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    pytest.skip("lab tests need root (network namespaces, iptables)", allow_module_level=True)
if importlib.util.find_spec("awslambdaric") is None:
    pytest.skip("awslambdaric is not installed (pip install '.[test]')", allow_module_level=True)


def test_lambda_local_instance_in_a_nated_host_serves_redis_to_another_instance(tmp_path):
    from boxer.backends import get_backend
    from boxer.backends.emulators.lambda_local import LocalLambdaBackend
    from boxer.lab import lab_down, lab_up

    name = f"ll{os.getpid() % 100000}"
    lab = lab_up(name, hosts=2)
    try:
        # The registered `lambda-local` is the one `boxer up --backend lambda-local` runs.
        backend = get_backend("lambda-local", lab=lab, timeout=60, log_dir=tmp_path, spare_hosts=1)
        assert isinstance(backend, LocalLambdaBackend)
        spec = labkit.issued_spec(lab, name="kv", service="kv", index=0,
                                  command=("redis-server", "--port", "6379", "--save", "", "--protected-mode", "no"))

        async def scenario() -> tuple[str, str, dict | None]:
            handle = await backend.launch(spec)
            cli = lab.command("h2", [sys.executable, "-m", "boxer", "run", "--name", "cli", "--",
                                     "redis-cli", "-h", "kv", "ping"])
            answer = ""
            deadline = time.monotonic() + 30
            while answer != "PONG" and time.monotonic() < deadline:
                proc = await asyncio.create_subprocess_exec(*cli, env=lab.env("h2"),
                                                            stdout=asyncio.subprocess.PIPE,
                                                            stderr=asyncio.subprocess.DEVNULL)
                out, _ = await proc.communicate()
                answer = out.decode().strip()
                if answer != "PONG":
                    await asyncio.sleep(0.3)
            await backend.stop(handle)
            return answer, handle.details["host"], backend.result(handle)

        answer, host, result = asyncio.run(scenario())
        assert answer == "PONG"
        assert host == "h1"  # h2, the last host, is kept for clients
        assert result is not None and result["status"] in ("ok", "stopped"), result
    finally:
        lab_down(name)


def test_lambda_local_invocation_reports_its_handlers_result(tmp_path):
    """The sandbox's answer, as Lambda would return it, is the last line of the instance's log."""
    import textwrap

    from boxer.backends.base import HandleState
    from boxer.backends.emulators.lambda_local import LocalLambdaBackend
    from boxer.lab import lab_down, lab_up

    (tmp_path / "local_handlers.py").write_text(textwrap.dedent("""
        from boxer.backends.aws_lambda.handler import HandlerTimeouts, make_handler

        exit3 = make_handler(lambda launch: ["sh", "-c", "exit 3"],
                             timeouts=HandlerTimeouts(margin=1.0, exit_grace=0.3, term_grace=0.3,
                                                      min_lifetime=0.2))
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    name = f"lr{os.getpid() % 100000}"
    lab = lab_up(name, hosts=1)
    try:
        backend = LocalLambdaBackend(lab, timeout=10, handler="local_handlers.exit3", base_env=env,
                                     log_dir=tmp_path)
        spec = labkit.issued_spec(lab, name="kv-2", service="kv", index=2, command=["redis-server"])

        async def go():
            handle = await backend.launch(spec)
            deadline = time.monotonic() + 20
            while not handle.ended and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return handle

        handle = asyncio.run(go())
        assert handle.state is HandleState.STOPPED, handle.reason
        result = backend.result(handle)
        assert result is not None and result["status"] == "ok", result
        assert result["payload"]["instance"] == "kv-2" and result["payload"]["exit_status"] == 3
    finally:
        lab_down(name)
